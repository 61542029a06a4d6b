"""The shared image-feature cache: storage, key sensitivity, views, and cached == uncached."""
from __future__ import annotations

import os

import pytest
import torch

from conftest import tiny_cfg
from medpt.clip.feature_cache import (FeatureCache, SeededViewDataset, derive_seed, is_random_transform,
                                      module_fingerprint)
from medpt.datasets.synthetic import SeparableSynthetic
from medpt.engine.data import DataManager
from medpt.engine.registry import TRAINER_REGISTRY

CLASSES = ("red", "green", "blue")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return SeparableSynthetic(tmp_path_factory.mktemp("synth"), classnames=CLASSES, n_train=4, n_test=3)


def make(method, synth, out, cache_dir, opts=(), seed=1, backbone=None):
    cfg = tiny_cfg(method, output_dir=out, seed=seed,
                   opts=["MODEL.FEATURE_CACHE.DIR", str(cache_dir), "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
                         "OPTIM.MAX_EPOCH", "2", "OPTIM.LR", "0.02"] + list(opts))
    return TRAINER_REGISTRY.get(method)(cfg, dm=DataManager(cfg, dataset=synth), backbone=backbone)


def test_store_roundtrip_atomic_and_key_checked(tmp_path):
    cache = FeatureCache(tmp_path)
    key = {"a": 1, "b": [1, 2]}
    x = {"features": torch.randn(5, 8), "labels": torch.arange(5)}
    calls = []
    got = cache.get_or_compute(key, lambda: calls.append(1) or x)
    again = cache.get_or_compute({"b": [1, 2], "a": 1}, lambda: calls.append(1) or x)  # same key, other order
    assert calls == [1] and (cache.hits, cache.misses) == (1, 1)
    assert torch.equal(again["features"], x["features"]) and torch.equal(got["labels"], x["labels"])
    assert [p.name for p in tmp_path.iterdir()] == [cache.path(key).name]  # no temporary file left
    # a file holding another key (e.g. copied by hand) is a miss, not a wrong hit
    other = {"a": 2, "b": [1, 2]}
    os.replace(cache.path(key), cache.path(other))
    assert cache.load(other) is None
    # a truncated file is a miss
    cache.save(key, x)
    cache.path(key).write_bytes(cache.path(key).read_bytes()[:40])
    assert cache.load(key) is None


@pytest.mark.parametrize("method", ["CoOp", "CoCoOp", "KgCoOp", "CLIP-Adapter", "TCP", "LinearProbe"])
def test_cached_and_uncached_training_and_eval_agree(method, synth, tmp_path):
    """Deterministic pipeline: the cached path sees the same batches in the same order."""
    opts = ["INPUT.NO_TRANSFORM", "True", "TRAINER.TCP.CLASS_TOKEN_LAYER", "1"] if method == "TCP" else \
        ["INPUT.NO_TRANSFORM", "True"]
    runs = {}
    for enabled in (True, False):
        tr = make(method, synth, tmp_path / f"o{enabled}", tmp_path / "cache",
                  opts + ["MODEL.FEATURE_CACHE.ENABLED", str(enabled)])
        tr.train()
        assert (method == "LinearProbe") or isinstance(tr.train_loader_x, torch.utils.data.DataLoader) != enabled
        tr.model.eval()
        tr.before_test()
        loader = tr._feature_test_loader("test") if enabled else tr.test_loader
        logits = torch.cat([tr.model_inference(tr.parse_batch_test(b)[0]) for b in loader])
        tr.after_test()
        runs[enabled] = (logits, [h.get("loss", 0.0) for h in tr.history], tr.test()["acc"])
    assert runs[True][0].shape == (len(synth.test), len(CLASSES))
    torch.testing.assert_close(runs[True][0], runs[False][0], rtol=1e-5, atol=1e-5)
    assert runs[True][1] == pytest.approx(runs[False][1], rel=1e-5, abs=1e-6)
    assert runs[True][2] == runs[False][2]
    assert any((tmp_path / "cache").iterdir())


def test_reuse_across_methods_and_reruns_and_misses_on_changed_inputs(synth, tmp_path):
    cache_dir = tmp_path / "cache"
    tr = make("CoOp", synth, tmp_path / "a", cache_dir)
    tr.test()
    n_files = len(list(cache_dir.iterdir()))
    assert tr.feature_cache().misses == 1 and n_files == 1
    tr2 = make("CLIP-Adapter", synth, tmp_path / "b", cache_dir)  # another method, same encoder: hit
    tr2.test()
    assert (tr2.feature_cache().hits, tr2.feature_cache().misses) == (1, 0)
    # changed transform -> miss
    tr3 = make("CoOp", synth, tmp_path / "c", cache_dir, opts=["INPUT.INTERPOLATION", "bilinear"])
    tr3.test()
    assert tr3.feature_cache().misses == 1
    # weights changed in place (same weights id) -> miss, and the new features are the new encoder's
    tr4 = make("CoOp", synth, tmp_path / "d", cache_dir)
    with torch.no_grad():
        tr4.clip_model.visual.proj.mul_(2.0)
    tr4.test()
    assert tr4.feature_cache().misses == 1
    feats = tr4.feature_bank("test").features[0]
    img = next(iter(tr4.test_loader))["img"]
    torch.testing.assert_close(feats[:len(img)], tr4.encode_images(img))
    # an image file rewritten -> miss
    p = synth.test[0].impath
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    tr5 = make("CoOp", synth, tmp_path / "e", cache_dir)
    tr5.test()
    assert tr5.feature_cache().misses == 1
    assert len(list(cache_dir.iterdir())) == n_files + 3


def test_disabled_writes_nothing(synth, tmp_path):
    tr = make("CoOp", synth, tmp_path / "a", tmp_path / "cache", opts=["MODEL.FEATURE_CACHE.ENABLED", "False"])
    tr.train()
    tr.test()
    assert tr.feature_cache() is None and not (tmp_path / "cache").exists()


def test_view_bank_seeded_views_and_epoch_sampling(synth, tmp_path):
    opts = ["MODEL.FEATURE_CACHE.NUM_VIEWS", "3", "INPUT.RRCROP_SCALE", "(0.2, 1.0)", "MODEL.FEATURE_CACHE.VIEW_SEED", "-1"]
    tr = make("CoOp", synth, tmp_path / "a", tmp_path / "cache", opts=opts)
    assert is_random_transform(tr.cfg) and tr.uses_cached_training()
    bank = tr.feature_bank("train")
    assert bank.features.shape == (3, len(synth.train_x), 64)
    assert not torch.allclose(bank.features[0], bank.features[1])
    # view v of image i = train transform under seed derive_seed(view_seed, v, i)
    ds = SeededViewDataset(synth, synth.train_x, tr.dm.tfm_train, seed=1, view=2)
    torch.testing.assert_close(bank.features[2, 5], tr.encode_images(ds[5]["img"][None])[0])
    assert derive_seed(1, 2, 5) != derive_seed(1, 5, 2)
    # training reads the bank; each epoch picks views reproducibly
    tr.train()
    loader = tr.train_loader_x
    loader.set_epoch(0)
    v0 = loader.views.clone()
    loader.set_epoch(1)
    assert not torch.equal(v0, loader.views) and int(loader.views.max()) < 3
    loader.set_epoch(0)
    assert torch.equal(v0, loader.views)
    # a fixed VIEW_SEED shares the bank across run seeds; the default (run seed) does not
    fixed = ["MODEL.FEATURE_CACHE.VIEW_SEED", "7"]
    a = make("CoOp", synth, tmp_path / "s1", tmp_path / "cache", opts=opts + fixed, seed=1)
    a.feature_bank("train")
    b = make("CoOp", synth, tmp_path / "s2", tmp_path / "cache", opts=opts + fixed, seed=2)
    b.feature_bank("train")
    assert (b.feature_cache().hits, b.feature_cache().misses) == (3, 0)
    c = make("CoOp", synth, tmp_path / "s3", tmp_path / "cache", opts=opts, seed=2)
    c.feature_bank("train")
    assert c.feature_cache().misses == 3


def test_random_pipeline_without_views_encodes_live(synth, tmp_path):
    tr = make("CoOp", synth, tmp_path / "a", tmp_path / "cache")
    assert not tr.uses_cached_training()
    tr.train()
    assert isinstance(tr.train_loader_x, torch.utils.data.DataLoader)


def test_module_fingerprint_tracks_values(tiny_clip):
    v = tiny_clip.model.visual
    fp = module_fingerprint(v)
    assert fp == module_fingerprint(v)
    with torch.no_grad():
        v.proj[0, 0] += 1e-3
    assert module_fingerprint(v) != fp


def test_resume_through_the_view_bank_is_exact(synth, tmp_path):
    opts = ["MODEL.FEATURE_CACHE.NUM_VIEWS", "2", "OPTIM.MAX_EPOCH", "3"]
    full = make("CoOp", synth, tmp_path / "full", tmp_path / "cache", opts=opts)
    full.train()
    part = make("CoOp", synth, tmp_path / "part", tmp_path / "cache", opts=opts)
    part.max_epoch = 2  # "killed" after epoch 2 (checkpoint written)
    part.train()
    resumed = make("CoOp", synth, tmp_path / "part", tmp_path / "cache", opts=opts)
    resumed.train(resume=True)
    assert resumed.start_epoch == 2
    assert torch.equal(resumed.model.prompt_learner.ctx, full.model.prompt_learner.ctx)

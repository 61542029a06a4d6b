"""Issue 9 optimisations keep the numbers: methods moved onto the frozen-image-feature path give
the same training step and logits from cached features as from images."""
from __future__ import annotations

import copy

import pytest
import torch

from medpt.datasets.synthetic import SeparableSynthetic
from medpt.engine.data import DataManager
from medpt.engine.registry import TRAINER_REGISTRY
from medpt.trainers._frozen import FrozenImageEncoderTrainer
from tests.conftest import tiny_cfg

CLASSES = ("normal", "bacteria pneumonia", "virus pneumonia")  # pneumonia_sample knowledge covers them


def _trainer(name, tmp_path):
    ds = SeparableSynthetic(tmp_path / "img", classnames=CLASSES, n_train=4, n_test=2)
    cfg = tiny_cfg(name, output_dir=tmp_path / name, opts=["DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.LR", "0.05",
                                                          "TRAIN.CHECKPOINT_FREQ", "0"])
    return TRAINER_REGISTRY.get(name)(cfg, dm=DataManager(cfg, dataset=ds))


@pytest.mark.parametrize("name", ["ViP", "BiomedCoOp"])
def test_step_and_logits_from_cached_features_equal_images(name, tmp_path):
    tr = _trainer(name, tmp_path)
    assert isinstance(tr, FrozenImageEncoderTrainer)
    batch = next(iter(tr.train_loader_x))
    feats = tr.encode_images(batch["img"])
    assert feats.shape == (4, 64)
    params = tr.trainable_parameters()
    start = [p.detach().clone() for p in params]
    opt_state = copy.deepcopy(tr._optims[tr.get_model_names()[0]].state_dict())

    tr.set_model_mode("train")
    out_img = tr.forward_backward(batch)
    after_img = [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, s in zip(params, start):
            p.copy_(s)
    tr._optims[tr.get_model_names()[0]].load_state_dict(opt_state)
    out_feat = tr.forward_backward({"feat": feats, "label": batch["label"], "index": batch["index"]})
    assert out_feat["loss"] == pytest.approx(out_img["loss"], rel=1e-5)
    assert any(not torch.equal(a, s) for a, s in zip(after_img, start))  # the step moved the parameters
    for a, b in zip(after_img, params):
        assert torch.allclose(a, b, atol=1e-6)

    tr.set_model_mode("eval")
    tr.before_test()
    x = next(iter(tr.test_loader))["img"]
    with torch.no_grad():
        assert torch.allclose(tr.model_inference(x), tr.model_inference(tr.encode_images(x)), atol=1e-5)
    tr.after_test()
    assert not any(p.requires_grad for p in tr.get_backbone().model.parameters())


TINY_DEPTH = {"PromptSRC": ["TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2"],
              "DePT": ["TRAINER.DEPT.PROMPTSRC.PROMPT_DEPTH_TEXT", "2",
                       "TRAINER.DEPT.PROMPTSRC.PROMPT_DEPTH_VISION", "2"]}


def _bank_trainer(name, tmp_path, cache: bool, opts=()):
    ds = SeparableSynthetic(tmp_path / "img", classnames=CLASSES, n_train=4, n_test=2)
    out = tmp_path / f"{name}-{cache}"
    cfg = tiny_cfg(name, output_dir=out, opts=["DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.LR", "0.05",
                                               "TRAIN.CHECKPOINT_FREQ", "0", "OPTIM.MAX_EPOCH", "2",
                                               "MODEL.FEATURE_CACHE.ENABLED", str(cache),
                                               "MODEL.FEATURE_CACHE.DIR", str(tmp_path / "cache")]
                   + TINY_DEPTH.get(name, []) + list(opts))
    return TRAINER_REGISTRY.get(name)(cfg, dm=DataManager(cfg, dataset=ds))


@pytest.mark.parametrize("name", ["PromptSRC", "DePT", "AAPL"])
def test_teacher_features_from_the_bank_train_exactly_like_the_live_teacher(name, tmp_path):
    """Deterministic pipeline: the bank serves the same images and the frozen features the live
    teacher computes, so two epochs give the same parameters with and without the cache."""
    det = ["INPUT.NO_TRANSFORM", "True"]
    live = _bank_trainer(name, tmp_path, cache=False, opts=det)  # each build seeds the RNGs: train before the next
    live.train()
    banked = _bank_trainer(name, tmp_path, cache=True, opts=det)
    banked.train()
    assert live.teacher_bank is None and banked.teacher_bank is not None
    for a, b in zip(live.trainable_parameters(), banked.trainable_parameters()):
        assert torch.allclose(a, b, atol=1e-5), name
    # a banked step runs no frozen pass on the clean batch: PromptSRC none, AAPL only its 4 distortions
    sizes = []
    clip = banked.get_backbone().model
    orig = clip.encode_image
    clip.encode_image = lambda x, *a, **k: (sizes.append(x.shape[0]), orig(x, *a, **k))[1]
    try:
        batch = next(iter(banked.train_loader_x))
        assert batch["teacher_feat"].shape == (4, 64)
        banked.set_model_mode("train")
        banked.forward_backward(batch)
    finally:
        clip.encode_image = orig
    assert sizes == ([16] if name == "AAPL" else [])


def test_bank_views_are_regenerated_exactly_as_encoded(tmp_path):
    """Random pipeline with NUM_VIEWS 2: each served image is the view whose bank feature it
    carries (the frozen encoder on the served image gives the served feature)."""
    tr = _bank_trainer("PromptSRC", tmp_path, cache=True, opts=["MODEL.FEATURE_CACHE.NUM_VIEWS", "2"])
    assert tr.uses_cached_training()
    tr.attach_teacher_bank(tr.feature_bank("train"))
    ds = tr.teacher_bank
    assert ds.bank.num_views == 2
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            assert torch.allclose(tr.encode_images(item["img"][None])[0], item["teacher_feat"], atol=1e-5)
    a, b = ds.item_with_feature(0, 0), ds.item_with_feature(0, 1)
    assert not torch.equal(a["img"], b["img"])  # two different augmented views
    assert not torch.equal(a["teacher_feat"], b["teacher_feat"])


def test_coprompt_second_views_from_the_bank_train_exactly_like_live_views(tmp_path):
    """AUGMENT 'config' with a deterministic pipeline: the bank's single view is what the live
    second view encodes, so training matches; the bank is actually used."""
    opts = ["INPUT.NO_TRANSFORM", "True", "TRAINER.COPROMPT.AUGMENT", "config", "TRAINER.COPROMPT.PROMPT_DEPTH", "2"]
    live = _bank_trainer("CoPrompt", tmp_path, cache=False, opts=opts)
    live.train()
    banked = _bank_trainer("CoPrompt", tmp_path, cache=True, opts=opts)
    banked.train()
    assert getattr(live, "view_bank", None) is None and banked.view_bank.num_views == 1
    for a, b in zip(live.trainable_parameters(), banked.trainable_parameters()):
        assert torch.allclose(a, b, atol=1e-5)


def test_coprompt_randaugment_bank_has_its_own_cache_entries(tmp_path):
    """The RandAugment view bank is keyed by its transform: it never reads the config-transform
    bank of the same images (which would be another augmentation)."""
    tr = _bank_trainer("CoPrompt", tmp_path, cache=True, opts=["MODEL.FEATURE_CACHE.NUM_VIEWS", "2",
                                                               "TRAINER.COPROMPT.PROMPT_DEPTH", "2"])
    assert tr.uses_cached_training()
    plain = tr.feature_bank("train")
    ra = tr.build_view_bank()
    assert ra.features.shape == (2, 12, 64)  # RandAugment is random: NUM_VIEWS views
    assert not torch.allclose(plain.features[0], ra.features[0])
    with pytest.raises(ValueError, match="transform_name"):
        tr.feature_bank("train", transform=tr.view_transform)
    batch = next(iter(tr.train_loader_x))
    tr.view_bank = ra
    f = tr.teacher_image_features(batch)
    rows = [[torch.equal(f[j], ra.features[v, i]) for v in range(2)] for j, i in enumerate(batch["index"].tolist())]
    assert all(any(r) for r in rows)  # each teacher feature is one of that image's bank views


@pytest.mark.parametrize("name,views,deterministic,noted", [
    ("CoOp", "2", False, True), ("PromptSRC", "2", False, True), ("CoOp", "0", False, False),
    ("PromptSRC", "0", True, False)])
def test_the_view_bank_deviation_is_recorded(name, views, deterministic, noted, tmp_path):
    """A run trained on a bank of random views says so in its warnings (hence record and tables);
    the exact paths (live augmentation, or a deterministic pipeline's single view) say nothing."""
    opts = ["MODEL.FEATURE_CACHE.NUM_VIEWS", views, "OPTIM.MAX_EPOCH", "1"] + (
        ["INPUT.NO_TRANSFORM", "True"] if deterministic else [])
    tr = _bank_trainer(name, tmp_path, cache=True, opts=opts)
    tr.train()
    msgs = [w for w in getattr(tr, "warnings", []) if "bank of" in w]
    assert bool(msgs) == noted
    if noted:
        assert f"NUM_VIEWS = {views}" in msgs[0]

"""CoCoOp, KgCoOp, CLIP-Adapter, TCP, linear probe: parameter counts, equivalences, learning."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_cfg
from medpt.clip import TextEncoder
from medpt.datasets.synthetic import SeparableSynthetic
from medpt.engine.data import DataManager
from medpt.engine.registry import TRAINER_REGISTRY
from medpt.trainers.clip_adapter import ClipAdapterModel
from medpt.trainers.cocoop import CoCoOpCLIP
from medpt.trainers.coop import CoOpCLIP
from medpt.trainers.kgcoop import KgCoOpCLIP, knowledge_loss
from medpt.trainers.linear_probe import fit_logistic_regression
from medpt.trainers.tcp import TCPCLIP, resolve_class_token_layer, x_template

CLASSES = ("red", "green", "blue")
SEVEN = ["normal", "pneumonia", "covid", "effusion", "nodule", "mass", "atelectasis"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return SeparableSynthetic(tmp_path_factory.mktemp("synth"), classnames=CLASSES, n_train=8, n_test=6)


def make(method, synth, out, opts=(), seed=1, backbone=None):
    cfg = tiny_cfg(method, output_dir=out, seed=seed,
                   opts=["MODEL.FEATURE_CACHE.DIR", str(out / "cache"), "DATALOADER.TRAIN_X.BATCH_SIZE", "4"] + list(opts))
    return TRAINER_REGISTRY.get(method)(cfg, dm=DataManager(cfg, dataset=synth), backbone=backbone)


def n_params(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# -- trainable parameters at ViT-B/16 width (meta device) -------------------------------------
def test_parameter_counts_vit_b16(vit_b16_meta):
    model, tok = vit_b16_meta
    kn = torch.zeros(len(SEVEN), 512)
    cocoop = CoCoOpCLIP(model, tok, SEVEN)
    assert n_params(cocoop.prompt_learner) == 35_360
    assert tuple(cocoop.prompt_learner.meta_net.linear1.weight.shape) == (32, 512)
    assert n_params(KgCoOpCLIP(model, tok, SEVEN, kn).prompt_learner) == 2_048
    assert n_params(ClipAdapterModel(model, kn).adapter) == 131_072
    tcp = TCPCLIP(model, tok, SEVEN, kn, "a photo of a {}.")
    assert n_params(tcp.prompt_learner) == 331_904
    assert tuple(tcp.prompt_learner.class_tokens().shape) == (7, 4, 512)


@pytest.mark.parametrize("method,expected", [
    # closed form at the tiny CLIP's widths (E = D = 64, 4 context vectors)
    ("CoCoOp", 4 * 64 + (64 * 4 + 4) + (4 * 64 + 64)),
    ("KgCoOp", 4 * 64),
    ("CLIP-Adapter", 2 * 64 * 16),
    ("TCP", 4 * 64 + (64 * 16 + 16) + (16 * 256 + 256)),
    ("LinearProbe", 3 * (64 + 1)),
])
def test_trainer_counts_what_it_optimises(method, expected, synth, tmp_path):
    tr = make(method, synth, tmp_path, opts=["TRAINER.TCP.CLASS_TOKEN_LAYER", "1"] if method == "TCP" else [])
    assert tr.count_trainable_params() == expected
    clip_trainable = [n for n, p in tr.clip_model.named_parameters() if p.requires_grad]
    assert clip_trainable == []


# -- equivalences --------------------------------------------------------------------------------
def test_cocoop_with_zeroed_meta_net_equals_coop(tiny_clip):
    bb = tiny_clip
    cocoop = CoCoOpCLIP(bb.model, bb.tokenizer, CLASSES, ctx_init="a photo of a")
    coop = CoOpCLIP(bb.model, bb.tokenizer, CLASSES, ctx_init="a photo of a")
    feats = torch.randn(5, 64)
    assert not torch.allclose(cocoop.forward_features(feats), coop.forward_features(feats), atol=1e-4)
    torch.nn.init.zeros_(cocoop.prompt_learner.meta_net.linear2.weight)
    torch.nn.init.zeros_(cocoop.prompt_learner.meta_net.linear2.bias)
    torch.testing.assert_close(cocoop.forward_features(feats), coop.forward_features(feats), rtol=1e-5, atol=1e-5)


def test_cocoop_batched_prompts_equal_a_loop_over_images(tiny_clip):
    bb = tiny_clip
    m = CoCoOpCLIP(bb.model, bb.tokenizer, CLASSES)
    feats = torch.randn(4, 64)
    batched = m.forward_features(feats)
    looped = torch.cat([m.forward_features(feats[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)
    # the per-image shift really conditions the prompts
    assert not torch.allclose(batched[0], batched[1])


def test_truncated_text_passes_equal_full_length(tiny_clip):
    bb = tiny_clip
    enc = TextEncoder(bb.model)
    # CoCoOp: the prompts are built already truncated; rebuild them at full length
    m = CoCoOpCLIP(bb.model, bb.tokenizer, ["a very long class name with many words", "x"])
    pl = m.prompt_learner
    f = F.normalize(torch.randn(3, 64), dim=-1)
    short = pl.forward_conditional(f)
    assert short.shape[1] == int(pl.eot_idx.max()) + 1 < 77
    ctx = pl.ctx[None] + pl.meta_net(f)[:, None]
    full = torch.cat([pl.token_prefix[None].expand(3, -1, -1, -1), ctx[:, None].expand(-1, 2, -1, -1),
                      pl.token_suffix[None].expand(3, -1, -1, -1)], dim=2).reshape(6, 77, -1)
    eot = pl.eot_idx.repeat(3)
    torch.testing.assert_close(enc(short, eot), enc(full, eot, truncate=False), rtol=1e-5, atol=1e-5)
    # TCP: the class tokens replace hidden states before a middle layer; truncation still exact
    tcp = TCPCLIP(bb.model, bb.tokenizer, CLASSES, torch.randn(3, 64), "a photo of a {}, a type of colour.",
                  class_token_layer=1)
    tp = tcp.prompt_learner
    deep = [tp.class_tokens()]
    torch.testing.assert_close(enc(tp(), tp.eot_idx, deep_prompts=deep),
                               enc(tp(), tp.eot_idx, deep_prompts=deep, truncate=False), rtol=1e-5, atol=1e-5)


def test_clip_adapter_ratio_zero_equals_zero_shot_clip(synth, tmp_path):
    zs = make("ZeroShotCLIP", synth, tmp_path / "zs")
    ad = make("CLIP-Adapter", synth, tmp_path / "ad", opts=["TRAINER.CLIP_ADAPTER.RATIO", "0.0"])
    ad0 = make("CLIP-Adapter", synth, tmp_path / "ad2")
    images = next(iter(zs.test_loader))["img"]
    with torch.no_grad():
        ref = zs.model(images)
        torch.testing.assert_close(ad.model_inference(images), ref, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(ad0.model_inference(images), ref, atol=1e-4)  # ratio 0.2 changes them


def test_kgcoop_with_zero_weight_trains_exactly_as_coop(synth, tmp_path):
    common = ["OPTIM.MAX_EPOCH", "2", "OPTIM.LR", "0.05"]
    # each trainer seeds the global RNG (random augmentation) when built: build, then train, in turn
    kg = make("KgCoOp", synth, tmp_path / "kg", opts=common + ["TRAINER.KGCOOP.W", "0.0"])
    ctx0 = kg.model.prompt_learner.ctx.detach().clone()
    kg.train()
    coop = make("CoOp", synth, tmp_path / "coop",
                opts=common + ["TRAINER.COOP.CTX_INIT", "a photo of a", "TRAINER.COOP.N_CTX", "4"])
    assert torch.equal(ctx0, coop.model.prompt_learner.ctx)
    coop.train()
    assert torch.equal(kg.model.prompt_learner.ctx, coop.model.prompt_learner.ctx)
    assert [h["loss"] for h in kg.history] == [h["loss"] for h in coop.history]
    # with the default weight the knowledge term changes training
    kg8 = make("KgCoOp", synth, tmp_path / "kg8", opts=common)
    kg8.train()
    assert not torch.equal(kg8.model.prompt_learner.ctx, coop.model.prompt_learner.ctx)


def test_knowledge_loss_hand_computed():
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    w = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    assert knowledge_loss(t, w).item() == pytest.approx(1.0 - (1.0 + 0.0) / 2)


def test_tcp_x_template_and_class_tokens_layer(tiny_clip):
    assert x_template("a photo of a {}, a type of pet.", 4) == "X X X X {}, a type of pet."
    assert x_template("a photo of a {}.", 4) == "X X X X {}."
    bb = tiny_clip
    m = TCPCLIP(bb.model, bb.tokenizer, ["red_car"], torch.randn(1, 64), "a photo of a {}.", class_token_layer=1)
    assert m.prompt_learner.prompt_texts == ["X X X X red car."]
    with pytest.raises(ValueError, match="CLASS_TOKEN_LAYER"):
        TCPCLIP(bb.model, bb.tokenizer, ["a"], torch.randn(1, 64), "a photo of a {}.", class_token_layer=8)
    assert resolve_class_token_layer(8, 12) == 8
    with pytest.warns(UserWarning, match="relative depth"):
        assert resolve_class_token_layer(8, 2) == 1
    # the class tokens matter: zeroing TKE's output layer changes the text features
    before = m.text_features()
    torch.nn.init.zeros_(m.prompt_learner.meta_net.linear2.weight)
    assert not torch.allclose(before, m.text_features())


def test_linear_probe_binary_logits_match_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = (x[:, 0] + 0.3 * rng.normal(size=40) > 0).astype(int)
    w, b, c = fit_logistic_regression(x, y, 2, c=0.5)
    clf = LogisticRegression(C=0.5, max_iter=1000, random_state=0).fit(x, y)
    logits = torch.from_numpy(x @ w.T + b)
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), clf.predict_proba(x), rtol=1e-4, atol=1e-5)
    # C search by cross-validation picks a value from the grid
    _, _, chosen = fit_logistic_regression(x, y, 2, c=-1, c_grid=(1e-4, 1.0), folds=3)
    assert chosen in (1e-4, 1.0)


# -- learning on a separable set -------------------------------------------------------------------
@pytest.mark.parametrize("method,opts", [
    ("CoCoOp", ["OPTIM.LR", "0.05"]),
    ("KgCoOp", ["OPTIM.LR", "0.05", "TRAINER.KGCOOP.W", "1.0"]),
    ("CLIP-Adapter", ["OPTIM.LR", "0.05"]),
    ("TCP", ["OPTIM.LR", "0.01", "TRAINER.TCP.CLASS_TOKEN_LAYER", "1"]),
    ("LinearProbe", []),
])
def test_learns_separable_synthetic(method, opts, synth, tmp_path):
    tr = make(method, synth, tmp_path, opts=["OPTIM.MAX_EPOCH", "8", "OPTIM.WARMUP_EPOCH", "-1",
                                             "MODEL.FEATURE_CACHE.NUM_VIEWS", "2"] + opts)
    before = tr.test()["acc"]
    tr.train()
    after = tr.test()["acc"]
    assert after == 100.0 and before < 100.0
    if method != "LinearProbe":
        losses = [h["loss"] for h in tr.history]
        assert losses[-1] < 0.8 * losses[0]

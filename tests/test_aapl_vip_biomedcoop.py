"""AAPL, ViP, BiomedCoOp: exact trainable-parameter counts at ViT-B/16 width (meta device),
batched-equals-per-image equivalence for AAPL, pruning and loss pieces, and learning on the
separable synthetic set with the tiny CLIP."""
from __future__ import annotations

import warnings

import open_clip
import pytest
import torch
import torch.nn.functional as F

import medpt.trainers  # noqa: F401  (registers)
from medpt.datasets import SeparableSynthetic
from medpt.engine import TRAINER_REGISTRY, DataManager
from medpt.trainers.aapl import AUGMENT_TYPES, AAPLCLIP, AAPLLearner, distort, sobel_magnitude, triplet
from medpt.trainers.biomedcoop import prune_descriptions
from medpt.trainers.vip import ViPCLIP, official_flagged_params
from medpt.clip import PromptLearner

from conftest import tiny_cfg

CLASSES = ("normal", "bacteria pneumonia")  # pneumonia_sample's classes: knowledge exists


@pytest.fixture(scope="module")
def vit_b16_meta():
    model = open_clip.create_model("ViT-B-16-quickgelu", device="meta")
    return model, open_clip.get_tokenizer("ViT-B-16-quickgelu")


def _n(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_aapl_params_vit_b16(vit_b16_meta):
    m, tok = vit_b16_meta
    for c in (3, 7):
        assert _n(AAPLLearner(m, tok, [f"class {i}" for i in range(c)])) == 35_360


def test_vip_params_vit_b16(vit_b16_meta):
    m, tok = vit_b16_meta
    for c, real, flagged in ((3, 527_872, 41_483_776), (7, 529_920, 41_485_824)):
        vip = ViPCLIP(m, tok, [[f"symptom {j} of {i}" for j in range(4)] for i in range(c)])
        assert _n(vip.learner) == real
        assert official_flagged_params(m, c) == flagged
    # CLIP attention weights alone: text 12 x 1,050,624 + vision 12 x 2,362,368
    assert sum(p.numel() for n, p in m.named_parameters() if "attn" in n) == 40_955_904


def test_biomedcoop_params_vit_b16(vit_b16_meta):
    m, tok = vit_b16_meta
    assert _n(PromptLearner(m, tok, ["a", "b", "c"], ctx_init="a photo of a")) == 2_048


def test_aapl_batched_equals_per_image(tiny_clip):
    torch.manual_seed(0)
    model = AAPLCLIP(tiny_clip.model, tiny_clip.tokenizer, ["red", "green", "blue"])
    torch.nn.init.normal_(model.learner.meta_net[2].weight, std=0.5)
    x = torch.randn(3, 3, 32, 32)
    batched = model(x)
    single = torch.cat([model(x[i:i + 1]) for i in range(3)])
    assert batched.shape == (3, 3)
    assert torch.allclose(batched, single, atol=1e-5)
    # meta tokens really condition the prompts: different images give different class features
    f = model.image_features(x)
    meta = model.learner.meta_net(f)
    assert not torch.allclose(meta[0], meta[1])


def test_aapl_augmentations_and_triplet():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for kind in AUGMENT_TYPES:
        y = distort(x, kind)
        assert y.shape == x.shape and torch.isfinite(y).all(), kind
    assert torch.equal(distort(x, "rotation_180"), torch.flip(x, dims=(2, 3)))
    assert (distort(x, "crop")[..., 2:, :] == 0).all()  # shifted by 30 px, zero padded
    with pytest.raises(ValueError, match="unknown AAPL augmentation"):
        distort(x, "solarize")
    # Sobel of a horizontal ramp: |gx| = 8 * slope inside the image, gy = 0
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8).contiguous()
    assert torch.allclose(sobel_magnitude(ramp)[..., 1:-1, 1:-1], torch.full((1, 1, 6, 6), 8.0))
    a, p, n = torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    assert triplet(a, p, n).item() == 0.0  # 1 - 4 + 0.2 < 0
    assert triplet(a, n, p).item() == pytest.approx(3.2)


def test_vip_merge_matches_hand_computation(tiny_clip):
    torch.manual_seed(0)
    vip = ViPCLIP(tiny_clip.model, tiny_clip.tokenizer, [["a", "b"], ["c", "d", "e"]])
    lr = vip.learner
    t = vip.text_encoder(lr.prompt_learner(), lr.prompt_learner.eot_idx)
    out = vip.class_features()
    for k, idx in ((0, [0, 1]), (1, [2, 3, 4])):
        tk = t[idx]
        z = lr.learnable_token[k]
        a = ((lr.merge.q_proj(z) @ lr.merge.k_proj(tk).t()) / tk.shape[-1] ** 0.5).softmax(-1)
        assert torch.allclose(out[k], F.normalize(z + a @ tk, dim=-1), atol=1e-5)
    # the prompt is "X X X X <descriptor>." without the class name
    assert lr.prompt_learner.prompt_texts[0] == "X X X X a."


def test_biomedcoop_pruning():
    s = torch.tensor([1.0, 1.1, 0.9, 1.05, 0.95, 10.0])
    keep = prune_descriptions(s, 1.5)
    assert keep.tolist() == [True, True, True, True, True, False]
    assert prune_descriptions(torch.ones(5), 1.5).all()  # MAD 0: keep all


def _trainer(name, tmp_path, classnames=CLASSES, opts=()):
    ds = SeparableSynthetic(tmp_path / "img", classnames=classnames, n_train=8, n_test=8)
    cfg = tiny_cfg(name, output_dir=tmp_path / name,
                   opts=["OPTIM.MAX_EPOCH", "10", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.LR", "0.002",
                         "TRAIN.CHECKPOINT_FREQ", "0"] + list(opts))
    return TRAINER_REGISTRY.get(name)(cfg, dm=DataManager(cfg, dataset=ds))


@pytest.mark.parametrize("name,count,opts", [
    ("AAPL", 4 * 64 + (64 * 4 + 4) + (4 * 64 + 64), ["OPTIM.LR", "0.05", "DATALOADER.TRAIN_X.BATCH_SIZE", "8"]),
    ("ViP", 4 * 64 + 2 * 64 + 2 * 64 * 64, []),
    ("BiomedCoOp", 4 * 64, [])])
def test_learns_on_separable_set(name, count, opts, tmp_path):
    tr = _trainer(name, tmp_path, opts=opts)
    assert tr.count_trainable_params() == count  # tiny CLIP: width 64, embed 64
    frozen = [p for p in tr.get_backbone().model.parameters()]
    assert not any(p.requires_grad for p in frozen)
    before = {k: v.clone() for k, v in tr.get_backbone().model.state_dict().items()}
    tr.train()
    losses = [h["loss"] for h in tr.history]
    assert losses[-1] < 0.6 * losses[0], losses
    assert tr.test()["acc"] == 100.0
    after = tr.get_backbone().model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # CLIP truly frozen


def test_vip_reports_official_flagged_count(tmp_path):
    tr = _trainer("ViP", tmp_path)
    clip = tr.get_backbone().model
    attn = sum(p.numel() for n, p in clip.named_parameters() if "attn" in n)
    assert tr.official_requires_grad_params == attn + tr.count_trainable_params()


def test_unknown_classes_fall_back_with_warning(tmp_path):
    with pytest.warns(UserWarning, match="generic class-name text"):
        tr = _trainer("BiomedCoOp", tmp_path, classnames=("red", "green"), opts=["OPTIM.MAX_EPOCH", "1"])
    assert tr.desc_feats.shape == (2, 50, 64)


def test_biomedcoop_uses_knowledge_descriptions(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known dataset + classes: no fallback warning
        tr = _trainer("BiomedCoOp", tmp_path, opts=["OPTIM.MAX_EPOCH", "1"])
    tok = tr.get_backbone().tokenizer
    from medpt.knowledge import load_knowledge
    d = load_knowledge("pneumonia_sample", "descriptions")["bacteria pneumonia"][:50]
    with torch.no_grad():
        ref = F.normalize(tr.get_backbone().model.encode_text(tok(d)).float(), dim=-1)
    assert torch.allclose(tr.desc_feats[1], ref, atol=1e-5)

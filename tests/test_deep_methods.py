"""PromptSRC, RPO, LASP, PLOT++: exact trainable counts, their defining mechanics, learning."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_cfg
from medpt.datasets import SeparableSynthetic
from medpt.engine import TRAINER_REGISTRY, DataManager
from medpt.trainers.lasp import LASPCLIP
from medpt.trainers.plotpp import PLOTPPCLIP, sinkhorn
from medpt.trainers.promptsrc import PromptSRCCLIP, gpa_weights
from medpt.trainers.rpo import RPOCLIP

CLASSES = ["normal", "bacteria pneumonia", "virus pneumonia"]


def _trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# -- exact trainable counts at ViT-B/16 widths (meta device) ----------------------------------
def test_promptsrc_count_vit_b16(vit_b16_meta):
    model, tok = vit_b16_meta
    m = PromptSRCCLIP(model, tok, CLASSES)
    assert _trainable(m.prompt_learner) == 46_080
    assert _trainable(PromptSRCCLIP(model, tok, CLASSES, depth_text=12, depth_vision=12).prompt_learner) == 61_440
    with pytest.raises(ValueError, match="PROMPT_DEPTH"):
        PromptSRCCLIP(model, tok, CLASSES, depth_text=13)


def test_rpo_count_vit_b16(vit_b16_meta):
    model, tok = vit_b16_meta
    assert _trainable(RPOCLIP(model, tok, CLASSES, k=24).prompt_learner) == 30_720
    assert _trainable(RPOCLIP(model, tok, CLASSES, k=4).prompt_learner) == 5_120


def test_lasp_count_vit_b16(vit_b16_meta):
    model, tok = vit_b16_meta
    assert _trainable(LASPCLIP(model, tok, CLASSES, ["a photo of a {}."]).prompt_learner) == 39_424
    off = LASPCLIP(model, tok, CLASSES, ["a photo of a {}."], correction=False, finetune_ln=False)
    assert _trainable(off.prompt_learner) == 2_048


def test_plotpp_counts_vit_b16(vit_b16_meta):
    model, tok = vit_b16_meta
    pl = PLOTPPCLIP(model, tok, CLASSES).prompt_learner
    assert pl.ctx.shape == (4, 4, 512) and pl.ctx_vision.shape == (4, 2, 768)
    assert _trainable(pl) == 14_336  # stage 2 (joint)
    assert pl.ctx_vision.numel() == 6_144  # stage 1 (vision only)


# -- PromptSRC ---------------------------------------------------------------------------------
def test_gpa_weights_hand_computed():
    w = gpa_weights(3, 2.0, 1.0)
    raw = [math.exp(-0.5 * (e - 2) ** 2) for e in (1, 2, 3)]
    assert w == pytest.approx([r / sum(raw) for r in raw], abs=1e-12)
    assert sum(gpa_weights(20, 15, 1)) == pytest.approx(1.0, abs=1e-12)
    # every density underflows in float64 here; the log-space weights still sum to one
    w = gpa_weights(5, 100, 1)
    assert sum(w) == pytest.approx(1.0, abs=1e-12) and w[-1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="GPA_STD"):
        gpa_weights(5, 1, 0)


def test_promptsrc_with_zero_deep_prompts_and_no_context_change_is_frozen_clip(tiny_clip):
    """Without vision prompts (depth 0) and with only the shallow text context initialised from
    "a photo of a" (depth 1), PromptSRC's student is frozen CLIP (checked against open_clip)."""
    m = PromptSRCCLIP(tiny_clip.model, tiny_clip.tokenizer, CLASSES, depth_text=1, depth_vision=0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(m.image_features(x), F.normalize(tiny_clip.model.encode_image(x), dim=-1), atol=1e-6)
        ids = tiny_clip.tokenizer([f"a photo of a {c}." for c in CLASSES])
        ref = F.normalize(tiny_clip.model.encode_text(ids), dim=-1)
        assert torch.allclose(m.text_features(), ref, atol=1e-5)
        # teacher bank: mean of the unnormalised features over the 60 templates
        from medpt.clip.imagenet_templates import IMAGENET_TEMPLATES
        first = tiny_clip.model.encode_text(tiny_clip.tokenizer([IMAGENET_TEMPLATES[0].format(c) for c in CLASSES]))
        assert m.fixed_embeddings.shape == first.shape
        assert not torch.allclose(m.fixed_embeddings, first)


#: the tiny CLIP has 2 blocks per tower: prompts at the input and before block 1
TINY_DEPTH = ["TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2"]


def _synthetic(tmp_path, trainer, opts, classes=("red", "green"), n_train=8):
    if trainer == "PromptSRC":
        opts = TINY_DEPTH + list(opts)
    ds = SeparableSynthetic(tmp_path / "data", classnames=classes, n_train=n_train, n_test=8)
    cfg = tiny_cfg(trainer, output_dir=tmp_path / "run", opts=["DATALOADER.TRAIN_X.BATCH_SIZE", "4",
                                                               "OPTIM.LR_SCHEDULER", "cosine", *opts])
    return TRAINER_REGISTRY.get(trainer)(cfg, dm=DataManager(cfg, ds)), ds, cfg


def test_promptsrc_gpa_is_applied_after_training_and_used_at_test(tmp_path):
    tr, ds, cfg = _synthetic(tmp_path, "PromptSRC", ["OPTIM.MAX_EPOCH", "3", "OPTIM.LR", "0.05",
                                                     "TRAINER.PROMPTSRC.GPA_MEAN", "2.0",
                                                     "TRAINER.PROMPTSRC.GPA_STD", "1.0"])
    snaps = []
    orig = tr.after_epoch

    def record():
        snaps.append({n: p.detach().clone() for n, p in tr.model.prompt_learner.named_parameters()})
        orig()

    tr.after_epoch = record
    tr.train()
    g = gpa_weights(3, 2.0, 1.0)
    for n, p in tr.model.prompt_learner.named_parameters():
        expect = sum(w * s[n] for w, s in zip(g, snaps))
        torch.testing.assert_close(p.detach(), expect, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(snaps[-1]["vis_ctx"], tr.model.prompt_learner.vis_ctx)
    # the last checkpoint holds the aggregate and the running sum; evaluation uses it
    ck = torch.load(tmp_path / "run" / "prompt_learner" / "model.pth.tar-3", weights_only=False)
    torch.testing.assert_close(ck["state_dict"]["vis_ctx"], tr.model.prompt_learner.vis_ctx.detach())
    torch.testing.assert_close(ck["extra"]["gpa"]["vis_ctx"], tr.model.prompt_learner.vis_ctx.detach())
    fresh = TRAINER_REGISTRY.get("PromptSRC")(cfg, dm=DataManager(cfg, ds))
    fresh.load_model(tmp_path / "run")
    assert fresh.test()["acc"] == tr.test()["acc"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.model(x), tr.model(x))


def test_promptsrc_resume_keeps_the_running_aggregate(tmp_path):
    opts = ["OPTIM.MAX_EPOCH", "3", "OPTIM.LR", "0.05", "TRAINER.PROMPTSRC.GPA_MEAN", "2.0"]
    full, ds, cfg = _synthetic(tmp_path / "a", "PromptSRC", opts)
    full.train()
    part = TRAINER_REGISTRY.get("PromptSRC")(cfg.clone(), dm=DataManager(cfg, ds))
    part.output_dir = tmp_path / "b"
    part.max_epoch = 2
    part.train()
    resumed = TRAINER_REGISTRY.get("PromptSRC")(cfg.clone(), dm=DataManager(cfg, ds))
    resumed.output_dir = tmp_path / "b"
    resumed.train(resume=True)
    assert resumed.start_epoch == 2
    torch.testing.assert_close(resumed.model.prompt_learner.vis_ctx, full.model.prompt_learner.vis_ctx)


# -- RPO / LASP ------------------------------------------------------------------------------
def test_rpo_initialisation_is_eot_and_class_embedding_plus_a_tenth_unit_vector(tiny_clip):
    m = RPOCLIP(tiny_clip.model, tiny_clip.tokenizer, CLASSES, k=5)
    eot = tiny_clip.model.token_embedding.weight[49407]
    d_t = m.prompt_learner.text_prompt.detach() - eot
    d_v = m.prompt_learner.img_prompt.detach() - tiny_clip.model.visual.class_embedding
    torch.testing.assert_close(d_t.norm(dim=-1), torch.full((5,), 0.1))
    torch.testing.assert_close(d_v.norm(dim=-1), torch.full((5,), 0.1))
    assert not torch.allclose(d_t[0], d_t[1])  # one random direction per prompt
    with pytest.raises(ValueError, match="TRAINER.RPO.K"):
        RPOCLIP(tiny_clip.model, tiny_clip.tokenizer, CLASSES, k=70)


def test_lasp_text_to_text_loss_hand_computed(tiny_clip):
    m = LASPCLIP(tiny_clip.model, tiny_clip.tokenizer, CLASSES, ["a photo of a {}.", "an x-ray of {}."])
    assert m.bank.shape == (2, 3, tiny_clip.model.text_projection.shape[1])
    torch.testing.assert_close(m.bank.norm(dim=-1), torch.ones(2, 3))
    text = F.normalize(torch.randn(3, m.bank.shape[-1]), dim=-1)
    s = tiny_clip.model.logit_scale.exp()
    expect = 0.0
    for j in range(2):
        for c in range(3):
            expect += -torch.log_softmax(s * m.bank[j, c] @ text.t(), dim=0)[c] / 6
    torch.testing.assert_close(m.text_to_text_loss(text, noise=False), expect)
    # zero bias at init: learned features equal the prompt's text features
    pl = m.prompt_learner
    torch.testing.assert_close(m.text_features(), F.normalize(m.text_encoder(pl.text(), pl.text.eot_idx), dim=-1))


# -- PLOT++ ------------------------------------------------------------------------------------
def test_sinkhorn_plan_has_the_prescribed_marginals():
    torch.manual_seed(0)
    sim = torch.rand(5, 4, 3) * 2 - 1
    kernel = torch.exp(-(1 - sim) / 0.1)
    u = torch.full((5, 4), 1 / 4)
    v = torch.full((5, 3), 1 / 3)
    plan = sinkhorn(kernel, u, v, max_iter=1000, thresh=1e-9)
    torch.testing.assert_close(plan.sum(-1), u, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(plan.sum(-2), v, rtol=1e-5, atol=1e-6)
    assert plan.sum(dim=(1, 2)).allclose(torch.ones(5))
    # non-uniform marginals too
    u2 = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).repeat(5, 1)
    plan2 = sinkhorn(kernel, u2, v, max_iter=1000, thresh=1e-9)
    torch.testing.assert_close(plan2.sum(-1), u2, rtol=1e-5, atol=1e-6)
    # the official stopping rule (0.01) still gives exact column sums
    torch.testing.assert_close(sinkhorn(kernel, u, v).sum(-2), v, rtol=1e-5, atol=1e-6)


def test_plotpp_two_stages_switch_parameters_and_trade_off(tmp_path):
    tr, _, _ = _synthetic(tmp_path, "PLOTPP", ["OPTIM.MAX_EPOCH", "1", "OPTIM.LR", "0.01"])
    pl = tr.model.prompt_learner
    assert tr.count_trainable_params() == pl.ctx_vision.numel() and tr.model.trade_off
    ctx0 = pl.ctx.detach().clone()
    tr.train()
    assert tr.max_epoch == 2 and tr.stage == 2 and not tr.model.trade_off
    assert tr.count_trainable_params() == pl.ctx.numel() + pl.ctx_vision.numel()
    assert not torch.equal(ctx0, pl.ctx)  # text contexts were trained in stage 2


def test_plotpp_resume_across_the_stage_switch(tmp_path):
    opts = ["OPTIM.MAX_EPOCH", "2", "OPTIM.LR", "0.01"]
    full, ds, cfg = _synthetic(tmp_path / "a", "PLOTPP", opts)
    full.train()
    part = TRAINER_REGISTRY.get("PLOTPP")(cfg.clone(), dm=DataManager(cfg, ds))
    part.output_dir = tmp_path / "b"
    part.max_epoch = 3  # killed after the first joint epoch
    part.train()
    resumed = TRAINER_REGISTRY.get("PLOTPP")(cfg.clone(), dm=DataManager(cfg, ds))
    resumed.output_dir = tmp_path / "b"
    resumed.train(resume=True)
    assert resumed.start_epoch == 3 and resumed.stage == 2
    torch.testing.assert_close(resumed.model.prompt_learner.ctx, full.model.prompt_learner.ctx)
    torch.testing.assert_close(resumed.model.prompt_learner.ctx_vision, full.model.prompt_learner.ctx_vision)


# -- learning on the separable synthetic set ---------------------------------------------------
@pytest.mark.parametrize("trainer,opts", [
    ("PromptSRC", ["OPTIM.MAX_EPOCH", "8", "OPTIM.LR", "0.05", "TRAINER.PROMPTSRC.GPA_MEAN", "8.0",
                   "TRAINER.PROMPTSRC.GPA_STD", "1.0", "TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT", "1.0",
                   "TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT", "1.0"]),
    ("RPO", ["OPTIM.MAX_EPOCH", "8", "OPTIM.LR", "0.05", "TRAINER.RPO.K", "4"]),
    ("LASP", ["OPTIM.MAX_EPOCH", "8", "OPTIM.LR", "0.05"]),
    ("PLOTPP", ["OPTIM.MAX_EPOCH", "4", "OPTIM.LR", "0.05"]),
])
def test_method_learns_on_separable_synthetic_set(tmp_path, trainer, opts):
    tr, _, _ = _synthetic(tmp_path, trainer, opts)
    before = tr.test()["acc"]
    tr.train()
    losses = [h["loss"] for h in tr.history]
    assert losses[-1] < 0.7 * losses[0]
    after = tr.test()["acc"]
    assert after >= 90.0, (before, after, losses)

"""CILMP: parameter counts, the (conditional) LoReFT intervention, ablation switches, the loss,
GPA, representation sources, and learning on the separable synthetic set."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_cfg
from medpt.clip.gpa import GaussianPromptAggregator, gaussian_weights
from medpt.datasets import SeparableSynthetic
from medpt.engine import TRAINER_REGISTRY, DataManager
from medpt.knowledge import llm_representations as lr
from medpt.trainers.cilmp import (CILMPCLIP, CILMPPrompts, InterventionLayer, LoReFTIntervention, cilmp_param_count,
                                  supervised_contrastive_loss)

D_LLM, D_TXT, E, L, P, S, R = 16, 8, 6, 10, 3, 2, 4


# -- parameter counts ------------------------------------------------------------------------
@pytest.mark.parametrize("n_cls", [3, 7])
def test_default_count_is_3846528_at_vit_b16_independent_of_classes(vit_b16_meta, n_cls):
    model, tok = vit_b16_meta
    reps = torch.empty(n_cls, 32, 4096, device="meta")
    m = CILMPCLIP(model, tok, [f"class {i}" for i in range(n_cls)], reps)
    assert sum(p.numel() for p in m.prompt_learner.parameters()) == 3_846_528 == cilmp_param_count()
    # SOS, ctx (4), LLM rows (32), "class", "0", "." -> EOT at 40
    assert m.prompt_learner.eot_idx.tolist()[0] == 1 + 4 + 32 + 3


@pytest.mark.parametrize("kw,expected", [
    (dict(relationship_descriptor=False), 3_846_528),            # w/o RD: same parameters
    (dict(conditional=False), 12 * (2 * (4096 * 8 + 4097 * 8) + 8 * (4096 + 512)) + 61_440),  # 2,076,864
    (dict(intervene=False), 12 * 8 * (4096 + 512) + 61_440),    # 503,808
    (dict(prefix=0), 12 * (139_280 + 36_864) + 61_440),          # one module per layer
])
def test_ablation_counts_hand_computed(vit_b16_meta, kw, expected):
    model, tok = vit_b16_meta
    m = CILMPPrompts(model, tok, ["a", "b"], torch.empty(2, 32, 4096, device="meta"), **kw)
    assert sum(p.numel() for p in m.parameters()) == expected
    ck = {k: v for k, v in kw.items() if k != "relationship_descriptor"}
    ck = {"intervene" if k == "intervene" else k: v for k, v in ck.items()}
    assert cilmp_param_count(**ck) == expected


def test_text_knowledge_has_only_the_prompts(vit_b16_meta):
    model, tok = vit_b16_meta
    m = CILMPPrompts(model, tok, ["melanoma, dark irregular lesion"], None)
    assert sum(p.numel() for p in m.parameters()) == 61_440 == cilmp_param_count(knowledge="text")
    assert len(m.layers) == 0


# -- the intervention --------------------------------------------------------------------------
def _layer(seed=0, **kw):
    torch.manual_seed(seed)
    return InterventionLayer(D_LLM, D_TXT, E, rank=R, proj_rank=3, prefix=P, suffix=S, **kw).eval()


def test_intervention_changes_only_prefix_and_suffix_rows():
    torch.manual_seed(1)
    reps, img = torch.randn(2, L, D_LLM), torch.randn(5, E)
    for kw in (dict(), dict(conditional=False), dict(relationship_descriptor=False)):
        layer = _layer(**kw)
        out = layer(reps, img)
        plain = layer.lora_proj(reps)
        if out.dim() == 4:
            plain = plain.expand(5, -1, -1, -1)
        assert torch.allclose(out[..., P:L - S, :], plain[..., P:L - S, :], atol=1e-6)
        changed = (out - plain).abs().amax(dim=-1)  # [.., C, L]
        assert bool((changed[..., :P] > 1e-4).all()) and bool((changed[..., L - S:] > 1e-4).all())


def test_conditional_loreft_matches_the_formula_by_hand():
    torch.manual_seed(2)
    m = LoReFTIntervention(D_LLM, R, E).eval()
    h, f = torch.randn(3, 2, D_LLM), torch.randn(4, E)
    g = m.image_weight[1](m.image_weight[0](f))  # [B, d]
    rd = g[:, None, None, :] * h[None]  # relationship descriptor
    z = torch.cat([h[None].expand_as(rd), rd], dim=-1) @ m.learned_source.weight.t() + m.learned_source.bias
    want = h[None] + (z - h[None] @ m.rotate) @ m.rotate.t()
    torch.testing.assert_close(m(h, f), want, rtol=1e-5, atol=1e-5)


def test_row_unchanged_when_learned_source_equals_its_subspace_projection():
    torch.manual_seed(3)
    h = torch.randn(1, 3, D_LLM)
    m = LoReFTIntervention(D_LLM, R, E, conditional=False).eval()
    with torch.no_grad():  # choose b so that W h_0 + b = R^T h_0 for row 0 only
        m.learned_source.bias.copy_(h[0, 0] @ m.rotate - m.learned_source(h[0, 0]) + m.learned_source.bias)
    out = m(h)
    torch.testing.assert_close(out[0, 0], h[0, 0], rtol=0, atol=1e-5)
    assert (out[0, 1:] - h[0, 1:]).abs().max() > 1e-3
    c = LoReFTIntervention(D_LLM, R, E).eval()  # conditional: W_s = [R^T, 0], b = 0 -> identity for any image
    with torch.no_grad():
        c.learned_source.weight.zero_()
        c.learned_source.weight[:, :D_LLM] = c.rotate.t()
        c.learned_source.bias.zero_()
    torch.testing.assert_close(c(h, torch.randn(2, E)), h.expand(2, -1, -1, -1), rtol=0, atol=1e-5)


def test_conditional_path_depends_on_the_image_and_unconditional_does_not():
    torch.manual_seed(4)
    reps, f1, f2 = torch.randn(2, L, D_LLM), torch.randn(1, E), torch.randn(1, E)
    cond = _layer()
    assert (cond(reps, f1) - cond(reps, f2)).abs().max() > 1e-4
    unc = _layer(conditional=False)
    assert unc(reps, f1).shape == (2, L, D_TXT) and torch.equal(unc(reps, f1), unc(reps, f2))
    assert unc.prefix_intervention.image_weight is None


def test_each_ablation_switch_changes_only_its_component():
    reps, img = torch.randn(2, L, D_LLM), torch.randn(3, E)
    base = _layer()
    names = {n: p.shape for n, p in base.named_parameters()}
    # w/o RD: same parameters; with the same weights only the source term changes
    wo_rd = _layer(relationship_descriptor=False)
    assert {n: p.shape for n, p in wo_rd.named_parameters()} == names
    wo_rd.load_state_dict(base.state_dict())
    assert torch.equal(wo_rd(reps, img)[:, :, P:L - S], base(reps, img)[:, :, P:L - S])
    assert (wo_rd(reps, img) - base(reps, img)).abs().max() > 1e-5
    assert (wo_rd(reps, img[:1]) - wo_rd(reps, img[1:2])).abs().max() > 1e-5  # still image-conditioned
    # w/o Conditional: exactly the g(f) layers disappear and W_s reads h only
    wo_c = _layer(conditional=False)
    gone = set(names) - {n for n, _ in wo_c.named_parameters()}
    assert gone == {n for n in names if ".image_weight." in n}
    assert wo_c.prefix_intervention.learned_source.weight.shape == (R, D_LLM)
    # w/o Intervention: exactly the prefix/suffix modules disappear; output = projection of R_c
    wo_i = _layer(intervene=False)
    assert {n for n, _ in wo_i.named_parameters()} == {n for n in names if n.startswith("lora_proj.")}
    wo_i.load_state_dict(base.state_dict(), strict=False)
    torch.testing.assert_close(wo_i(reps, img), base.lora_proj(reps))


def test_prompts_place_class_rows_after_the_context_and_reinsert_them(tiny_clip):
    torch.manual_seed(5)
    reps = torch.randn(2, 6, 24)
    m = CILMPCLIP(tiny_clip.model, tiny_clip.tokenizer, ["red", "green"], reps, depth_text=2, depth_vision=2,
                  prefix=2, suffix=2).eval()
    pl = m.prompt_learner
    calls = {}
    orig = m.text_encoder.forward

    def spy(prompts, eot, deep_prompts=None, **kw):
        calls["prompts"], calls["deep"] = prompts, deep_prompts
        return orig(prompts, eot, deep_prompts=deep_prompts, **kw)

    m.text_encoder.forward = spy
    imgs = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        f = m.image_features(imgs)
        t = m.text_features(f)
        e = m.class_prompts(f)
    assert t.shape == (3, 2, tiny_clip.model.text_projection.shape[1])
    x, deep = calls["prompts"], calls["deep"]
    assert x.shape[0] == 6  # B * C sequences, sample-major
    torch.testing.assert_close(x[1, 1:5], pl.ctx)  # ctx after SOS
    torch.testing.assert_close(x[1, 5:11], e[0][0, 1])  # sample 0, class 1: layer-0 class prompts
    torch.testing.assert_close(deep[0][4, :4], pl.text_deep[0])
    torch.testing.assert_close(deep[0][4, 4:10], e[1][2, 0])  # sample 2, class 0: layer-1 prompts
    assert int(pl.eot_idx[0]) == 1 + 4 + 6 + 1 + 1  # SOS ctx rows "red" "." -> EOT
    logits = m(imgs)
    torch.testing.assert_close(logits, m.clip.logit_scale.exp() * torch.einsum("be,bce->bc", f, t))


# -- loss and GPA --------------------------------------------------------------------------
def test_supervised_contrastive_loss_matches_khosla_definition():
    torch.manual_seed(6)
    s, y = torch.randn(5, 4) * 3, torch.tensor([0, 2, 0, 1, 2])
    want = []
    for i in range(5):  # anchor image i, contrast set t_{i, y_j} for every j, positives y_j = y_i
        cand = s[i, y]
        pos = (y == y[i]).nonzero().flatten()
        want.append(-(cand[pos] - torch.logsumexp(cand, 0)).mean())
    torch.testing.assert_close(supervised_contrastive_loss(s, y), torch.stack(want).mean())
    perm = torch.tensor([3, 1, 0, 2])  # every class once -> plain cross-entropy
    torch.testing.assert_close(supervised_contrastive_loss(s[:4], perm), F.cross_entropy(s[:4], perm))


def test_gpa_hand_computed():
    w = gaussian_weights(3, 2.0, 1.0)
    e = [0.6065306597, 1.0, 0.6065306597]
    assert w == pytest.approx([x / sum(e) for x in e])
    p = torch.nn.Parameter(torch.zeros(2))
    agg = GaussianPromptAggregator([("p", p)], 3, 2.0, 1.0)
    for ep in range(3):
        with torch.no_grad():
            p.fill_(ep + 1.0)
        state = agg.state_dict()
        agg2 = GaussianPromptAggregator([("p", p)], 3, 2.0, 1.0)
        agg2.load_state_dict(state)  # resumable
        loaded = agg2.step(ep)
        agg = agg2
    assert loaded and torch.allclose(p, torch.full((2,), sum(wi * (i + 1) for i, wi in enumerate(w))))


# -- trainer -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rep_file(tmp_path_factory):
    model, tok = lr.tiny_random_llama(seed=0, hidden_size=32, num_layers=2, extra_words=["red", "green"])
    rep = lr.extract_representations(model, tok, ["red", "green"], max_new_tokens=6, model_id="tiny-test")
    return lr.save_representations(rep, tmp_path_factory.mktemp("reps") / "synthetic.safetensors")


def _trainer(tmp_path, opts=(), epochs=8):
    ds = SeparableSynthetic(tmp_path / "data", classnames=("red", "green"), n_train=8, n_test=8)
    cfg = tiny_cfg("cilmp", output_dir=tmp_path / "run", opts=[
        "OPTIM.MAX_EPOCH", str(epochs), "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "OPTIM.LR", "0.02",
        "TRAINER.CILMP.PREFIX_LENGTH", "1", "TRAINER.CILMP.SUFFIX_LENGTH", "1",
        "TRAINER.CILMP.PROMPT_DEPTH_TEXT", "2", "TRAINER.CILMP.PROMPT_DEPTH_VISION", "2",
        "TRAINER.CILMP.GPA_MEAN", str(float(epochs)), "TRAINER.CILMP.GPA_STD", "2.0", *opts])
    return TRAINER_REGISTRY.get("cilmp")(cfg, dm=DataManager(cfg, ds))


def test_cilmp_learns_on_separable_synthetic_set(tmp_path, rep_file):
    tr = _trainer(tmp_path, ["TRAINER.CILMP.REPRESENTATIONS", str(rep_file)])
    assert tr.loss_name == "supcon" and tr.cfg.TRAINER.CILMP.LOSS == "supcon"
    assert tr.warnings == []
    width, vis = 64, tr.model.clip.visual.class_embedding.shape[-1]
    embed = tr.model.clip.text_projection.shape[1]
    assert tr.count_trainable_params() == cilmp_param_count(llm_dim=32, text_dim=width, vision_dim=vis, embed_dim=embed,
                                                            depth_text=2, depth_vision=2, prefix=1, suffix=1)
    tr.train()
    losses = [h["loss"] for h in tr.history]
    # the supervised contrastive loss cannot go below mean_i log n_{y_i} (identical positives):
    # log 2 = 0.69 for batches of 2 + 2; it starts near log 4 = 1.39
    assert losses[-1] < losses[0] - 0.1
    assert tr.test()["acc"] >= 90.0


def test_ce_loss_and_missing_llm_falls_back_to_random_tiny_llama_loudly(tmp_path):
    tr = _trainer(tmp_path, ["TRAINER.CILMP.LOSS", "ce", "TRAINER.CILMP.LLM_MODEL", str(tmp_path / "no-such-llm"),
                             "TRAINER.CILMP.LLM_MAX_NEW_TOKENS", "2", "TRAINER.CILMP.PREFIX_LENGTH", "4",
                             "TRAINER.CILMP.SUFFIX_LENGTH", "4"], epochs=1)
    assert tr.loss_name == "ce"
    assert any("no-such-llm" in w for w in tr.warnings)
    assert isinstance(tr.warnings, list) and all(isinstance(w, str) for w in tr.warnings)
    assert any("SEEDED RANDOM TINY LLAMA" in w for w in tr.warnings)
    assert tr.model.prompt_learner.llm_reps.shape == (2, 12, 64)
    cached = list((tmp_path / "run" / "llm_representations").glob("*.safetensors"))
    assert len(cached) == 1  # cached under the output folder, reused by the next build
    again = _trainer(tmp_path, ["TRAINER.CILMP.LLM_MODEL", str(tmp_path / "no-such-llm"),
                                "TRAINER.CILMP.LLM_MAX_NEW_TOKENS", "2"], epochs=1)
    assert torch.equal(again.model.prompt_learner.llm_reps, tr.model.prompt_learner.llm_reps)


def test_text_description_ablation_uses_the_generated_answers(tmp_path, rep_file):
    tr = _trainer(tmp_path, ["TRAINER.CILMP.REPRESENTATIONS", str(rep_file), "TRAINER.CILMP.KNOWLEDGE", "text"], epochs=1)
    texts = lr.load_representations(rep_file).texts
    pl = tr.model.prompt_learner
    assert len(pl.layers) == 0 and not tr.model.image_conditioned
    assert pl.prompt_texts[0].startswith("a photo of a red, " + texts[0].split()[0])
    tr.train()
    assert tr.test()["acc"] >= 0.0


def test_bad_config_names_the_key(tmp_path, rep_file):
    with pytest.raises(ValueError, match="TRAINER.CILMP.LOSS"):
        _trainer(tmp_path, ["TRAINER.CILMP.LOSS", "focal"])
    with pytest.raises(ValueError, match="TRAINER.CILMP.PROMPT_DEPTH_TEXT 3"):
        _trainer(tmp_path, ["TRAINER.CILMP.REPRESENTATIONS", str(rep_file), "TRAINER.CILMP.PROMPT_DEPTH_TEXT", "3"])
    with pytest.raises(ValueError, match="PREFIX_LENGTH"):
        _trainer(tmp_path, ["TRAINER.CILMP.REPRESENTATIONS", str(rep_file), "TRAINER.CILMP.PREFIX_LENGTH", "2"])


def test_killed_run_resumes_to_the_same_prompts_and_gpa(tmp_path, rep_file):
    opts = ["TRAINER.CILMP.REPRESENTATIONS", str(rep_file)]
    full = _trainer(tmp_path / "a", opts, epochs=2)
    full.train()
    part = _trainer(tmp_path / "b", opts, epochs=2)
    part.max_epoch = 1  # "killed" after one epoch: checkpoint and GPA running sum are on disk
    part.train()
    resumed = _trainer(tmp_path / "b", opts, epochs=2)
    resumed.train(resume=True)
    for (n, p), (_, q) in zip(full.model.prompt_learner.named_parameters(),
                              resumed.model.prompt_learner.named_parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)

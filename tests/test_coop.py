"""CoOp and zero-shot CLIP: exact parameter counts, the zero-shot equivalence, learning, resume."""
import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_cfg
from medpt.clip import PromptLearner, TextEncoder
from medpt.datasets import SeparableSynthetic
from medpt.engine import TRAINER_REGISTRY, DataManager
from medpt.trainers.coop import CoOpCLIP
from medpt.trainers.zsclip import ZeroShotModel, zero_shot_text_features

CLASSES = ["normal", "bacteria pneumonia", "virus pneumonia"]


@pytest.mark.parametrize("kw,expected", [
    (dict(n_ctx=16), 8192),
    (dict(ctx_init="a photo of a"), 2048),
    (dict(n_ctx=16, csc=True), 3 * 16 * 512),
    (dict(n_ctx=4, class_token_position="middle"), 2048),
])
def test_coop_trainable_parameters_at_vit_b16_width(vit_b16_meta, kw, expected):
    model, tok = vit_b16_meta
    pl = PromptLearner(model, tok, CLASSES, **kw)
    assert sum(p.numel() for p in pl.parameters() if p.requires_grad) == expected
    assert pl.token_prefix.shape == (3, 1, 512)
    assert pl.token_suffix.shape == (3, 77 - 1 - pl.n_ctx, 512)


def test_coop_from_a_photo_of_a_equals_zero_shot_clip(tiny_clip):
    """Untrained CoOp initialised from "a photo of a" gives the zero-shot logits of
    "a photo of a {class}." — exactly without truncation, to float rounding with it."""
    coop = CoOpCLIP(tiny_clip.model, tiny_clip.tokenizer, CLASSES, ctx_init="a photo of a")
    zs_text = zero_shot_text_features(tiny_clip.model, tiny_clip.tokenizer, CLASSES, ["a photo of a {}."])
    pl = coop.prompt_learner
    full = F.normalize(coop.text_encoder(pl(), pl.eot_idx, truncate=False), dim=-1)
    assert torch.equal(full, zs_text)
    torch.manual_seed(0)
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        zs_logits = ZeroShotModel(tiny_clip.model, zs_text)(images)
        coop_logits = coop(images)
    torch.testing.assert_close(coop_logits, zs_logits, rtol=1e-5, atol=1e-5)


def test_text_encoder_truncation_matches_full_length(tiny_clip):
    torch.manual_seed(0)
    pl = PromptLearner(tiny_clip.model, tiny_clip.tokenizer, CLASSES, n_ctx=8)
    enc = TextEncoder(tiny_clip.model)
    full = enc(pl(), pl.eot_idx, truncate=False)
    short = enc(pl(), pl.eot_idx, truncate=True)
    torch.testing.assert_close(short, full, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("position", ["front", "middle", "end"])
def test_class_token_position_places_name_tokens(tiny_clip, position):
    torch.manual_seed(0)
    pl = PromptLearner(tiny_clip.model, tiny_clip.tokenizer, CLASSES, n_ctx=4, class_token_position=position)
    emb = tiny_clip.model.token_embedding
    out = pl()
    for i, name in enumerate(CLASSES):
        tok = tiny_clip.tokenizer([name])[0]
        n = pl.name_lens[i]
        name_emb = emb(tok[1:1 + n])
        start = {"front": 1, "middle": 1 + 2, "end": 1 + 4}[position]
        assert torch.equal(out[i, start:start + n], name_emb)
        assert int(pl.eot_idx[i]) == 1 + 4 + n + 1  # SOS, 4 ctx, name, "."


def test_bad_class_token_position():
    with pytest.raises(ValueError, match="CLASS_TOKEN_POSITION"):
        PromptLearner.__init__(PromptLearner.__new__(PromptLearner), None, None, ["a"],
                               class_token_position="left")


def _synthetic_trainer(tmp_path, epochs=10, extra=()):
    ds = SeparableSynthetic(tmp_path / "data", classnames=("red", "green"), n_train=8, n_test=8)
    cfg = tiny_cfg("coop", output_dir=tmp_path / "run", opts=[
        "OPTIM.MAX_EPOCH", str(epochs), "TRAINER.COOP.N_CTX", "4", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
        "OPTIM.LR_SCHEDULER", "cosine", "OPTIM.LR", "0.002", *extra])
    return TRAINER_REGISTRY.get("coop")(cfg, dm=DataManager(cfg, ds)), ds, cfg


def test_coop_learns_on_separable_synthetic_set(tmp_path):
    trainer, _, _ = _synthetic_trainer(tmp_path)
    assert trainer.count_trainable_params() == 4 * 64
    trainer.train()
    losses = [h["loss"] for h in trainer.history]
    assert losses[-1] < 0.5 * losses[0]
    assert trainer.test()["acc"] >= 90.0


def test_killed_run_resumes_to_the_same_result(tmp_path):
    full, ds, cfg = _synthetic_trainer(tmp_path / "a", epochs=4)
    full.train()
    part = TRAINER_REGISTRY.get("coop")(cfg.clone(), dm=DataManager(cfg, ds))
    part.output_dir = tmp_path / "b"
    part.max_epoch = 2  # "killed" after two epochs: their checkpoint is on disk
    part.train()
    assert (tmp_path / "b" / "prompt_learner" / "model.pth.tar-2").is_file()
    resumed = TRAINER_REGISTRY.get("coop")(cfg.clone(), dm=DataManager(cfg, ds))
    resumed.output_dir = tmp_path / "b"
    resumed.train(resume=True)
    assert resumed.start_epoch == 2 and len(resumed.history) == 4
    assert torch.equal(resumed.model.prompt_learner.ctx, full.model.prompt_learner.ctx)
    assert [h["lr"] for h in resumed.history] == [h["lr"] for h in full.history]
    # only the latest checkpoint is kept
    assert [p.name for p in (tmp_path / "b" / "prompt_learner").glob("model.pth.tar-*")] == ["model.pth.tar-4"]


def test_zero_shot_ensemble_averages_templates(tiny_clip):
    one = zero_shot_text_features(tiny_clip.model, tiny_clip.tokenizer, CLASSES, ["a photo of a {}."])
    two = zero_shot_text_features(tiny_clip.model, tiny_clip.tokenizer, CLASSES,
                                  ["a photo of a {}.", "a chest X-ray showing {}."])
    other = zero_shot_text_features(tiny_clip.model, tiny_clip.tokenizer, CLASSES, ["a chest X-ray showing {}."])
    torch.testing.assert_close(two, F.normalize(one + other, dim=-1))
    with pytest.raises(ValueError, match="no '\\{\\}' slot"):
        zero_shot_text_features(tiny_clip.model, tiny_clip.tokenizer, CLASSES, ["a photo"])


def test_zero_shot_trainer_has_no_trainable_parameters(tmp_path):
    cfg = tiny_cfg("zsclip", output_dir=tmp_path)
    t = TRAINER_REGISTRY.get("zsclip")(cfg)
    assert t.count_trainable_params() == 0
    t.train()
    m = t.test()
    assert m["n"] == 8 and len(m["per_class"]) == 2

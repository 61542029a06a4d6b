"""Backbone loading: local checkpoints by path, loud random init, clear errors."""
import open_clip
import pytest
import torch
from safetensors.torch import save_file

from medpt.clip import TINY_CLIP, WeightsUnavailableError, load_clip
from medpt.clip.backbone import RANDOM_INIT_WARNING


def _features(bb):
    torch.manual_seed(0)
    img = torch.randn(2, 3, 32, 32)
    tok = bb.tokenizer(["a photo of a nevus", "a chest x-ray"])
    with torch.no_grad():
        return bb.model.encode_image(img), bb.model.encode_text(tok)


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_checkpoint_saved_and_loaded_by_path_gives_same_features(tmp_path, fmt):
    src = load_clip(TINY_CLIP, "", allow_random_init=True, init_seed=123, cache=False)
    # perturb so that the loaded model cannot match a fresh random init by accident
    with torch.no_grad():
        src.model.visual.proj.add_(0.5)
    path = tmp_path / f"tiny.{fmt}"
    if fmt == "pt":
        torch.save(src.model.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in src.model.state_dict().items()}, str(path))
    loaded = load_clip(TINY_CLIP, str(path), cache=False)
    assert loaded.pretrained and loaded.weights_id.startswith(f"file:tiny.{fmt}:sha256=")
    assert not loaded.warnings
    for a, b in zip(_features(src), _features(loaded)):
        assert torch.equal(a, b)
    assert all(not p.requires_grad for p in loaded.model.parameters())
    assert not loaded.model.training


def test_missing_weights_file_is_named_and_never_falls_back(tmp_path):
    missing = tmp_path / "nope" / "ViT-B-16.pt"
    with pytest.raises(FileNotFoundError, match="Backbone weights file not found: .*ViT-B-16.pt"):
        load_clip(TINY_CLIP, str(missing), allow_random_init=True, cache=False)


def test_random_init_needs_permission_and_is_flagged(capsys):
    with pytest.raises(WeightsUnavailableError, match="random weights are not allowed"):
        load_clip(TINY_CLIP, "", cache=False)
    bb = load_clip(TINY_CLIP, "", allow_random_init=True, init_seed=7, cache=False)
    assert not bb.pretrained and bb.weights_id == "random-init:seed=7"
    assert bb.warnings == [RANDOM_INIT_WARNING]
    assert "RANDOM-INIT BACKBONE" in capsys.readouterr().err
    # seeded: the same seed gives the same weights, another seed others
    again = load_clip(TINY_CLIP, "", allow_random_init=True, init_seed=7, cache=False)
    other = load_clip(TINY_CLIP, "", allow_random_init=True, init_seed=8, cache=False)
    assert torch.equal(bb.model.visual.proj, again.model.visual.proj)
    assert not torch.equal(bb.model.visual.proj, other.model.visual.proj)


def test_unavailable_tag_stops_paper_protocol_and_demo_falls_back(monkeypatch):
    """A pretrained tag that cannot be downloaded (no network here) is a hard error unless random
    init is allowed. The download is simulated to fail so the test never touches the network."""
    real_create = open_clip.create_model

    def offline_create(name, pretrained=None, **kw):
        if pretrained == "openai":
            raise RuntimeError("Failed to download weights for tag 'openai'")
        return real_create(name, pretrained=pretrained, **kw)

    monkeypatch.setattr(open_clip, "create_model", offline_create)
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda name: ["openai"])
    with pytest.raises(WeightsUnavailableError, match="--weights PATH"):
        load_clip(TINY_CLIP, "openai", cache=False)
    bb = load_clip(TINY_CLIP, "openai", allow_random_init=True, cache=False)
    assert not bb.pretrained and bb.warnings == [RANDOM_INIT_WARNING]


def test_unknown_model_name():
    with pytest.raises(KeyError, match="Unknown open_clip model 'ViT-B-61'"):
        load_clip("ViT-B-61", "")


def test_cache_hands_out_independent_copies():
    a = load_clip(TINY_CLIP, "", allow_random_init=True, init_seed=3)
    b = load_clip(TINY_CLIP, "", allow_random_init=True, init_seed=3)
    assert a.model is not b.model
    with torch.no_grad():
        a.model.visual.proj.zero_()
    assert b.model.visual.proj.abs().sum() > 0

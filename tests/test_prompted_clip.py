"""Tests of the shared prompt-aware CLIP towers (medpt.clip.prompted)."""
from __future__ import annotations

import pytest
import torch

from medpt.clip.prompted import (PromptCoupler, PromptedTextEncoder, PromptedVisionEncoder, make_deep_prompts,
                                 read_only_text_mask, read_only_vision_mask)


@pytest.fixture
def towers(tiny_clip):
    m = tiny_clip.model
    return tiny_clip, PromptedTextEncoder(m), PromptedVisionEncoder(m)


def _images(n=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def test_vision_without_prompts_equals_encode_image(towers):
    bb, _, vis = towers
    x = _images()
    with torch.no_grad():
        ref = bb.model.encode_image(x)
        assert torch.equal(vis(x), ref)
        # deep prompt slots left empty and read-only without prompts are plain CLIP too
        assert torch.equal(vis(x, deep_prompts=[None, None][:vis.n_layers - 1], read_only=True), ref)


def test_text_without_prompts_equals_encode_text(towers):
    bb, txt, _ = towers
    ids = bb.tokenizer(["a photo of a cat.", "pneumonia", "an x-ray of normal lungs."])
    with torch.no_grad():
        ref = bb.model.encode_text(ids)
        emb = bb.model.token_embedding(ids)
        assert torch.allclose(txt(emb, ids.argmax(-1), truncate=False), ref, atol=0, rtol=0)
        assert torch.allclose(txt(emb, ids.argmax(-1)), ref, atol=1e-6)
        assert torch.allclose(txt.encode_ids(ids), ref, atol=1e-6)


def test_zero_vision_prompts_with_zero_deep_layers_change_the_features_but_replace_exactly(towers):
    """Deep prompts equal to what the previous block produced leave the output unchanged;
    prompts that differ change the class token (so the deep path is really used)."""
    _, _, vis = towers
    x = _images()
    p = torch.zeros(2, vis.width)
    with torch.no_grad():
        base = vis(x, prompts=p)
        deep = vis(x, prompts=p, deep_prompts=[torch.ones(2, vis.width)])
        assert not torch.allclose(base, deep)
        # read-only prompts of any value leave the class token exactly as without prompts
        ro = vis(x, prompts=torch.randn(2, vis.width), read_only=True)
        assert torch.allclose(ro, vis(x), atol=1e-6)


def test_vision_prompt_copies_are_copy_major(towers):
    _, _, vis = towers
    x = _images(2)
    p = torch.randn(3, 2, vis.width)  # M = 3 copies
    with torch.no_grad():
        out = vis(x, prompts=p.repeat_interleave(2, dim=0))  # [M*B, n, W]
        for m in range(3):
            assert torch.allclose(out[m * 2:(m + 1) * 2], vis(x, prompts=p[m]), atol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        vis(x, prompts=torch.randn(3, 2, vis.width))


def test_read_only_text_prompts_leave_original_tokens_unchanged(towers):
    bb, txt, _ = towers
    ids = bb.tokenizer(["a photo of a cat.", "a photo of a very small dog."])
    emb = bb.model.token_embedding(ids).detach()
    eot = ids.argmax(-1)
    with torch.no_grad():
        e1, r1 = txt.forward_read_only(emb, eot, torch.randn(4, emb.shape[-1]))
        e2, r2 = txt.forward_read_only(emb, eot, torch.randn(4, emb.shape[-1]))
        assert torch.allclose(e1, bb.model.encode_text(ids), atol=1e-6)
        assert torch.allclose(e1, e2, atol=1e-6)
        assert r1.shape == (2, 4, bb.model.text_projection.shape[1])
        assert not torch.allclose(r1, r2)
        # a prompt does not see the other prompts: changing prompt 1 leaves prompt 0's output
        p = torch.randn(4, emb.shape[-1])
        q = p.clone()
        q[1:] += torch.randn_like(q[1:])  # (a constant shift would be removed by LayerNorm)
        _, a = txt.forward_read_only(emb, eot, p)
        _, b = txt.forward_read_only(emb, eot, q)
        assert torch.allclose(a[:, 0], b[:, 0], atol=1e-6)
        assert not torch.allclose(a[:, 1], b[:, 1])


def test_read_only_vision_prompts_only_read(towers):
    _, _, vis = towers
    x = _images(2)
    p = torch.randn(3, vis.width)
    q = p.clone()
    q[1:] += torch.randn_like(q[1:])
    with torch.no_grad():
        a = vis(x, prompts=p, read_only=True, output="prompts")
        b = vis(x, prompts=q, read_only=True, output="prompts")
        cls_a, _ = vis(x, prompts=p, read_only=True, output="both")
    assert a.shape == (2, 3, vis.visual.proj.shape[1])
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-6)  # prompt 0 never sees prompts 1, 2
    assert not torch.allclose(a[:, 1], b[:, 1])
    assert torch.allclose(cls_a, vis(x), atol=1e-6)  # the class token never sees a prompt


def test_masks_hand_computed():
    m = read_only_text_mask(torch.tensor([1, 2]), 4, 2)
    assert m.shape == (4, 4, 4)
    inf = float("-inf")
    expect0 = torch.tensor([[0, inf, inf, inf], [0, 0, inf, inf], [0, 0, inf, inf], [0, 0, inf, inf]])
    assert torch.equal(m[0], expect0) and torch.equal(m[1], expect0)
    expect1 = torch.tensor([[0, inf, inf, inf], [0, 0, inf, inf], [0, 0, 0, inf], [0, 0, 0, inf]])
    assert torch.equal(m[2], expect1)
    v = read_only_vision_mask(4, 1)
    assert torch.equal(v[:, 3], torch.full((4,), inf)) and torch.equal(v[:, :3], torch.zeros(4, 3))


def test_trainable_layernorms_start_equal_and_leave_backbone_frozen(towers):
    bb, _, _ = towers
    vis = PromptedVisionEncoder(bb.model, trainable_ln=("ln_1", "ln_2"))
    n_blocks = len(bb.model.visual.transformer.resblocks)
    assert len(vis.ln_overrides) == 2 * n_blocks
    trainable = [p for p in vis.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == 2 * n_blocks * 2 * vis.width
    x = _images()
    with torch.no_grad():
        assert torch.allclose(vis(x), bb.model.encode_image(x), atol=1e-6)
        vis.ln_overrides["0_ln_1"].weight.mul_(2.0)
        assert not torch.allclose(vis(x), bb.model.encode_image(x), atol=1e-4)
    assert not any(p.requires_grad for p in bb.model.parameters())
    with pytest.raises(ValueError, match="ln_3"):
        PromptedVisionEncoder(bb.model, trainable_ln=("ln_3",))


def test_deep_prompt_validation(towers):
    _, _, vis = towers
    x = _images(1)
    with pytest.raises(ValueError, match="need input prompts"):
        vis(x, deep_prompts=[torch.zeros(2, vis.width)])
    with pytest.raises(ValueError, match="tokens"):
        vis(x, prompts=torch.zeros(2, vis.width), deep_prompts=[torch.zeros(3, vis.width)])


def test_vit_b16_widths_on_meta_device(vit_b16_meta):
    model, _ = vit_b16_meta
    vis = PromptedVisionEncoder(model, trainable_ln=("ln_1", "ln_2"))
    assert (vis.width, vis.n_layers, vis.n_heads) == (768, 12, 12)
    assert sum(p.numel() for p in vis.ln_overrides.parameters()) == 36_864
    assert sum(p.numel() for p in make_deep_prompts(9, 4, 768)) == 8 * 4 * 768
    assert sum(p.numel() for p in PromptCoupler(1, 512, 768).parameters()) == 393_984


def test_coupler_maps_each_layer(towers):
    c = PromptCoupler(3, 8, 5)
    out = c([torch.randn(2, 8) for _ in range(3)])
    assert [o.shape for o in out] == [(2, 5)] * 3
    x = torch.randn(2, 8)
    assert torch.allclose(c([x, x, x])[2], x @ c.layers[2].weight.t() + c.layers[2].bias)
    with pytest.raises(ValueError):
        c([torch.randn(2, 8)])


def test_towers_run_under_bf16_autocast(towers):
    """What ``PREC: amp`` does on CUDA, exercised with CPU autocast: fp32 prompts are cast into
    bf16 activations, masks follow, results stay close to fp32."""
    bb, txt, vis = towers
    x = _images(2)
    p = torch.randn(3, vis.width) * 0.02
    ids = bb.tokenizer(["a photo of a cat.", "pneumonia"])
    emb = bb.model.token_embedding(ids).detach()
    ro = torch.randn(2, emb.shape[-1]) * 0.02
    with torch.no_grad():
        ref_v = vis(x, prompts=p, deep_prompts=[p], read_only=True, output="both")
        ref_t = txt.forward_read_only(emb, ids.argmax(-1), ro)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_v = vis(x, prompts=p, deep_prompts=[p], read_only=True, output="both")
            out_t = txt.forward_read_only(emb, ids.argmax(-1), ro)
    for a, b in list(zip(out_v, ref_v)) + list(zip(out_t, ref_t)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.float(), b, rtol=0.1, atol=0.1)


def test_read_only_split_equals_masked_joint_pass_values_and_gradients(towers):
    """RPO's two-stream pass (image/text tokens without gradient, prompts as queries) gives the
    official masked joint pass's outputs and prompt gradients, in both towers."""
    bb, txt, vis = towers
    x = _images(3)
    p = torch.randn(4, vis.width, requires_grad=True)
    grads = {}
    for split in (False, True):
        cls, prm = vis(x, prompts=p, read_only=True, output="both", split=split)
        (prm.square().sum() + cls.sum()).backward()
        grads[split] = (cls.detach(), prm.detach(), p.grad.clone())
        p.grad = None
    for a, b in zip(grads[False], grads[True]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert grads[True][2].abs().sum() > 0
    only = vis(x, prompts=p, read_only=True, output="prompts")
    assert torch.allclose(only, grads[True][1], atol=1e-5)

    ids = bb.tokenizer(["a photo of a cat.", "a photo of a very small dog.", "lungs"])
    emb = bb.model.token_embedding(ids).detach()
    eot = ids.argmax(-1)
    ro = torch.randn(5, emb.shape[-1], requires_grad=True)
    res = {}
    for split in (False, True):
        e, r = txt.forward_read_only(emb, eot, ro, split=split)
        (r.square().sum()).backward()
        res[split] = (e.detach(), r.detach(), ro.grad.clone())
        ro.grad = None
    for a, b in zip(res[False], res[True]):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        assert torch.allclose(res[True][0], bb.model.encode_text(ids), atol=1e-5)


def test_read_only_split_keeps_gradients_to_images_when_asked(towers):
    """If the images need a gradient (e.g. an attribution map), the image tokens' stream is not
    detached: the gradient w.r.t. the input matches the masked joint pass."""
    _, _, vis = towers
    p = torch.randn(2, vis.width)
    g = {}
    for split in (False, True):
        x = _images(2).requires_grad_(True)
        vis(x, prompts=p, read_only=True, output="prompts", split=split).sum().backward()
        g[split] = x.grad
    assert g[True].abs().sum() > 0
    assert torch.allclose(g[False], g[True], atol=1e-5, rtol=1e-4)


def test_read_only_split_runs_no_backward_through_the_image_tokens(towers):
    """The prompts' graph holds only [B, K, W]-sized activations: no saved tensor of the
    [B, 1 + P, W] image-token stream requires a gradient."""
    _, _, vis = towers
    x = _images(2)
    p = torch.randn(3, vis.width, requires_grad=True)
    captured = []

    def pack(t):
        captured.append((tuple(t.shape), t.requires_grad))
        return t

    def token_sized(split):
        captured.clear()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            vis(x, prompts=p, read_only=True, output="prompts", split=split)
        assert captured
        return [s for s, rg in captured if rg and len(s) >= 2 and s[-2] >= n_tokens]

    n_tokens = vis.visual.positional_embedding.shape[0]
    assert token_sized(split=False)  # the masked joint pass back-propagates through every token
    assert not token_sized(split=True)

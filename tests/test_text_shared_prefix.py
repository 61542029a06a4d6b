"""The text tower's shared-prefix pass (issue 9) computes what the plain causal pass computes."""
from __future__ import annotations

import torch

from medpt.clip import PromptLearner, TextEncoder
from medpt.clip.prompted import PromptedTextEncoder
from medpt.clip.text_encoder import shared_prefix_length


def _coop_prompts(bb, names, n_ctx=4):
    pl = PromptLearner(bb.model, bb.tokenizer, names, n_ctx=n_ctx)
    return pl, pl()


def _close(a, b, rel=1e-5):
    """Equal up to float summation order, relative to the tensor's scale (random-init towers
    have activations and gradients in the hundreds)."""
    return bool((a - b).abs().max() <= rel * max(1.0, float(a.abs().max())))


NAMES = ["normal", "bacterial pneumonia", "viral pneumonia with a long name", "effusion"]


def test_shared_prefix_length_counts_identical_leading_tokens(tiny_clip):
    pl, prompts = _coop_prompts(tiny_clip, NAMES)
    assert shared_prefix_length(prompts) == 1 + 4  # SOS + the class-shared context
    x = prompts.detach().clone()
    x[2, 3] += 1.0
    assert shared_prefix_length(x) == 3
    groups = torch.tensor([0, 0, 1, 1])
    assert shared_prefix_length(x, groups) == 3
    assert shared_prefix_length(x, torch.tensor([0, 1, 2, 3])) == x.shape[1]  # singletons share everything


def test_shared_prefix_pass_equals_the_plain_pass_values_and_gradients(tiny_clip):
    enc = TextEncoder(tiny_clip.model)
    pl, _ = _coop_prompts(tiny_clip, NAMES)
    out = {}
    for shared in (False, True):  # True: the unified context is one tensor, as PromptLearner says
        assert pl.shares_prefix
        pl.zero_grad()
        t = enc(pl(), pl.eot_idx, shared_prefix=shared)
        (t.square().sum() + t[1].sum()).backward()
        out[shared] = (t.detach(), pl.ctx.grad.clone())
    assert _close(out[False][0], out[True][0])
    assert _close(out[False][1], out[True][1])
    assert out[True][1].abs().sum() > 0
    with torch.no_grad():  # and both equal open_clip's encode_text on the plain template
        ids = tiny_clip.tokenizer([f"a photo of a {n}." for n in NAMES])
        ref = tiny_clip.model.encode_text(ids)
        assert torch.allclose(enc(tiny_clip.model.token_embedding(ids), ids.argmax(-1)), ref, atol=1e-5)


def test_shared_prefix_with_groups_and_shared_deep_prompts(tiny_clip):
    """CoCoOp-style groups (a context per image) and MaPLe-style shared deep prompts."""
    enc = PromptedTextEncoder(tiny_clip.model)
    pl, base = _coop_prompts(tiny_clip, NAMES)
    b, c = 3, len(NAMES)
    shift = torch.randn(b, 1, base.shape[-1])
    prompts = (base.unsqueeze(0) + torch.cat([torch.zeros(b, 1, base.shape[-1]), shift.expand(-1, 4, -1),
                                              torch.zeros(b, base.shape[1] - 5, base.shape[-1])], 1)
               .unsqueeze(1)).reshape(b * c, base.shape[1], -1)
    eot = pl.eot_idx.repeat(b)
    groups = torch.arange(b).repeat_interleave(c)
    deep = [torch.randn(4, base.shape[-1], requires_grad=True)]
    with torch.no_grad():
        plain = enc(prompts, eot, deep_prompts=deep, shared_prefix=False)
        grouped = enc(prompts, eot, deep_prompts=deep, prefix_groups=groups)
        ungrouped = enc(prompts, eot, deep_prompts=deep)  # no common prefix beyond SOS: plain pass
    assert _close(plain, grouped)
    assert _close(plain, ungrouped)
    # a per-sequence deep prompt cannot share the prefix: the plain pass runs, same values
    per_seq = [torch.randn(b * c, 4, base.shape[-1])]
    with torch.no_grad():
        assert torch.allclose(enc(prompts, eot, deep_prompts=per_seq, shared_prefix=False),
                              enc(prompts, eot, deep_prompts=per_seq, prefix_groups=groups), atol=1e-6)


def test_shared_prefix_pass_really_processes_fewer_tokens(tiny_clip):
    """The first block's MLP sees G*P + N*(L-P) token rows instead of N*L."""
    enc = TextEncoder(tiny_clip.model)
    pl, prompts = _coop_prompts(tiny_clip, NAMES, n_ctx=8)
    rows = []
    h = enc.transformer.resblocks[0].mlp.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[:-1].numel()))
    try:
        with torch.no_grad():
            enc(prompts, pl.eot_idx, shared_prefix=False)
            enc(prompts, pl.eot_idx)
    finally:
        h.remove()
    n, length = len(NAMES), int(pl.eot_idx.max()) + 1
    assert rows[0] == n * length
    assert rows[1:] == [9, n * (length - 9)]  # the prefix once, then each sequence's own tokens


def test_equal_rows_of_different_parameters_keep_their_own_gradients(tiny_clip):
    """Class-specific contexts initialised from one phrase are equal in value but are different
    parameters: by default ("auto") the shared pass is not used while gradients flow, so every
    class gets its own gradient (a shared pass would give row 0 all of it)."""
    enc = TextEncoder(tiny_clip.model)
    pl = PromptLearner(tiny_clip.model, tiny_clip.tokenizer, NAMES, ctx_init="a photo of a", csc=True)
    assert not pl.shares_prefix and shared_prefix_length(pl().detach()) == 5  # equal values
    grads = {}
    for mode in (False, "auto"):
        pl.zero_grad()
        enc(pl(), pl.eot_idx, shared_prefix=mode).square().sum().backward()
        grads[mode] = pl.ctx.grad.clone()
    assert _close(grads[False], grads["auto"])
    assert (grads["auto"].flatten(1).norm(dim=1) > 0).all()  # every class's context is trained


def test_groups_need_not_be_dense_or_contiguous(tiny_clip):
    enc = TextEncoder(tiny_clip.model)
    pl, base = _coop_prompts(tiny_clip, NAMES)
    prompts = torch.cat([base, base + torch.cat([torch.zeros_like(base[:, :1]), torch.ones_like(base[:, 1:5]),
                                                 torch.zeros_like(base[:, 5:])], 1)])
    eot = pl.eot_idx.repeat(2)
    groups = torch.tensor([7, 7, 7, 7, 2, 2, 2, 2])[torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])]
    prompts = prompts[torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])]
    eot = eot[torch.tensor([0, 4, 1, 5, 2, 6, 3, 7])]
    with torch.no_grad():
        assert _close(enc(prompts, eot, shared_prefix=False), enc(prompts, eot, prefix_groups=groups))


def test_deep_prompts_straddling_the_prefix_cilmp_layout(tiny_clip):
    """CILMP's layout: [SOS][ctx (shared)][class prompt rows (per sequence)][name][.][EOT], and
    per layer a deep prompt covering both: the shared context rows go to the prefix pass, the
    per-sequence rows to each sequence. Values and gradients of both parts match the plain pass."""
    enc = PromptedTextEncoder(tiny_clip.model)
    names = NAMES + ["atelectasis", "nodule", "mass", "cardiomegaly"]  # enough prompts for the pass to pay
    pl, base = _coop_prompts(tiny_clip, names)  # [C, L, D], prefix SOS + 4 ctx
    c, d_model = base.shape[0], base.shape[-1]
    rows = 3
    ctx_deep = torch.randn(4, d_model, requires_grad=True)
    cls_rows = torch.randn(c, rows, d_model, requires_grad=True)
    cls_deep = torch.randn(c, rows, d_model, requires_grad=True)
    prompts = torch.cat([base[:, :5].detach(), cls_rows, base[:, 5:-rows].detach()], dim=1)
    eot = pl.eot_idx + rows
    out = {}
    for shared in (False, True):
        for t in (ctx_deep, cls_rows, cls_deep):
            t.grad = None
        deep = [torch.cat([ctx_deep.unsqueeze(0).expand(c, -1, -1), cls_deep], dim=1)]
        y = enc(prompts, eot, deep_prompts=deep, shared_prefix=shared)
        y.square().sum().backward()
        out[shared] = [y.detach()] + [t.grad.clone() for t in (ctx_deep, cls_rows, cls_deep)]
    for a, b in zip(out[False], out[True]):
        assert _close(a, b)
    rows_seen = []
    h = enc.transformer.resblocks[0].mlp.register_forward_hook(lambda m, i, o: rows_seen.append(i[0].shape[:-1].numel()))
    try:
        with torch.no_grad():
            enc(prompts, eot, deep_prompts=deep, shared_prefix=True)
    finally:
        h.remove()
    assert rows_seen[0] == 5  # the shared pass really ran: the prefix once

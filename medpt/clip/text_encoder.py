"""CLIP's text tower applied to prompt embeddings: the one prompt-aware text encoder.

Every prompt method feeds token embeddings (with learnable context vectors spliced in) through
this module instead of ``open_clip``'s ``encode_text``, which only takes token ids. It performs
exactly ``encode_text``'s computation (positional embedding, the residual blocks under the
causal mask, ``ln_final``, the end-of-text token, ``text_projection``), with two additions:

* **truncation at the longest EOT**: the causal mask means the EOT output depends only on
  positions ``0..eot``, so sequences are cut to ``max(eot) + 1`` tokens (the positional
  embedding and mask are sliced likewise). Features are unchanged up to float summation order
  and the cost falls several-fold (77 -> ~10-20 tokens for medical class names). Inferred from
  the causal mask (methods.md §0); off with ``truncate=False``.
* **deep prompts**: ``deep_prompts[i]`` (``[n, D]`` or ``[N, n, D]``) replaces the ``n`` tokens at
  ``deep_start .. deep_start + n`` before block ``i + 1`` (MaPLe / PromptSRC layout: the input
  layer's prompts come with the embeddings, layers ``1 .. len(deep_prompts)`` get new ones).
* **shared prefix** (:func:`shared_prefix_length`, :meth:`TextEncoder.forward`
  ``shared_prefix``): prompts of a class-shared context, ``[SOS][ctx][class name][.][EOT]``,
  begin with the same ``P`` token embeddings in every sequence (``P = 1 + n_ctx``). Under the
  causal mask those positions have the same hidden states in every sequence and every block,
  so they are computed once (per group of sequences sharing them, e.g. per image for CoCoOp),
  and each sequence's remaining tokens attend to the shared keys/values, like a prefix
  key/value cache. Same values up to float summation order (tested); the tokens processed per
  pass fall from ``N L`` to ``G P + N (L - P)``. While gradients flow it is used only when the
  caller says the equal rows are one tensor (``shared_prefix=True``: a unified context); equal
  values of different parameters (class-specific contexts from one init phrase) must each keep
  their own gradient, so ``"auto"`` shares only without gradients.

Source: ``open_clip/model.py:CLIP.encode_text``; ``KaiyangZhou/CoOp:trainers/coop.py:TextEncoder``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def shared_prefix_length(prompts: torch.Tensor, groups: Optional[torch.Tensor] = None) -> int:
    """Number ``P`` of leading positions whose embeddings are identical within every group.

    Args:
        prompts: ``[N, L, D]`` token embeddings.
        groups: ``[N]`` group ids (``None``: one group, all sequences).

    Returns:
        ``P`` (0 when even the first token differs), by exact value equality. Equal values give
        equal hidden states, but not equal gradients when the rows come from *different*
        parameters that happen to be equal (e.g. class-specific contexts initialised from one
        phrase): see ``shared_prefix`` in :meth:`TextEncoder.forward`.
    """
    with torch.no_grad():
        if groups is None:
            ref = prompts[:1]
        else:
            groups, first = _group_first(groups)
            ref = prompts[first[groups]]
        same = (prompts == ref).all(dim=-1).all(dim=0)  # [L]
        return int(torch.cumprod(same.to(torch.int64), 0).sum().item())


def _group_first(groups: torch.Tensor) -> tuple:
    """``([N] dense group ids 0..G-1, [G] index of each group's first sequence)``."""
    groups = torch.unique(groups, return_inverse=True)[1]
    n = len(groups)
    first = torch.full((int(groups.max()) + 1,), n, dtype=torch.long, device=groups.device)
    first = first.scatter_reduce(0, groups, torch.arange(n, device=groups.device), "amin")
    return groups, first


def _blocks_splittable(blocks) -> bool:
    """Whether the functional passes here (shared prefix; RPO's two streams in
    :mod:`medpt.clip.prompted`) can run these blocks: open_clip ``ResidualAttentionBlock``s whose
    attention is a packed-projection ``nn.MultiheadAttention`` without dropout, extra key/value
    biases or separate key/value LayerNorm."""
    for blk in blocks:
        a = getattr(blk, "attn", None)
        if not isinstance(a, nn.MultiheadAttention) or a.in_proj_weight is None or a.dropout:
            return False
        if getattr(a, "bias_k", None) is not None or getattr(a, "add_zero_attn", False):
            return False
        if hasattr(blk, "ln_1_kv") or hasattr(blk, "ln_attn") or not hasattr(blk, "ls_1"):
            return False
    return True


def _heads(t: torch.Tensor, h: int) -> torch.Tensor:
    n, length, w = t.shape
    return t.view(n, length, h, w // h).transpose(1, 2)


def _merge(t: torch.Tensor) -> torch.Tensor:
    n, h, length, d = t.shape
    return t.transpose(1, 2).reshape(n, length, h * d)


class TextEncoder(nn.Module):
    """Prompt-aware CLIP text tower sharing (not copying) the backbone's frozen weights.

    Args:
        clip_model: an open_clip ``CLIP`` model (not ``CustomTextCLIP``).

    Raises:
        TypeError: the model has no ``transformer``/``token_embedding`` text tower (e.g. an HF
            text tower); such backbones are not supported by prompt methods yet.
    """

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        if not hasattr(clip_model, "token_embedding") or not hasattr(clip_model, "transformer"):
            raise TypeError(f"{type(clip_model).__name__} has no open_clip text transformer; "
                            "prompt methods need a CLIP-style text tower")
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.register_buffer("attn_mask", clip_model.attn_mask, persistent=False)
        self.pool_type = getattr(clip_model, "text_pool_type", "argmax")
        if self.pool_type not in ("argmax", "eos"):
            raise TypeError(f"text pool type '{self.pool_type}' is not supported (needs an EOT token)")

    @property
    def dtype(self) -> torch.dtype:
        return self.positional_embedding.dtype

    def forward(self, prompts: torch.Tensor, eot_idx: torch.Tensor,
                deep_prompts: Optional[Sequence[torch.Tensor]] = None, deep_start: int = 1,
                truncate: bool = True, shared_prefix="auto",
                prefix_groups: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Encode prompt embeddings.

        Args:
            prompts: ``[N, L, D]`` token embeddings (no positional embedding yet), L <= 77.
            eot_idx: ``[N]`` position of each sequence's end-of-text token.
            deep_prompts: optional per-layer replacements (see module doc).
            deep_start: first position the deep prompts replace (1 = right after SOS).
            truncate: cut sequences after the longest EOT (needs the causal mask).
            shared_prefix: compute a prefix shared by all sequences (or by each group of
                ``prefix_groups``) once (see module doc); used when it saves at least a tenth
                of the tokens and every deep prompt's rows inside the prefix are shared (an
                ``[n, D]`` tensor, or ``[N, n, D]`` rows equal within each group; rows past the
                prefix may differ per sequence, e.g. CILMP's class prompts).
                ``"auto"`` (default): only when no gradient flows into the prompts (inference,
                constant prompts), because value-equal rows of *different* parameters must each
                get their own gradient; ``True``: the caller guarantees the equal leading rows
                are one tensor (a unified context expanded over classes, or per image for
                CoCoOp), so gradients flow correctly through the shared pass; ``False``: never.
            prefix_groups: ``[N]`` group ids of sequences that share a prefix (e.g. the image of
                each CoCoOp prompt); ``None``: all sequences.

        Returns:
            ``[N, E]`` unnormalised text features (E = 512 for ViT-B/16).
        """
        n, length, _ = prompts.shape
        if truncate and self.attn_mask is not None:
            length = int(eot_idx.max().item()) + 1
            prompts = prompts[:, :length]
        if shared_prefix == "auto":
            trainable = [t for t in [prompts, *(deep_prompts or [])] if t is not None and t.requires_grad]
            shared_prefix = not (torch.is_grad_enabled() and trainable)
        if shared_prefix and self.attn_mask is not None and n > 1:
            out = self._try_shared_prefix(prompts, eot_idx, deep_prompts, deep_start, prefix_groups)
            if out is not None:
                return out
        x = prompts + self.positional_embedding[:length].to(prompts.dtype)
        mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
        blocks = self.transformer.resblocks
        batch_first = getattr(self.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        deep = list(deep_prompts or [])
        for i, block in enumerate(blocks):
            if 1 <= i <= len(deep) and deep[i - 1] is not None:
                x = self._replace(x, deep[i - 1], deep_start, batch_first)
            x = block(x, attn_mask=mask)
        if not batch_first:
            x = x.transpose(0, 1)
        x = self.ln_final(x)
        return self._project(x[torch.arange(n, device=x.device), eot_idx])

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., W]`` -> ``[..., E]`` through ``text_projection`` (a matrix or ``nn.Linear``)."""
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection

    def _try_shared_prefix(self, prompts, eot_idx, deep_prompts, deep_start, groups) -> Optional[torch.Tensor]:
        """The shared-prefix pass, or ``None`` when it does not apply or would not pay."""
        n, length, _ = prompts.shape
        blocks = self.transformer.resblocks
        p_len = shared_prefix_length(prompts, groups)
        p_len = min(p_len, int(eot_idx.min().item()))  # every EOT feature comes from the per-sequence part
        groups, first = _group_first(torch.zeros(n, dtype=torch.long, device=prompts.device)
                                     if groups is None else groups)
        g = len(first)
        if p_len < 1 or (n - g) * p_len < 0.1 * n * length or not _blocks_splittable(blocks):
            return None
        # deep prompts: the rows inside the prefix must be shared (one [n, D] tensor, or rows of a
        # per-sequence [N, n, D] tensor equal within each group); rows past it go to each sequence
        plan = []
        for d in list(deep_prompts or []):
            if d is None:
                plan.append(None)
                continue
            m = d.shape[-2]
            k = min(m, max(0, p_len - deep_start))  # rows that fall inside the prefix
            if d.dim() == 2:
                pre = d[:k].unsqueeze(0).expand(g, -1, -1) if k else None
                suf = d[k:].unsqueeze(0).expand(n, -1, -1) if k < m else None
            else:
                if k and not torch.equal(d[:, :k], d[first[groups], :k]):
                    return None
                pre = d[first, :k] if k else None
                suf = d[:, k:] if k < m else None
            plan.append((pre, suf, k, m))
        pos = self.positional_embedding[:length].to(prompts.dtype)
        p = prompts[first, :p_len] + pos[:p_len]  # [G, P, D]
        s = prompts[:, p_len:] + pos[p_len:]  # [N, L - P, D]
        j = torch.arange(length - p_len, device=prompts.device)
        t = torch.arange(length, device=prompts.device)
        keep = (t[None, :] < p_len) | (t[None, :] - p_len <= j[:, None])  # [L - P, L]: prefix + causal
        for i, blk in enumerate(blocks):
            if 1 <= i <= len(plan) and plan[i - 1] is not None:
                pre, suf, k, m = plan[i - 1]
                if pre is not None:
                    p = torch.cat([p[:, :deep_start], pre.to(p.dtype), p[:, deep_start + k:]], dim=1)
                if suf is not None:
                    a0 = max(deep_start, p_len) - p_len
                    s = torch.cat([s[:, :a0], suf.to(s.dtype), s[:, a0 + m - k:]], dim=1)
            a = blk.attn
            h = a.num_heads
            w, b = a.in_proj_weight, a.in_proj_bias
            qp, kp, vp = (_heads(z, h) for z in F.linear(blk.ln_1(p), w, b).chunk(3, dim=-1))
            qs, ks, vs = (_heads(z, h) for z in F.linear(blk.ln_1(s), w, b).chunk(3, dim=-1))
            op = F.scaled_dot_product_attention(qp, kp, vp, is_causal=True)
            k_all = torch.cat([kp[groups], ks], dim=2)
            v_all = torch.cat([vp[groups], vs], dim=2)
            os_ = F.scaled_dot_product_attention(qs, k_all, v_all, attn_mask=keep)
            p = p + blk.ls_1(a.out_proj(_merge(op)))
            p = p + blk.ls_2(blk.mlp(blk.ln_2(p)))
            s = s + blk.ls_1(a.out_proj(_merge(os_)))
            s = s + blk.ls_2(blk.mlp(blk.ln_2(s)))
        x = self.ln_final(s[torch.arange(n, device=s.device), eot_idx - p_len])
        return self._project(x)

    @staticmethod
    def _replace(x: torch.Tensor, ctx: torch.Tensor, start: int, batch_first: bool) -> torch.Tensor:
        if not batch_first:
            x = x.transpose(0, 1)
        n_tok = ctx.shape[-2]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :start], ctx.to(x.dtype), x[:, start + n_tok:]], dim=1)
        return x if batch_first else x.transpose(0, 1)

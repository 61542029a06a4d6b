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

Source: ``open_clip/model.py:CLIP.encode_text``; ``KaiyangZhou/CoOp:trainers/coop.py:TextEncoder``.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn


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
                truncate: bool = True) -> torch.Tensor:
        """Encode prompt embeddings.

        Args:
            prompts: ``[N, L, D]`` token embeddings (no positional embedding yet), L <= 77.
            eot_idx: ``[N]`` position of each sequence's end-of-text token.
            deep_prompts: optional per-layer replacements (see module doc).
            deep_start: first position the deep prompts replace (1 = right after SOS).
            truncate: cut sequences after the longest EOT (needs the causal mask).

        Returns:
            ``[N, E]`` unnormalised text features (E = 512 for ViT-B/16).
        """
        n, length, _ = prompts.shape
        if truncate and self.attn_mask is not None:
            length = int(eot_idx.max().item()) + 1
            prompts = prompts[:, :length]
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
        x = x[torch.arange(n, device=x.device), eot_idx]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x @ self.text_projection

    @staticmethod
    def _replace(x: torch.Tensor, ctx: torch.Tensor, start: int, batch_first: bool) -> torch.Tensor:
        if not batch_first:
            x = x.transpose(0, 1)
        n_tok = ctx.shape[-2]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :start], ctx.to(x.dtype), x[:, start + n_tok:]], dim=1)
        return x if batch_first else x.transpose(0, 1)

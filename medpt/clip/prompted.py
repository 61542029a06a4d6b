"""Prompt-aware CLIP towers: the one implementation every deep-prompt method uses.

Both encoders *share* (never copy) the frozen open_clip weights of a ``CLIP`` model and reproduce
``CLIP.encode_text`` / ``CLIP.encode_image`` exactly when no prompt is given. Everything a method
learns (context vectors, deep prompts, coupling functions, LayerNorm copies) lives in the method's
own modules or in the encoder's ``ln_overrides``; the backbone is never modified.

API overview (``W`` = tower width: 512 text / 768 vision for ViT-B/16; ``E`` = joint dim 512)

:class:`PromptedTextEncoder` (extends :class:`medpt.clip.TextEncoder`)
    * ``forward(prompts [N, L, D], eot_idx [N], deep_prompts=None, deep_start=1)`` -> ``[N, E]``:
      shallow prompts are spliced into ``prompts`` by the caller (e.g. :class:`PromptLearner`);
      ``deep_prompts[i]`` (``[n, D]`` or ``[N, n, D]``, or ``None`` to carry the previous tokens)
      replaces positions ``deep_start .. deep_start + n`` before block ``i + 1`` (MaPLe / IVLP /
      PromptSRC layout). ``deep_prompts = [None]*k`` or ``None`` is plain CLIP.
    * ``forward_read_only(prompts, eot_idx, ro_prompts [K, D])`` -> ``(eot [N, E], ro [N, K, E])``:
      RPO's read-only prompts, placed right after each sequence's EOT without positional
      embedding, under a per-sequence mask that hides every position after EOT from every query.
      By default (``split=True``) it runs as two streams (:func:`read_only_blocks`), which is
      the same computation with the backward through the prompts only.
    * ``encode_ids(ids [N, 77])`` -> ``[N, E]``: frozen features of tokenised text (teacher banks).

:class:`PromptedVisionEncoder`
    * ``forward(images [B, 3, H, W], prompts=None, deep_prompts=None, read_only=False,
      output="cls")``. ``prompts`` (``[n, W]`` shared, or ``[B', n, W]`` per sample with ``B'`` a
      multiple of ``B``: the image tokens are then repeated ``B'/B`` times, copy-major, index
      ``m * B + b``, which is how PLOT++ encodes M prompt copies) are appended after the patch
      tokens (after the positional embedding, which prompts do not get) and **before** ``ln_pre``
      (MaPLe / PromptSRC / RPO / PLOT++ all do this). ``deep_prompts[i]`` replaces the last ``n``
      tokens before block ``i + 1``. ``read_only=True`` masks the prompt columns for every query
      (RPO); without deep prompts it runs as two streams by default (:func:`read_only_blocks`). ``output``: ``"cls"`` -> ``[B', E]`` (``ln_post`` on token 0, ``proj``), ``"prompts"``
      -> ``[B', n, E]`` (``ln_post`` + ``proj`` on each prompt output), ``"both"`` -> tuple,
      ``"tokens"`` -> ``[B', 1 + P, E]`` (``ln_post`` + ``proj`` on the class token and each of the
      ``P`` patch tokens, prompts excluded: XCoOp's local features).
    * ``trainable_ln=("ln_1", "ln_2")`` makes trainable copies of those LayerNorms in every block
      (``self.ln_overrides``), initialised from the pretrained ones (LASP, XCoOp); ``ln_pre`` and
      ``ln_post`` may be listed too.

:class:`PromptCoupler`
    MaPLe-style coupling functions: one ``nn.Linear(D_text, W_vision)`` per prompt layer mapping
    the text prompts of that layer to the vision prompts (``forward(list) -> list``).

:func:`make_deep_prompts`
    ``nn.ParameterList`` of ``depth - 1`` tensors ``[n, dim]`` drawn from N(0, std^2): the deep
    prompts of blocks ``1 .. depth - 1`` (depth D = input prompts + D - 1 deep layers).

:func:`read_only_text_mask`, :func:`read_only_vision_mask`
    RPO's additive attention masks (``0`` / ``-inf``), exposed for tests and reuse.

:func:`read_only_blocks`
    RPO's read-only pass factorised: original tokens without gradient, prompts as extra queries
    against their keys/values (the same values as the masked pass; backward through K tokens).

Mixed precision: every tensor here is fp32; under ``torch.autocast`` (bf16 on CUDA, via the
trainer's ``self.autocast()``) prompts are cast to the activations' dtype when inserted. The
official repos instead cast CLIP and the prompts to fp16 (``PREC: fp16``).

Sources: ``open_clip/transformer.py`` (``VisionTransformer._embeds/_pool``,
``ResidualAttentionBlock``), ``open_clip/model.py:CLIP.encode_text``;
``muzairkhattak/PromptSRC:clip/model.py`` (IVLP deep prompts), ``mlvlab/RPO:trainers/rpo.py``
(masks), ``muzairkhattak/multimodal-prompt-learning:trainers/maple.py`` (coupling),
``CHENGY12/PLOT:plot-pp/clip/model.py`` (prompt copies).
"""
from __future__ import annotations

import copy
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .text_encoder import TextEncoder, _blocks_splittable, _heads, _merge

__all__ = ["PromptedTextEncoder", "PromptedVisionEncoder", "PromptCoupler", "make_deep_prompts",
           "read_only_text_mask", "read_only_vision_mask", "read_only_blocks"]


def make_deep_prompts(depth: int, n_tokens: int, dim: int, std: float = 0.02) -> nn.ParameterList:
    """Deep prompts of blocks ``1 .. depth - 1``, each ``[n_tokens, dim]`` ~ N(0, std^2).

    Raises:
        ValueError: ``depth < 1`` or ``n_tokens < 1``.
    """
    if depth < 1 or n_tokens < 1:
        raise ValueError(f"prompt depth and token count must be >= 1, got depth={depth}, n={n_tokens}")
    out = nn.ParameterList()
    for _ in range(depth - 1):
        p = torch.empty(n_tokens, dim)
        nn.init.normal_(p, std=std)
        out.append(nn.Parameter(p))
    return out


def read_only_text_mask(eot_idx: torch.Tensor, length: int, n_heads: int) -> torch.Tensor:
    """RPO's text mask: causal, plus every key after each sequence's EOT hidden from every query.

    Args:
        eot_idx: ``[N]`` EOT positions.
        length: sequence length L.
        n_heads: attention heads (the mask is repeated per head, batch-major).

    Returns:
        ``[N * n_heads, L, L]`` additive float mask (0 or -inf). Source: ``mlvlab/RPO:trainers/rpo.py``
        (``define_mask``), where the head count was hard-coded to 8.
    """
    pos = torch.arange(length, device=eot_idx.device)
    causal = pos[None, :] > pos[:, None]  # [L, L] key after query
    after = pos[None, None, :] > eot_idx[:, None, None]  # [N, 1, L] key after EOT
    hidden = causal[None] | after
    mask = torch.zeros(hidden.shape, dtype=torch.float32, device=eot_idx.device)
    mask.masked_fill_(hidden, float("-inf"))
    return mask.repeat_interleave(n_heads, dim=0)


def read_only_vision_mask(n_tokens: int, n_prompts: int, device=None) -> torch.Tensor:
    """RPO's vision mask ``[L, L]``: the last ``n_prompts`` key columns are -inf for every query."""
    mask = torch.zeros(n_tokens, n_tokens, device=device)
    if n_prompts:
        mask[:, n_tokens - n_prompts:] = float("-inf")
    return mask


def _any_grad(blocks: Sequence[nn.Module]) -> bool:
    """Whether any weight of the blocks is trained (then the original tokens' stream keeps its
    graph too: the two-stream pass stays exact, it only saves less)."""
    return any(p.requires_grad for blk in blocks for p in blk.parameters())


def read_only_blocks(blocks: Sequence[nn.Module], x: torch.Tensor, p: torch.Tensor, causal: bool = False,
                     key_keep: Optional[torch.Tensor] = None, need_tokens: bool = True
                     ) -> Tuple[Optional[torch.Tensor], torch.Tensor]:
    """Run transformer blocks with read-only prompts as two streams (RPO, exact).

    Under RPO's masks the original tokens never attend to a prompt and a prompt attends only to
    the original tokens (not to itself or other prompts). So the original tokens follow the
    frozen CLIP path, which needs no gradient for prompt learning, and each prompt token is a
    query against the original tokens' keys and values of the same block. This computes the same
    values as the masked joint pass (:func:`read_only_text_mask` / :func:`read_only_vision_mask`)
    but runs the original tokens under ``no_grad`` (unless ``x`` or a block weight requires a gradient) and
    back-propagates only through the ``K`` prompt tokens: the backward through the tower shrinks
    from ``T + K`` tokens to ``K``.

    Args:
        blocks: open_clip ``ResidualAttentionBlock``s (packed ``in_proj``, no attention dropout).
        x: ``[N, T, W]`` original tokens, batch-first, after the embedding (and ``ln_pre``).
        p: ``[N, K, W]`` prompt tokens at the same point.
        causal: causal self-attention among the original tokens (text tower).
        key_keep: ``[N, 1, 1, T]`` bool, keys a prompt may read (text: positions ``<= EOT``);
            ``None``: all ``T``.
        need_tokens: also finish the last block for the original tokens (their output is
            returned); ``False`` stops after their keys/values of the last block and returns
            ``None`` for them.

    Returns:
        ``(x_out [N, T, W] or None, p_out [N, K, W])``, before ``ln_post`` / ``ln_final``.

    Raises:
        TypeError: blocks this function cannot split (see :func:`medpt.clip.text_encoder._blocks_splittable`).

    Source: ``mlvlab/RPO:trainers/rpo.py`` (the masks this factorises) and open_clip's
    ``ResidualAttentionBlock`` / ``nn.MultiheadAttention`` (the same projections and SDPA).
    """
    if not _blocks_splittable(blocks):
        raise TypeError("read-only prompts can only be split over open_clip ResidualAttentionBlocks "
                        "with packed nn.MultiheadAttention and no attention dropout")
    if not torch.is_grad_enabled():
        # a view of a trainable prompt made under no_grad still says requires_grad but has no
        # grad_fn, which module hooks (e.g. torch's FLOP counter's module tracker) reject
        x, p = x.detach(), p.detach()
    width = x.shape[-1]
    # the original tokens need a graph only if something upstream or a block weight is trained
    orig_grad = torch.is_grad_enabled() and (x.requires_grad or _any_grad(blocks))
    last = len(blocks) - 1
    for i, blk in enumerate(blocks):
        a = blk.attn
        h = a.num_heads
        w, b = a.in_proj_weight, a.in_proj_bias
        finish = i < last or need_tokens
        with torch.set_grad_enabled(orig_grad):
            hx = blk.ln_1(x)
            if finish:
                q, k, v = F.linear(hx, w, b).chunk(3, dim=-1)
            else:
                k, v = F.linear(hx, w[width:], None if b is None else b[width:]).chunk(2, dim=-1)
            k, v = _heads(k, h), _heads(v, h)
            if finish:
                o = F.scaled_dot_product_attention(_heads(q, h), k, v, is_causal=causal)
                x = x + blk.ls_1(a.out_proj(_merge(o)))
                x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
        qp = F.linear(blk.ln_1(p), w[:width], None if b is None else b[:width])
        op = F.scaled_dot_product_attention(_heads(qp, h), k.to(qp.dtype), v.to(qp.dtype), attn_mask=key_keep)
        p = p + blk.ls_1(a.out_proj(_merge(op)))
        p = p + blk.ls_2(blk.mlp(blk.ln_2(p)))
    return (x if need_tokens else None), p


def _block_forward(block: nn.Module, x: torch.Tensor, mask: Optional[torch.Tensor],
                   ln_1: Optional[nn.Module], ln_2: Optional[nn.Module]) -> torch.Tensor:
    """open_clip ``ResidualAttentionBlock.forward`` with optional replacement LayerNorms."""
    if ln_1 is None and ln_2 is None:
        return block(x, attn_mask=mask)
    if not hasattr(block, "attention") or not hasattr(block, "ls_1") or hasattr(block, "ln_attn"):
        raise TypeError(f"trainable LayerNorms need open_clip's ResidualAttentionBlock, got {type(block).__name__}")
    ln_1 = ln_1 if ln_1 is not None else block.ln_1
    ln_2 = ln_2 if ln_2 is not None else block.ln_2
    x = x + block.ls_1(block.attention(q_x=ln_1(x), attn_mask=mask))
    return x + block.ls_2(block.mlp(ln_2(x)))


class PromptedTextEncoder(TextEncoder):
    """Text tower with shallow/deep prompts (inherited) and RPO's read-only prompts.

    Args:
        clip_model: an open_clip ``CLIP``. Raises ``TypeError`` for towers without token embedding.
    """

    def __init__(self, clip_model: nn.Module):
        super().__init__(clip_model)
        self.token_embedding = clip_model.token_embedding
        self.n_heads = self.transformer.resblocks[0].attn.num_heads

    @torch.no_grad()
    def encode_ids(self, ids: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """``[N, 77]`` token ids -> ``[N, E]`` unnormalised frozen features (no gradient), chunked."""
        out = []
        for i in range(0, ids.shape[0], chunk):
            t = ids[i:i + chunk]
            out.append(self(self.token_embedding(t), t.argmax(dim=-1)).float())
        return torch.cat(out)

    def forward_read_only(self, prompts: torch.Tensor, eot_idx: torch.Tensor, ro_prompts: torch.Tensor,
                          truncate: bool = True, split: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
        """RPO text pass.

        Args:
            prompts: ``[N, L, D]`` token embeddings (no positional embedding yet).
            eot_idx: ``[N]`` EOT positions.
            ro_prompts: ``[K, D]`` read-only prompts, written at ``eot + 1 .. eot + K`` over the
                padding, without positional embedding.
            truncate: cut sequences to ``max(eot) + 1 + K`` tokens (exact: later keys are masked).
            split: run the original tokens and the prompts as two streams
                (:func:`read_only_blocks`: the original tokens without gradient, truncated at
                ``max(eot) + 1``); ``False`` runs the masked joint pass of the official code.
                Both give the same values (up to float summation order).

        Returns:
            ``([N, E] EOT features, [N, K, E] prompt features)``, unnormalised.

        Raises:
            ValueError: a sequence has fewer than K padding slots after its EOT.
        """
        n, length, _ = prompts.shape
        k = ro_prompts.shape[0]
        need = int(eot_idx.max().item()) + 1 + k
        if need > length:
            raise ValueError(f"{k} read-only prompts do not fit after EOT at {int(eot_idx.max())} in a "
                             f"{length}-token context; shorten the template/class names or lower K")
        if split and _blocks_splittable(self.transformer.resblocks):
            t = int(eot_idx.max().item()) + 1
            x = prompts[:, :t] + self.positional_embedding[:t].to(prompts.dtype)
            p = ro_prompts.to(x.dtype)[None].expand(n, -1, -1)
            keep = (torch.arange(t, device=x.device)[None, :] <= eot_idx[:, None])[:, None, None, :]
            x, p = read_only_blocks(self.transformer.resblocks, x, p, causal=True, key_keep=keep)
            eot = self._project(self.ln_final(x[torch.arange(n, device=x.device), eot_idx]))
            return eot, self._project(self.ln_final(p))
        if truncate:
            length = need
            prompts = prompts[:, :length]
        x = prompts + self.positional_embedding[:length].to(prompts.dtype)
        rows = torch.arange(n, device=x.device)[:, None]
        cols = eot_idx[:, None] + 1 + torch.arange(k, device=x.device)[None, :]  # [N, K]
        x = x.index_put((rows.expand(-1, k), cols), ro_prompts.to(x.dtype)[None].expand(n, -1, -1))
        mask = read_only_text_mask(eot_idx, length, self.n_heads).to(x.device)
        batch_first = getattr(self.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for block in self.transformer.resblocks:
            x = block(x, attn_mask=mask)
        if not batch_first:
            x = x.transpose(0, 1)
        x = self.ln_final(x)
        eot = self._project(x[torch.arange(n, device=x.device), eot_idx])
        ro = self._project(x[rows, cols])
        return eot, ro


class PromptedVisionEncoder(nn.Module):
    """open_clip ``VisionTransformer`` with appended (shallow/deep, read-only) prompts.

    Args:
        clip_model: an open_clip ``CLIP`` (its ``visual`` must be a token-pooled
            ``VisionTransformer`` without attentional pooler).
        trainable_ln: names of per-block LayerNorms (``"ln_1"``, ``"ln_2"``) and/or ``"ln_pre"``,
            ``"ln_post"`` to copy into trainable ``ln_overrides`` (pretrained values).

    Raises:
        TypeError: the vision tower is not a ViT with token pooling (e.g. ResNet, attn pooler).
        ValueError: unknown LayerNorm name.
    """

    def __init__(self, clip_model: nn.Module, trainable_ln: Sequence[str] = ()):
        super().__init__()
        v = clip_model.visual
        if not hasattr(v, "conv1") or not hasattr(v, "class_embedding") or getattr(v, "attn_pool", None) is not None:
            raise TypeError(f"{type(v).__name__} is not a ViT with a class token; deep visual prompts need one")
        if getattr(v, "pool_type", "tok") != "tok":
            raise TypeError(f"vision pool type '{v.pool_type}' is not supported (needs 'tok')")
        self.visual = v
        self.width = v.class_embedding.shape[-1]
        self.n_layers = len(v.transformer.resblocks)
        self.n_heads = v.transformer.resblocks[0].attn.num_heads
        self.ln_overrides = nn.ModuleDict()
        for name in trainable_ln:
            if name in ("ln_1", "ln_2"):
                for i, blk in enumerate(v.transformer.resblocks):
                    self.ln_overrides[f"{i}_{name}"] = self._trainable_copy(getattr(blk, name))
            elif name in ("ln_pre", "ln_post"):
                self.ln_overrides[name] = self._trainable_copy(getattr(v, name))
            else:
                raise ValueError(f"trainable LayerNorm '{name}' is not one of ln_1, ln_2, ln_pre, ln_post")

    @staticmethod
    def _trainable_copy(m: nn.Module) -> nn.Module:
        c = copy.deepcopy(m)
        for p in c.parameters():
            p.requires_grad_(True)
        return c

    def _ln(self, name: str, default: nn.Module) -> nn.Module:
        return self.ln_overrides[name] if name in self.ln_overrides else default

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, 1 + P, W]``: patches + class token + positional embedding
        (+ patch dropout), before ``ln_pre`` (open_clip ``VisionTransformer._embeds``)."""
        v = self.visual
        x = v.conv1(images)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        return v.patch_dropout(x)

    @staticmethod
    def _expand(p: torch.Tensor, rows: int) -> torch.Tensor:
        return p.unsqueeze(0).expand(rows, -1, -1) if p.dim() == 2 else p

    def forward(self, images: torch.Tensor, prompts: Optional[torch.Tensor] = None,
                deep_prompts: Optional[Sequence[Optional[torch.Tensor]]] = None, read_only: bool = False,
                output: str = "cls", split: bool = True) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        """Encode images with prompts (see the module docstring for the layout).

        With ``read_only=True``, no deep prompts and no LayerNorm overrides, ``split`` (default)
        runs the image tokens and the prompts as two streams (:func:`read_only_blocks`): the image
        tokens without gradient, the backward only through the prompt tokens. ``split=False``
        runs the masked joint pass of the official RPO code; both give the same values.

        Returns:
            ``[B', E]`` (``cls``), ``[B', n, E]`` (``prompts``), both, or ``[B', 1 + P, E]``
            (``tokens``); unnormalised.

        Raises:
            ValueError: bad ``output``; deep prompts without input prompts or with another token
                count; more deep layers than blocks; a per-sample batch not a multiple of B.
        """
        if output not in ("cls", "prompts", "both", "tokens"):
            raise ValueError(f"output must be 'cls', 'prompts', 'both' or 'tokens', got '{output}'")
        v = self.visual
        x = self.embed(images)
        b = x.shape[0]
        n = 0
        if prompts is not None:
            n = prompts.shape[-2]
            if prompts.dim() == 3 and prompts.shape[0] != b:
                if prompts.shape[0] % b:
                    raise ValueError(f"{prompts.shape[0]} prompt rows are not a multiple of the batch {b}")
                x = x.repeat(prompts.shape[0] // b, 1, 1)
            x = torch.cat([x, self._expand(prompts, x.shape[0]).to(x.dtype)], dim=1)
        deep = list(deep_prompts or [])
        if deep and n == 0 and any(d is not None for d in deep):
            raise ValueError("deep visual prompts need input prompts (prompts=...) with the same token count")
        if len(deep) > self.n_layers - 1:
            raise ValueError(f"{len(deep)} deep prompt layers for a {self.n_layers}-block tower")
        if (split and read_only and n and not any(d is not None for d in deep) and not len(self.ln_overrides)
                and output != "tokens" and _blocks_splittable(v.transformer.resblocks)):
            return self._forward_read_only_split(x, n, output, images.requires_grad)
        x = self._ln("ln_pre", v.ln_pre)(x)
        mask = read_only_vision_mask(x.shape[1], n, x.device).to(x.dtype) if read_only and n else None
        batch_first = getattr(v.transformer, "batch_first", True)
        for i, block in enumerate(v.transformer.resblocks):
            if 1 <= i <= len(deep) and deep[i - 1] is not None:
                d = deep[i - 1]
                if d.shape[-2] != n:
                    raise ValueError(f"deep prompts of block {i} have {d.shape[-2]} tokens, input prompts {n}")
                x = torch.cat([x[:, :-n], self._expand(d, x.shape[0]).to(x.dtype)], dim=1)
            if not batch_first:
                x = x.transpose(0, 1)
            x = _block_forward(block, x, mask, self.ln_overrides[f"{i}_ln_1"] if f"{i}_ln_1" in self.ln_overrides
                               else None, self.ln_overrides[f"{i}_ln_2"] if f"{i}_ln_2" in self.ln_overrides else None)
            if not batch_first:
                x = x.transpose(0, 1)
        ln_post = self._ln("ln_post", v.ln_post)
        if output == "tokens":
            return self._project(ln_post(x[:, :x.shape[1] - n]))
        cls = prm = None
        if output in ("cls", "both"):
            cls = self._project(ln_post(x[:, 0]))
        if output in ("prompts", "both"):
            if n == 0:
                raise ValueError("output='prompts' needs prompts")
            prm = self._project(ln_post(x[:, -n:]))
        return cls if output == "cls" else prm if output == "prompts" else (cls, prm)

    def _forward_read_only_split(self, x: torch.Tensor, n: int, output: str, images_grad: bool):
        """``x`` ``[B', T + n, W]`` embedded tokens with the ``n`` prompts last -> ``forward``'s output."""
        v = self.visual
        tokens = x[:, :-n]
        frozen = not any(q.requires_grad for q in (v.conv1.weight, v.class_embedding, v.positional_embedding,
                                                   *v.ln_pre.parameters()))
        if frozen and not images_grad:
            tokens = tokens.detach()  # the image tokens never see a prompt: no gradient flows there
        # ln_pre is per token, so applying it to the two parts separately is the same
        tokens, prm = read_only_blocks(v.transformer.resblocks, v.ln_pre(tokens), v.ln_pre(x[:, -n:]),
                                       need_tokens=output in ("cls", "both"))
        cls = None if tokens is None else self._project(v.ln_post(tokens[:, 0]))
        prm = self._project(v.ln_post(prm))
        return cls if output == "cls" else prm if output == "prompts" else (cls, prm)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        proj = self.visual.proj
        return x if proj is None else x @ proj.to(x.dtype)


class PromptCoupler(nn.Module):
    """MaPLe coupling functions: text prompts of layer ``l`` -> vision prompts of layer ``l``.

    Args:
        depth: number of prompt layers (input layer + ``depth - 1`` deep layers).
        text_dim: text width D (512 for ViT-B/16).
        vision_dim: vision width W (768).

    Source: ``muzairkhattak/multimodal-prompt-learning:trainers/maple.py`` (``proj`` for the
    input layer, ``compound_prompt_projections`` for the deep layers; each ``nn.Linear`` with
    bias, 393,984 parameters at ViT-B/16 widths).
    """

    def __init__(self, depth: int, text_dim: int, vision_dim: int):
        super().__init__()
        if depth < 1:
            raise ValueError(f"coupling depth must be >= 1, got {depth}")
        self.layers = nn.ModuleList([nn.Linear(text_dim, vision_dim) for _ in range(depth)])

    def forward(self, text_prompts: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """``depth`` tensors ``[n, D]`` -> ``depth`` tensors ``[n, W]``.

        Raises:
            ValueError: the number of tensors differs from ``depth``.
        """
        if len(text_prompts) != len(self.layers):
            raise ValueError(f"{len(text_prompts)} text prompt layers for {len(self.layers)} coupling functions")
        return [f(t) for f, t in zip(self.layers, text_prompts)]

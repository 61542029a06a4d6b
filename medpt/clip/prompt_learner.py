"""CoOp's prompt layout: learnable context vectors around class-name tokens.

Source: ``KaiyangZhou/CoOp:trainers/coop.py`` (``PromptLearner``), IJCV 2022 §3.

Layout of class ``c``'s sequence (77 tokens for CLIP)::

    end    : [SOS] v_1 .. v_M  name_c  .  [EOT] pad...
    middle : [SOS] v_1 .. v_{M/2}  name_c  v_{M/2+1} .. v_M  .  [EOT] pad...
    front  : [SOS] name_c  v_1 .. v_M  .  [EOT] pad...

The SOS embedding is the frozen buffer ``token_prefix`` ``[C, 1, D]``; class name, ``.``, EOT and
padding embeddings are ``token_suffix`` ``[C, 77 - 1 - M, D]``. The trainable parameter is
``ctx``: ``[M, D]`` (unified) or ``[C, M, D]`` (class-specific, CSC).

Initialisation: from a phrase (``CTX_INIT``, e.g. ``"a photo of a"``), the context is the
phrase's token embeddings and M is the phrase's token count; otherwise N(0, 0.02^2).

Deliberate differences from the official code (documented in docs/methods.md):

* M from a phrase is its **BPE token count**; the official code counts words
  (``len(ctx_init.split(" "))``). They agree whenever every word is one token (all official
  configs); ours stays exact when a word splits into several tokens.
* CSC with a phrase repeats the phrase's embeddings for every class; the official code
  silently ignores CSC when CTX_INIT is set.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
from torch import nn


def clean_classname(name: str) -> str:
    """Class name as it goes into a prompt: ``_`` becomes a space (CoOp's convention)."""
    return name.replace("_", " ")


class PromptLearner(nn.Module):
    """CoOp context vectors for ``C`` classes.

    Args:
        clip_model: open_clip ``CLIP`` (its ``token_embedding`` gives the frozen embeddings).
        tokenizer: open_clip tokenizer, ``list[str] -> LongTensor [N, 77]``.
        classnames: ``C`` class names (prompt strings).
        n_ctx: number of context vectors M (ignored when ``ctx_init`` is given).
        ctx_init: initialisation phrase, or ``""`` for random.
        csc: class-specific context.
        class_token_position: ``"end"``, ``"middle"`` or ``"front"``.

    Raises:
        ValueError: unknown class position, ``n_ctx < 1``, or a prompt longer than the context.
    """

    def __init__(self, clip_model: nn.Module, tokenizer, classnames: Sequence[str], n_ctx: int = 16,
                 ctx_init: str = "", csc: bool = False, class_token_position: str = "end",
                 init_std: float = 0.02):
        super().__init__()
        if class_token_position not in ("end", "middle", "front"):
            raise ValueError(f"CLASS_TOKEN_POSITION must be end, middle or front, got '{class_token_position}'")
        emb = clip_model.token_embedding
        dim = emb.weight.shape[1]
        n_cls = len(classnames)
        ctx_init = (ctx_init or "").replace("_", " ").strip()
        if ctx_init:
            tok = tokenizer([ctx_init])
            eot = int(tok.argmax(dim=-1)[0])
            n_ctx = eot - 1
            with torch.no_grad():
                init = emb(tok)[0, 1:1 + n_ctx].clone().float()
            ctx = init.unsqueeze(0).repeat(n_cls, 1, 1) if csc else init
            placeholder = ctx_init
        else:
            if n_ctx < 1:
                raise ValueError(f"N_CTX must be >= 1, got {n_ctx}")
            shape = (n_cls, n_ctx, dim) if csc else (n_ctx, dim)
            ctx = torch.empty(shape)
            nn.init.normal_(ctx, std=init_std)
            placeholder = " ".join(["X"] * n_ctx)
        self.ctx = nn.Parameter(ctx)
        self.n_ctx = n_ctx
        self.n_cls = n_cls
        self.csc = csc
        self.class_token_position = class_token_position
        self.ctx_init = ctx_init

        names = [clean_classname(c) for c in classnames]
        self.name_lens: List[int] = [int(tokenizer([n]).argmax(dim=-1)[0]) - 1 for n in names]
        prompts = [f"{placeholder} {n}." for n in names]
        tokenized = tokenizer(prompts)
        eot = tokenized.argmax(dim=-1)
        if bool((tokenized[:, -1] != 0).any()):
            raise ValueError(f"A prompt is longer than the text context ({tokenized.shape[1]} tokens): {prompts}")
        with torch.no_grad():
            embedding = emb(tokenized).float()
        self.register_buffer("token_prefix", embedding[:, :1, :].clone())
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:, :].clone())
        self.register_buffer("tokenized_prompts", tokenized)
        self.register_buffer("eot_idx", eot)
        self.prompt_texts = prompts

    @property
    def shares_prefix(self) -> bool:
        """Whether every class prompt's context is one tensor (unified context, ``csc`` off): the
        prompts' identical leading rows are then structurally shared, so the text tower may
        compute them once with gradients (``TextEncoder(..., shared_prefix=True)``)."""
        return not self.csc

    def forward(self) -> torch.Tensor:
        """Assemble the prompt embeddings.

        Returns:
            ``[C, 77, D]`` embeddings; with ``eot_idx`` ready for :class:`TextEncoder`.
        """
        ctx = self.ctx
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        prefix, suffix = self.token_prefix, self.token_suffix
        if self.class_token_position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        out = []
        half = self.n_ctx // 2
        for i, n in enumerate(self.name_lens):
            name = suffix[i:i + 1, :n]
            rest = suffix[i:i + 1, n:]
            c = ctx[i:i + 1]
            if self.class_token_position == "middle":
                out.append(torch.cat([prefix[i:i + 1], c[:, :half], name, c[:, half:], rest], dim=1))
            else:
                out.append(torch.cat([prefix[i:i + 1], name, c, rest], dim=1))
        return torch.cat(out, dim=0)

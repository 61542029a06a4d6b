"""ViP: visual-symptom-guided prompt learning (Fang et al., MICCAI 2024).

Source: ``xiaofang007/ViP:trainers/ViP.py``, ``configs/trainers/ViP/vit_b16_ep50.yaml``,
``descriptors/descriptors_*.json``; docs/methods.md "Methods B" §4.

Model: for class ``k`` with visual-symptom descriptors ``d_1..d_m`` (``vip_descriptors`` of the
dataset's knowledge file, :mod:`medpt.knowledge`), prompts ``"X X X X d_j."`` ->
``[SOS][ctx(4)][d_j][.][EOS]`` give unnormalised text features ``T_k`` ``[m, E]`` (the class name
is not in the prompt). MergePrompt (shared across classes): ``q = W_q z_k``, ``K = W_k T_k``,
``a = softmax(q K^T / sqrt(E))``, ``g_k = z_k + a T_k`` with the learnable class token ``z_k``;
``logits[:, k] = exp(logit_scale) * f . normalize(g_k)``; loss cross-entropy.

Trainable parameters (what the optimiser really trains), ViT-B/16:
``ctx`` 4 x 512 + ``learnable_token`` C x 512 + ``W_q``, ``W_k`` 2 x 512 x 512 (no bias)
= 527,872 for C = 3 and 529,920 for C = 7.

The 41.48M figure: the official freeze rule keeps every parameter whose name contains "attn"
flagged ``requires_grad``, which also matches all attention weights of both CLIP towers
(text 12 x 1,050,624 + vision 12 x 2,362,368 = 40,955,904). Those are never given to the optimiser,
so they never change; they only make backward run through both towers. Flagged total for C = 7:
40,955,904 + 529,920 = 41,485,824 (the "41.5M" of the CILMP paper). :func:`official_flagged_params`
reproduces that figure; here CLIP stays truly frozen (``requires_grad=False``).

Deliberate differences from the official code:

* CLIP frozen for real (see above): same training, less backward work;
* the image tower is frozen and unprompted, so ViP is a
  :class:`~medpt.trainers._frozen.FrozenImageEncoderTrainer`: image features come from the shared
  feature cache where the protocol allows (test/val always; training with
  ``MODEL.FEATURE_CACHE.NUM_VIEWS`` > 0), and a training step is then one text pass (issue 9);
* descriptors come from :mod:`medpt.knowledge`; a class without descriptors gets generic
  class-name descriptors with a warning (official: KeyError); classes may have different
  descriptor counts (handled with a mask);
* only ``CLASS_TOKEN_POSITION`` "end" and unified context (the official "front" branch is broken;
  CSC is rejected);
* the attention scale is ``sqrt(E)`` of the backbone (512 for ViT-B/16, as the official constant);
* fp32 master weights (official fp16); text passes stop at the longest EOT; all descriptor
  prompts of all classes are encoded in one text pass.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from ..clip import PromptLearner, TextEncoder
from ..engine.registry import TRAINER_REGISTRY
from ..knowledge import class_knowledge
from ._frozen import FrozenClassTextCacheMixin, FrozenImageEncoderTrainer


def official_flagged_params(clip_model: nn.Module, n_cls: int, n_ctx: int = 4) -> int:
    """Parameters the official ViP flags ``requires_grad`` (its "attn" name-matching bug).

    = every CLIP parameter whose name contains "attn" + what the optimiser really trains
    (ctx ``n_ctx x D``, class tokens ``C x E``, ``W_q``/``W_k`` ``E x E``). Works on a meta-device model.
    """
    clip_attn = sum(p.numel() for n, p in clip_model.named_parameters() if "attn" in n)
    d = clip_model.token_embedding.weight.shape[1]
    e = clip_model.text_projection.shape[1]
    return int(clip_attn + n_ctx * d + n_cls * e + 2 * e * e)


class MergePrompt(nn.Module):
    """ViP's attention over a class's descriptor features.

    Args:
        dim: text feature dim E.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_normal_(self.q_proj.weight)
        nn.init.xavier_normal_(self.k_proj.weight)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, tokens: torch.Tensor, feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``tokens`` ``[C, E]``, ``feats`` ``[C, m, E]`` (unnormalised), ``mask`` ``[C, m]`` bool (True =
        real descriptor) -> ``[C, E]`` merged class features ``z + softmax(q K^T / sqrt(E)) T``."""
        q = self.q_proj(tokens)
        k = self.k_proj(feats)
        scores = torch.einsum("ce,cme->cm", q, k) * self.scale
        a = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
        return tokens + torch.einsum("cm,cme->ce", a, feats)


class ViPCLIP(nn.Module):
    """Frozen CLIP with ViP's descriptor prompts.

    Args:
        clip_model, tokenizer: the frozen backbone.
        descriptors: per class, a list of descriptor strings (label order).
        n_ctx: context vectors shared by all descriptor prompts.

    Raises:
        ValueError: a class without descriptors.
    """

    def __init__(self, clip_model: nn.Module, tokenizer, descriptors: Sequence[Sequence[str]], n_ctx: int = 4):
        super().__init__()
        for k, d in enumerate(descriptors):
            if not d:
                raise ValueError(f"ViP: class {k} has no descriptors")
        self.clip = clip_model
        flat: List[str] = [s.rstrip(".") for d in descriptors for s in d]
        owner = torch.tensor([k for k, d in enumerate(descriptors) for _ in d])
        self.learner = nn.Module()  # what the optimiser trains (plus the prompt buffers)
        self.learner.prompt_learner = PromptLearner(clip_model, tokenizer, flat, n_ctx=n_ctx)
        self.text_encoder = TextEncoder(clip_model)
        n_cls = len(descriptors)
        m = max(len(d) for d in descriptors)
        slot = torch.cat([torch.arange(len(d)) for d in descriptors])
        self.register_buffer("owner", owner, persistent=False)
        self.register_buffer("slot", slot, persistent=False)
        mask = torch.zeros(n_cls, m, dtype=torch.bool)
        mask[owner, slot] = True
        self.register_buffer("mask", mask, persistent=False)
        e = int(clip_model.text_projection.shape[1])
        self.learner.learnable_token = nn.Parameter(torch.empty(n_cls, e).normal_(std=0.02))
        self.learner.merge = MergePrompt(e)

    def class_features(self) -> torch.Tensor:
        """``[C, E]`` normalised class features (one text pass over every descriptor prompt)."""
        lr = self.learner
        t = self.text_encoder(lr.prompt_learner(), lr.prompt_learner.eot_idx,  # [N, E]
                              shared_prefix=lr.prompt_learner.shares_prefix)
        feats = t.new_zeros(*self.mask.shape, t.shape[-1])
        feats = feats.index_put((self.owner, self.slot), t)
        return F.normalize(lr.merge(lr.learnable_token, feats, self.mask), dim=-1)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(images).float(), dim=-1)

    def forward_features(self, image_features: torch.Tensor, text_features=None) -> torch.Tensor:
        """``[B, E]`` unnormalised frozen image features -> ``[B, C]`` logits (``text_features``:
        precomputed ``[C, E]`` class features, else one text pass)."""
        g = self.class_features() if text_features is None else text_features
        return self.clip.logit_scale.exp() * F.normalize(image_features.float(), dim=-1) @ g.t()

    def forward(self, images: torch.Tensor, class_features=None) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, C]`` logits."""
        with torch.no_grad():
            feats = self.clip.encode_image(images).float()
        return self.forward_features(feats, class_features)


@TRAINER_REGISTRY.register("ViP")
class ViP(FrozenClassTextCacheMixin, FrozenImageEncoderTrainer):
    """ViP trainer. Config ``TRAINER.VIP``: N_CTX, CSC (False only), CLASS_TOKEN_POSITION ("end"),
    DESCRIPTOR_FILE (a knowledge JSON; default: the dataset's shipped file), PREC.

    Attributes:
        official_requires_grad_params: the parameter count the official code flags trainable
            (see the module docstring), reported beside :meth:`count_trainable_params`.
    """

    CONFIG_KEY = "VIP"

    @classmethod
    def config_defaults(cls) -> CN:
        c = CN()
        c.N_CTX = 4
        c.CSC = False
        c.CLASS_TOKEN_POSITION = "end"
        c.DESCRIPTOR_FILE = ""
        c.PREC = "fp32"
        return c

    def check_cfg(self, cfg) -> None:
        c = cfg.TRAINER.VIP
        if c.CSC:
            raise ValueError("TRAINER.VIP.CSC: only unified context (False) is supported")
        if c.CLASS_TOKEN_POSITION != "end":
            raise ValueError("TRAINER.VIP.CLASS_TOKEN_POSITION must be 'end' (the official 'front' branch is broken)")
        self.check_prec(cfg)

    def build_model(self) -> None:
        c = self.method_cfg
        bb = self.get_backbone()
        desc = class_knowledge(self.cfg.DATASET.NAME, self.classnames, "vip", path=c.DESCRIPTOR_FILE or None)
        self.model = ViPCLIP(bb.model, bb.tokenizer, desc, n_ctx=c.N_CTX).to(self.device)
        optim, sched = self.build_optim_sched(self.model.learner)
        self.register_model("prompt_learner", self.model.learner, optim, sched)
        self.official_requires_grad_params = official_flagged_params(bb.model, self.num_classes, c.N_CTX)

    def forward_backward(self, batch) -> Dict[str, float]:
        feats, labels = self.parse_batch_train(batch)  # [B, E] frozen image features (cached or live)
        with self.autocast():
            logits = self.model.forward_features(feats)
        return self.step_and_report(logits, labels)

    def class_text_features(self) -> torch.Tensor:
        """The class features (``self.model.class_features()``), once per test pass."""
        return self.model.class_features()

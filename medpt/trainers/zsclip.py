"""Zero-shot CLIP: hand-crafted prompt templates, optionally an ensemble of them.

Source: Radford et al., ICML 2021 §3.1.4 (prompt engineering and ensembling);
``KaiyangZhou/CoOp:trainers/zsclip.py`` (``ZeroshotCLIP``, ``ZeroshotCLIP2``).

Class text features ``t_c`` are ``encode_text`` of ``template.format(name_c)`` (open_clip's own
path), L2-normalised; with ``ENSEMBLE`` they are averaged over templates and normalised again.
Logits are ``exp(logit_scale) * f_hat @ t_hat^T`` with the backbone's logit scale (100 for OpenAI
weights). No training; 0 trainable parameters.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from ..clip import clean_classname
from ..engine.registry import TRAINER_REGISTRY
from ..engine.trainer import TrainerX


@torch.no_grad()
def zero_shot_text_features(clip_model: nn.Module, tokenizer, classnames: Sequence[str],
                            templates: Sequence[str]) -> torch.Tensor:
    """``[C, E]`` normalised class text features, averaged over ``templates`` and renormalised.

    Raises:
        ValueError: no template, or a template without ``{}``.
    """
    if not templates:
        raise ValueError("zero-shot CLIP needs at least one prompt template")
    feats = []
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"prompt template {t!r} has no '{{}}' slot for the class name")
        tokens = tokenizer([t.format(clean_classname(c)) for c in classnames])
        tokens = tokens.to(clip_model.positional_embedding.device)
        feats.append(F.normalize(clip_model.encode_text(tokens).float(), dim=-1))
    if len(feats) == 1:  # one template: no average, no second normalisation
        return feats[0]
    return F.normalize(torch.stack(feats).mean(0), dim=-1)


class ZeroShotModel(nn.Module):
    """Frozen CLIP with fixed class text features ``[C, E]``."""

    def __init__(self, clip_model: nn.Module, text_features: torch.Tensor):
        super().__init__()
        self.clip = clip_model
        self.register_buffer("text_features", text_features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, C]`` logits."""
        f = F.normalize(self.clip.encode_image(images).float(), dim=-1)
        return self.clip.logit_scale.exp() * f @ self.text_features.t()


@TRAINER_REGISTRY.register("ZeroShotCLIP", aliases=("zsclip",))
class ZeroShotCLIP(TrainerX):
    """Zero-shot CLIP reference row (registered as ``ZeroShotCLIP``; ``zsclip`` works too).

    Config (``TRAINER.ZSCLIP``): ``TEMPLATES`` (list; empty = the dataset's templates),
    ``ENSEMBLE`` (False: the first template only).
    """

    CONFIG_KEY = "ZSCLIP"
    REQUIRES_TRAINING = False

    @classmethod
    def config_defaults(cls) -> CN:
        c = CN()
        c.TEMPLATES = []
        c.ENSEMBLE = False
        c.PREC = "fp32"
        return c

    def templates(self) -> List[str]:
        t = list(self.method_cfg.TEMPLATES) or list(self.dm.dataset.templates)
        return t if self.method_cfg.ENSEMBLE else t[:1]

    def build_model(self) -> None:
        bb = self.get_backbone()
        text = zero_shot_text_features(bb.model, bb.tokenizer, self.classnames, self.templates())
        self.model = ZeroShotModel(bb.model, text).to(self.device)

    def forward_backward(self, batch):  # pragma: no cover - never trained
        raise RuntimeError("zero-shot CLIP has nothing to train")


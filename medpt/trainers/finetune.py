"""Full fine-tuning of a CLIP image tower: the reference row of the medical-VLM comparison.

Not one of the 16 prompt methods: the CILMP paper compares CILMP with medical VLMs used
zero-shot and fully fine-tuned (its medical-VLM table). Here the whole image tower of any
open_clip backbone (CLIP ViT-B/16, BiomedCLIP through ``hf-hub:``, ...) is trained together
with a linear classifier initialised from the zero-shot text features of the dataset's first
template (the usual "zero-shot head" initialisation of WiSE-FT, Wortsman et al., CVPR 2022 §2).
The text tower is only used once, to initialise the head. Logits are
``exp(logit_scale) * f_hat @ W_hat^T`` with the backbone's frozen logit scale, so the untrained
model equals zero-shot CLIP (tested).

Defaults (``TRAINER.FULLFT``): AdamW, the trainer yaml's learning rate (1e-5, weight decay 0.1).
Trainable parameters: every image-tower parameter plus ``C x E`` for the head.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from ..engine.registry import TRAINER_REGISTRY
from ..engine.trainer import TrainerX
from .zsclip import zero_shot_text_features


class FineTunedCLIP(nn.Module):
    """Trainable image tower + cosine classifier initialised from zero-shot text features."""

    def __init__(self, clip_model: nn.Module, head_init: torch.Tensor):
        super().__init__()
        self.visual = clip_model.visual
        self.head = nn.Parameter(head_init.clone())
        self.register_buffer("logit_scale", clip_model.logit_scale.detach().exp().clone())

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, E]`` normalised features of the (trainable) image tower."""
        return F.normalize(self.visual(images).float(), dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * self.image_features(images) @ F.normalize(self.head, dim=-1).t()


@TRAINER_REGISTRY.register("FullFineTune", aliases=("fullft",))
class FullFineTune(TrainerX):
    """Full fine-tuning of the image tower with a zero-shot-initialised head (see module doc)."""

    CONFIG_KEY = "FULLFT"

    @classmethod
    def config_defaults(cls) -> CN:
        c = CN()
        c.PREC = "fp32"
        c.TEMPLATE = ""  # empty: the dataset's first template
        return c

    def build_model(self) -> None:
        bb = self.get_backbone()
        template = self.method_cfg.TEMPLATE or self.dm.dataset.templates[0]
        head = zero_shot_text_features(bb.model, bb.tokenizer, self.classnames, [template])
        self.model = FineTunedCLIP(bb.model, head).to(self.device)
        for p in self.model.visual.parameters():
            p.requires_grad_(True)
        self.model.visual.train()
        optim, sched = self.build_optim_sched(self.model)
        self.register_model("finetuned", self.model, optim, sched)

    def forward_backward(self, batch) -> Dict[str, float]:
        images, labels = self.parse_batch_train(batch)
        with self.autocast():
            logits = self.model(images)
        return self.step_and_report(logits, labels)

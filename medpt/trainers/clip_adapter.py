"""CLIP-Adapter: a residual bottleneck MLP on the frozen image feature, zero-shot text classifier.

Source: Gao et al., "CLIP-Adapter: Better Vision-Language Models with Feature Adapters",
IJCV 2024 §3.2; ``gaopengcuhk/CLIP-Adapter:clip_adapter.py`` (the repo's only code file, meant to
run inside CoOp's code base with CoOp's configs).

Forward: ``g`` = frozen image feature (unnormalised, E-d); ``a = ReLU(W2 ReLU(W1 g))`` with
``W1: E -> E/4``, ``W2: E/4 -> E``, no biases; ``g' = ratio * a + (1 - ratio) * g`` (ratio 0.2,
hard-coded in the official file); class weights ``t_c`` = normalised zero-shot CLIP text feature
of one hand-crafted template (``TEMPLATE``, default the dataset reader's ``templates[0]``);
logits ``exp(logit_scale) * normalise(g') @ t^T``. Loss: cross-entropy.
Trainable: the adapter, 2 * E * E/4 = 131,072 at E = 512.

Deliberate differences from the official code:

* the adapter is sized from the embedding width (``visual.output_dim``); the official file
  hard-codes 1024 (RN50's width) and cannot run on ViT-B/16 as published;
* ``RATIO`` is a config key (default 0.2, the official constant; the paper tunes it per dataset,
  gaopengcuhk/CLIP-Adapter#8);
* the class text features are computed once (the official code re-encodes the constant prompts
  at every forward); the template comes from the dataset reader instead of a dict keyed by
  dataset name;
* no config ships with the official repo: ``configs/trainers/CLIP-Adapter/vit_b16.yaml`` uses
  CoOp's ViT-B/16 recipe (SGD lr 0.002, batch 32, cosine, 1 warm-up epoch at 1e-5, 200 epochs),
  as the README says to run the file inside CoOp;
* image features may come from the shared feature cache (:mod:`medpt.trainers._frozen`).
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from ..engine.registry import TRAINER_REGISTRY
from ._common import template_text_features
from ._frozen import FrozenImageEncoderTrainer


class Adapter(nn.Module):
    """``Linear(c_in -> c_in/reduction, no bias) -> ReLU -> Linear(-> c_in, no bias) -> ReLU``.

    Raises:
        ValueError: ``c_in // reduction < 1``.
    """

    def __init__(self, c_in: int, reduction: int = 4):
        super().__init__()
        if c_in // reduction < 1:
            raise ValueError(f"CLIP-Adapter: width {c_in} // REDUCTION {reduction} is 0")
        self.fc = nn.Sequential(nn.Linear(c_in, c_in // reduction, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(c_in // reduction, c_in, bias=False), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, c_in] -> [B, c_in]``."""
        return self.fc(x)


class ClipAdapterModel(nn.Module):
    """Frozen CLIP + visual adapter + fixed class text features ``[C, E]``.

    Args:
        clip_model: open_clip CLIP (frozen).
        text_features: ``[C, E]`` class text features (normalised here).
        ratio: residual ratio alpha.
        reduction: bottleneck reduction (4).
    """

    def __init__(self, clip_model: nn.Module, text_features: torch.Tensor, ratio: float = 0.2, reduction: int = 4):
        super().__init__()
        self.clip = clip_model
        dim = int(getattr(clip_model.visual, "output_dim", text_features.shape[1]))
        self.adapter = Adapter(dim, reduction)
        self.ratio = float(ratio)
        self.register_buffer("text_features", F.normalize(text_features.float(), dim=-1))

    def forward_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """``[B, E]`` unnormalised image features -> ``[B, C]`` logits."""
        g = image_features.float()
        g = self.ratio * self.adapter(g) + (1 - self.ratio) * g
        return self.clip.logit_scale.exp() * F.normalize(g, dim=-1) @ self.text_features.t()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, C]`` logits."""
        with torch.no_grad():
            feats = self.clip.encode_image(images).float()
        return self.forward_features(feats)


@TRAINER_REGISTRY.register("CLIP-Adapter", aliases=("CLIP_Adapter", "clipadapter"))
class ClipAdapter(FrozenImageEncoderTrainer):
    """CLIP-Adapter trainer. Config ``TRAINER.CLIP_ADAPTER``: RATIO, REDUCTION, TEMPLATE, PREC."""

    CONFIG_KEY = "CLIP_ADAPTER"

    @classmethod
    def config_defaults(cls) -> CN:
        c = CN()
        c.RATIO = 0.2  # hard-coded in gaopengcuhk/CLIP-Adapter:clip_adapter.py
        c.REDUCTION = 4
        c.TEMPLATE = ""  # "" = the dataset reader's templates[0]
        c.PREC = "fp32"
        return c

    def check_cfg(self, cfg) -> None:
        self.check_prec(cfg)
        c = cfg.TRAINER.CLIP_ADAPTER
        if not 0.0 <= c.RATIO <= 1.0:
            raise ValueError(f"TRAINER.CLIP_ADAPTER.RATIO must be in [0, 1], got {c.RATIO}")

    def build_model(self) -> None:
        c = self.method_cfg
        bb = self.get_backbone()
        self.template, text = template_text_features(self, c.TEMPLATE)
        self.model = ClipAdapterModel(bb.model, text, ratio=c.RATIO, reduction=c.REDUCTION).to(self.device)
        optim, sched = self.build_optim_sched(self.model.adapter)
        self.register_model("adapter", self.model.adapter, optim, sched)

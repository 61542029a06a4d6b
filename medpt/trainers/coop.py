"""CoOp: learnable context vectors in the text prompt, frozen CLIP.

Source: Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022;
``KaiyangZhou/CoOp:trainers/coop.py`` and ``configs/trainers/CoOp/vit_b16*.yaml``.

Forward: image features from the frozen, unprompted image encoder; class text features from
:class:`medpt.clip.PromptLearner` through :class:`medpt.clip.TextEncoder`; logits
``exp(logit_scale) * f_hat @ t_hat^T`` (the backbone's scale, never hard-coded). Loss: cross-entropy.
Trainable: ``prompt_learner.ctx`` only: 16 x 512 = 8,192 (N_CTX 16), 4 x 512 = 2,048
(CTX_INIT "a photo of a"), C x 16 x 512 with CSC.

Deliberate differences from the official code:

* fp32 master weights; ``PREC: amp`` runs the encoders under bf16 autocast on CUDA. The official
  ``PREC: fp16`` casts CLIP and the context vectors to fp16 and trains them in fp16.
* the image encoder runs under ``torch.no_grad`` (it is frozen; same values, less memory), and
  its features may come from the shared image-feature cache
  (:mod:`medpt.trainers._frozen`; identical values for deterministic pipelines; random
  training views are encoded live unless ``MODEL.FEATURE_CACHE.NUM_VIEWS`` > 0);
* at test, the class text features are computed once per test pass instead of once per batch
  (same values);
* text passes stop at the longest EOT (exact up to float summation order, see TextEncoder);
* the two prompt-learner details listed in :mod:`medpt.clip.prompt_learner`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from ..clip import PromptLearner, TextEncoder
from ..engine.registry import TRAINER_REGISTRY
from ._frozen import FrozenClassTextCacheMixin, FrozenImageEncoderTrainer


class CoOpCLIP(nn.Module):
    """Frozen CLIP with CoOp's prompt learner (the official ``CustomCLIP``).

    Args:
        clip_model: open_clip CLIP (frozen).
        tokenizer: its tokenizer.
        classnames: ``C`` prompt class names.
        n_ctx, ctx_init, csc, class_token_position: see :class:`PromptLearner`.
    """

    def __init__(self, clip_model: nn.Module, tokenizer, classnames, n_ctx: int = 16, ctx_init: str = "",
                 csc: bool = False, class_token_position: str = "end"):
        super().__init__()
        self.clip = clip_model
        self.prompt_learner = PromptLearner(clip_model, tokenizer, classnames, n_ctx=n_ctx, ctx_init=ctx_init,
                                            csc=csc, class_token_position=class_token_position)
        self.text_encoder = TextEncoder(clip_model)

    def text_features(self) -> torch.Tensor:
        """``[C, E]`` normalised class text features from the current context vectors."""
        prompts = self.prompt_learner()
        return F.normalize(self.text_encoder(prompts, self.prompt_learner.eot_idx,
                                             shared_prefix=self.prompt_learner.shares_prefix), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, E]`` unnormalised float32 features of the frozen image encoder."""
        with torch.no_grad():
            return self.clip.encode_image(images).float()

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, E]`` normalised features of the frozen image encoder."""
        return F.normalize(self.encode_image(images), dim=-1)

    def forward_features(self, image_features: torch.Tensor,
                         text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B, E]`` unnormalised image features -> ``[B, C]`` logits."""
        t = self.text_features() if text_features is None else text_features
        return self.clip.logit_scale.exp() * F.normalize(image_features.float(), dim=-1) @ t.t()

    def forward(self, images: torch.Tensor, text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, C]`` logits; ``text_features`` may be passed in to reuse them."""
        return self.forward_features(self.encode_image(images), text_features)


@TRAINER_REGISTRY.register("CoOp")
class CoOp(FrozenClassTextCacheMixin, FrozenImageEncoderTrainer):
    """CoOp trainer. Config ``TRAINER.COOP``: N_CTX, CSC, CTX_INIT, CLASS_TOKEN_POSITION, PREC."""

    CONFIG_KEY = "COOP"

    @classmethod
    def config_defaults(cls) -> CN:
        c = CN()
        c.N_CTX = 16
        c.CSC = False
        c.CTX_INIT = ""
        c.CLASS_TOKEN_POSITION = "end"
        c.PREC = "fp32"  # "fp32" | "amp" (bf16 autocast on CUDA, fp32 master weights)
        return c

    def check_cfg(self, cfg) -> None:
        self.check_prec(cfg, " (fp16 master weights are not supported; see the CoOp docstring)")

    def build_model(self) -> None:
        c = self.method_cfg
        bb = self.get_backbone()
        self.model = CoOpCLIP(bb.model, bb.tokenizer, self.classnames, n_ctx=c.N_CTX, ctx_init=c.CTX_INIT,
                              csc=c.CSC, class_token_position=c.CLASS_TOKEN_POSITION).to(self.device)
        optim, sched = self.build_optim_sched(self.model.prompt_learner)
        self.register_model("prompt_learner", self.model.prompt_learner, optim, sched)

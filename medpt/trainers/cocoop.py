"""CoCoOp: CoOp's context vectors shifted per image by a meta-net of the image feature.

Source: Zhou et al., "Conditional Prompt Learning for Vision-Language Models", CVPR 2022 §3;
``KaiyangZhou/CoOp:trainers/cocoop.py`` and
``configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml``.

Forward (per image ``i``): ``f_i`` = frozen image feature, normalised; ``pi_i = meta_net(f_i)``
with ``meta_net`` = Linear(E -> E/16, bias) -> ReLU -> Linear(E/16 -> D, bias) (512 -> 32 -> 512
at ViT-B/16); the context vectors become ``v_m + pi_i`` (the same shift for every m); the C class
prompts ``[SOS, v(x_i), name_c, ".", EOT]`` go through the text encoder, normalised to ``T_i``
``[C, E]``; logits ``exp(logit_scale) * f_i @ T_i^T``. Loss: cross-entropy.
Trainable: ``ctx`` (4 x 512, from "a photo of a") + meta-net (16,416 + 16,896) = 35,360.

Deliberate differences from the official code:

* the B x C prompts of a batch go through the text encoder in **one** batched pass
  ``[B*C, L, D]`` (the official code loops over images); same values;
* text passes stop at the longest EOT (exact up to float summation order, see TextEncoder);
  the prompt embeddings are built already truncated, so the batched pass stays small;
* fp32 master weights (official ``PREC: fp16`` casts CLIP and the meta-net to fp16);
  ``PREC: amp`` = bf16 autocast on CUDA;
* the loss goes through the engine's ``model_backward_and_update``, which raises on a
  non-finite loss (the official trainer calls ``backward`` directly);
* image features may come from the shared feature cache (:mod:`medpt.trainers._frozen`).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from ..clip import PromptLearner, TextEncoder
from ..engine.registry import TRAINER_REGISTRY
from ._frozen import FrozenImageEncoderTrainer


def build_meta_net(vis_dim: int, ctx_dim: int) -> nn.Sequential:
    """CoCoOp's meta-net: Linear(vis_dim -> vis_dim // 16) -> ReLU -> Linear(-> ctx_dim), with biases
    and PyTorch's default init (``trainers/cocoop.py``: ``linear1``, ``relu``, ``linear2``)."""
    hidden = vis_dim // 16
    if hidden < 1:
        raise ValueError(f"CoCoOp meta-net: embedding width {vis_dim} is below 16")
    return nn.Sequential(OrderedDict([("linear1", nn.Linear(vis_dim, hidden)), ("relu", nn.ReLU(inplace=True)),
                                      ("linear2", nn.Linear(hidden, ctx_dim))]))


class CoCoOpPromptLearner(PromptLearner):
    """CoOp's prompt layout (unified context, class token at the end) plus the meta-net.

    Args:
        clip_model, tokenizer, classnames, n_ctx, ctx_init: see :class:`PromptLearner`.
        vis_dim: width of the image features (``visual.output_dim``; 512 at ViT-B/16).
    """

    def __init__(self, clip_model: nn.Module, tokenizer, classnames, n_ctx: int = 4, ctx_init: str = "a photo of a",
                 vis_dim: int = 512):
        super().__init__(clip_model, tokenizer, classnames, n_ctx=n_ctx, ctx_init=ctx_init, csc=False,
                         class_token_position="end")
        self.meta_net = build_meta_net(vis_dim, self.ctx.shape[-1])
        # every prompt ends at max(eot) + 1: build them already truncated
        self.length = int(self.eot_idx.max()) + 1

    def forward_conditional(self, image_features: torch.Tensor) -> torch.Tensor:
        """Per-image prompts.

        Args:
            image_features: ``[B, E]`` normalised image features.

        Returns:
            ``[B * C, L', D]`` prompt embeddings, image-major (rows ``i*C .. i*C + C - 1`` belong to
            image ``i``), truncated to ``L' = max(eot) + 1``.
        """
        b, c = image_features.shape[0], self.n_cls
        bias = self.meta_net(image_features)  # [B, D]
        ctx = self.ctx.unsqueeze(0) + bias.unsqueeze(1).to(self.ctx.dtype)  # [B, M, D]
        prefix = self.token_prefix.unsqueeze(0).expand(b, -1, -1, -1)  # [B, C, 1, D]
        suffix = self.token_suffix[:, :self.length - 1 - self.n_ctx].unsqueeze(0).expand(b, -1, -1, -1)
        ctx = ctx.unsqueeze(1).expand(-1, c, -1, -1)  # [B, C, M, D]
        prompts = torch.cat([prefix, ctx, suffix], dim=2)
        return prompts.reshape(b * c, self.length, -1)


class CoCoOpCLIP(nn.Module):
    """Frozen CLIP with CoCoOp's conditional prompt learner (the official ``CustomCLIP``)."""

    def __init__(self, clip_model: nn.Module, tokenizer, classnames, n_ctx: int = 4, ctx_init: str = "a photo of a"):
        super().__init__()
        self.clip = clip_model
        vis_dim = int(getattr(clip_model.visual, "output_dim", clip_model.text_projection.shape[1]))
        self.prompt_learner = CoCoOpPromptLearner(clip_model, tokenizer, classnames, n_ctx=n_ctx,
                                                  ctx_init=ctx_init, vis_dim=vis_dim)
        self.text_encoder = TextEncoder(clip_model)

    def forward_features(self, image_features: torch.Tensor) -> torch.Tensor:
        """``[B, E]`` unnormalised image features -> ``[B, C]`` logits (one text pass of B*C prompts)."""
        f = F.normalize(image_features.float(), dim=-1)
        pl = self.prompt_learner
        prompts = pl.forward_conditional(f)
        eot = pl.eot_idx.repeat(f.shape[0])
        # the B*C prompts share [SOS][ctx + pi_b] per image: one prefix pass per image (exact)
        groups = torch.arange(f.shape[0], device=eot.device).repeat_interleave(pl.n_cls)
        t = F.normalize(self.text_encoder(prompts, eot, shared_prefix=True, prefix_groups=groups), dim=-1).view(f.shape[0], pl.n_cls, -1)
        return self.clip.logit_scale.exp() * torch.einsum("be,bce->bc", f, t.to(f.dtype))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, C]`` logits."""
        with torch.no_grad():
            feats = self.clip.encode_image(images).float()
        return self.forward_features(feats)


@TRAINER_REGISTRY.register("CoCoOp")
class CoCoOp(FrozenImageEncoderTrainer):
    """CoCoOp trainer. Config ``TRAINER.COCOOP``: N_CTX, CTX_INIT, PREC."""

    CONFIG_KEY = "COCOOP"

    @classmethod
    def config_defaults(cls) -> CN:
        c = CN()
        c.N_CTX = 4
        c.CTX_INIT = "a photo of a"  # "" = N(0, 0.02^2) init with N_CTX vectors
        c.PREC = "fp32"  # "fp32" | "amp" (bf16 autocast on CUDA, fp32 master weights)
        return c

    def check_cfg(self, cfg) -> None:
        self.check_prec(cfg)

    def build_model(self) -> None:
        c = self.method_cfg
        bb = self.get_backbone()
        self.model = CoCoOpCLIP(bb.model, bb.tokenizer, self.classnames, n_ctx=c.N_CTX,
                                ctx_init=c.CTX_INIT).to(self.device)
        optim, sched = self.build_optim_sched(self.model.prompt_learner)
        self.register_model("prompt_learner", self.model.prompt_learner, optim, sched)

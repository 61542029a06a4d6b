"""PromptSRC: self-regulating deep prompts on both towers with Gaussian prompt aggregation.

Source: Khattak et al., "Self-regulating Prompts: Foundational Model Adaptation without
Forgetting", ICCV 2023; ``muzairkhattak/PromptSRC:trainers/promptsrc.py``, ``clip/model.py``
(IVLP blocks), ``configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml``.

Model (through :mod:`medpt.clip.prompted`):

* text: ``[SOS] ctx(4, init "a photo of a") name . [EOT]``; before text blocks ``1 .. D_t - 1``
  positions ``1..4`` are replaced by that block's deep prompts ``[4, 512]`` (N(0, 0.02^2));
* vision: 4 prompts ``[4, 768]`` appended before ``ln_pre``; before blocks ``1 .. D_v - 1`` the
  last 4 tokens are replaced by that block's prompts; features from the class token.
* Trainable at ViT-B/16 (4 + 4 tokens, depth 9/9): 9*4*512 + 9*4*768 = 46,080.

Losses (training only): ``CE(z, y) + 25 * L1(t_hat, w_hat) + 10 * L1(f_hat, f0_hat) +
KL(p0 || p) / C`` (batch-summed KL divided by ``B * C``), where ``w`` is the mean of the
**unnormalised** frozen text features over CLIP's 60 ImageNet templates (normalised at use),
``f0`` the frozen, unprompted image feature of the same augmented image and ``z0 = s * f0_hat
w_hat^T`` its logits.

Gaussian prompt aggregation (GPA): ``g_e = N(e; GPA_MEAN, GPA_STD^2)`` for epochs ``e = 1..N``,
normalised to sum 1; after epoch ``e`` the running sum ``sum_e g_e * theta_e`` is updated and,
after the last epoch, it replaces the prompts (so the last checkpoint and every test use it).

Deliberate differences from the official code:

* fp32 master weights; ``PREC: amp`` = bf16 autocast on CUDA, fp32 on CPU (official: CLIP and
  prompts cast to fp16; its teacher image encoder stays fp16 even for ``fp32``, and its ``amp``
  branch is broken);
* GPA aggregates only the trainable prompts (the official code deep-copies and averages the whole
  state dict, frozen CLIP included, every epoch: the same values for the prompts) and the running
  aggregate is stored in checkpoints (``extra_state``), so a resumed run keeps it (the official
  aggregate lives only in memory);
* the Gaussian weights are normalised in log space (softmax of the log-densities): identical
  values, but no division by zero when every density underflows (e.g. 5 demo epochs, mean 15);
* the frozen teacher image encoder is the backbone's own frozen tower (``encode_image``) rather
  than a second loaded copy (same weights, same values); its features of the training images come
  from the shared feature cache (:class:`~medpt.trainers._frozen.TeacherFeatureBankMixin`) when
  the training pipeline is deterministic (exact) or with ``MODEL.FEATURE_CACHE.NUM_VIEWS`` > 0
  (a bank of augmented views, the documented protocol deviation); by default (random
  augmentation, ``NUM_VIEWS`` 0) the teacher runs on every batch as in the official code;
* ``N_CTX_TEXT`` larger than the init phrase's token count falls back to random init as in the
  official code; a phrase with more tokens than ``N_CTX_TEXT`` uses all its tokens (CoOp's
  :class:`PromptLearner` rule; the official code keeps the first ``N_CTX_TEXT``);
* class text features are computed once per test pass; text passes stop at the longest EOT.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from ..clip import PromptLearner, clean_classname
from ..clip.imagenet_templates import IMAGENET_TEMPLATES
from ..clip.gpa import GaussianPromptAggregator, gaussian_weights
from ..clip.prompted import PromptedTextEncoder, PromptedVisionEncoder, make_deep_prompts
from ..engine.registry import TRAINER_REGISTRY
from ..engine.trainer import ClassTextCacheMixin, TrainerX
from ._frozen import TeacherFeatureBankMixin


#: GPA weights (kept under this name for callers of the PromptSRC module).
gpa_weights = gaussian_weights


class PromptSRCPrompts(nn.Module):
    """Every trainable tensor of PromptSRC.

    Attributes:
        text: :class:`PromptLearner` (``text.ctx`` ``[n_t, D]``, the input-layer text prompts).
        text_deep: ``depth_t - 1`` tensors ``[n_t, D]``.
        vis_ctx: ``[n_v, W]`` input-layer vision prompts (``None`` when ``depth_v == 0``).
        vis_deep: ``depth_v - 1`` tensors ``[n_v, W]``.
    """

    def __init__(self, clip_model, tokenizer, classnames, n_ctx_text=4, n_ctx_vision=4, ctx_init="a photo of a",
                 depth_text=9, depth_vision=9):
        super().__init__()
        if depth_text < 1:
            raise ValueError("TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT must be >= 1 (use a vision-only method otherwise)")
        n_t, n_v = len(clip_model.transformer.resblocks), len(clip_model.visual.transformer.resblocks)
        if depth_text > n_t or not 0 <= depth_vision <= n_v:
            raise ValueError(f"TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT/VISION ({depth_text}/{depth_vision}) must be "
                             f"<= the tower depths ({n_t}/{n_v}) of this backbone")
        init = ctx_init if ctx_init and n_ctx_text <= 4 else ""
        self.text = PromptLearner(clip_model, tokenizer, classnames, n_ctx=n_ctx_text, ctx_init=init)
        d_text = self.text.ctx.shape[-1]
        self.text_deep = make_deep_prompts(depth_text, self.text.n_ctx, d_text)
        width = clip_model.visual.class_embedding.shape[-1]
        if depth_vision > 0:
            v = torch.empty(n_ctx_vision, width)
            nn.init.normal_(v, std=0.02)
            self.vis_ctx = nn.Parameter(v)
            self.vis_deep = make_deep_prompts(depth_vision, n_ctx_vision, width)
        else:
            self.vis_ctx = None
            self.vis_deep = nn.ParameterList()


class PromptSRCCLIP(nn.Module):
    """Student CLIP with PromptSRC's prompts, plus the frozen teacher's class text features.

    Args:
        clip_model, tokenizer, classnames: the frozen backbone, its tokenizer, ``C`` class names.
        **kw: :class:`PromptSRCPrompts` options.
    """

    def __init__(self, clip_model, tokenizer, classnames, **kw):
        super().__init__()
        self.clip = clip_model
        self.prompt_learner = PromptSRCPrompts(clip_model, tokenizer, classnames, **kw)
        self.text_encoder = PromptedTextEncoder(clip_model)
        self.image_encoder = PromptedVisionEncoder(clip_model)
        names = [clean_classname(c) for c in classnames]
        dev = clip_model.token_embedding.weight.device
        if dev.type == "meta":  # shapes only (parameter counting)
            e = clip_model.text_projection.shape[1]
            fixed = torch.empty(len(names), e, device=dev)
        else:
            ids = tokenizer([t.format(n) for t in IMAGENET_TEMPLATES for n in names]).to(dev)
            feats = self.text_encoder.encode_ids(ids).view(len(IMAGENET_TEMPLATES), len(names), -1)
            fixed = feats.mean(0)
        # [C, E]: mean of the unnormalised frozen features over the 60 templates
        self.register_buffer("fixed_embeddings", fixed, persistent=False)

    def text_features(self) -> torch.Tensor:
        """``[C, E]`` normalised student text features."""
        pl = self.prompt_learner
        x = self.text_encoder(pl.text(), pl.text.eot_idx, deep_prompts=list(pl.text_deep),
                              shared_prefix=pl.text.shares_prefix)  # deep prompts: one [n, D] each
        return F.normalize(x.float(), dim=-1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, E]`` normalised student image features."""
        pl = self.prompt_learner
        x = self.image_encoder(images, prompts=pl.vis_ctx, deep_prompts=list(pl.vis_deep))
        return F.normalize(x.float(), dim=-1)

    def forward(self, images: torch.Tensor, text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, C]`` student logits."""
        t = self.text_features() if text_features is None else text_features
        return self.clip.logit_scale.exp() * self.image_features(images) @ t.t()


@TRAINER_REGISTRY.register("PromptSRC")
class PromptSRC(TeacherFeatureBankMixin, ClassTextCacheMixin, TrainerX):
    """PromptSRC trainer. Config ``TRAINER.PROMPTSRC``: N_CTX_TEXT, N_CTX_VISION, CTX_INIT,
    PROMPT_DEPTH_TEXT, PROMPT_DEPTH_VISION, TEXT_LOSS_WEIGHT, IMAGE_LOSS_WEIGHT, GPA_MEAN,
    GPA_STD, PREC."""

    CONFIG_KEY = "PROMPTSRC"

    @classmethod
    def config_defaults(cls) -> CN:
        c = CN()
        c.N_CTX_TEXT = 4
        c.N_CTX_VISION = 4
        c.CTX_INIT = "a photo of a"
        c.PROMPT_DEPTH_TEXT = 9
        c.PROMPT_DEPTH_VISION = 9
        c.TEXT_LOSS_WEIGHT = 25.0
        c.IMAGE_LOSS_WEIGHT = 10.0
        c.GPA_MEAN = 15.0
        c.GPA_STD = 1.0
        c.PREC = "fp32"  # "fp32" | "amp" (bf16 autocast on CUDA, fp32 master weights)
        return c

    def check_cfg(self, cfg) -> None:
        self.check_prec(cfg)
        c = cfg.TRAINER.PROMPTSRC
        if c.GPA_STD <= 0:
            raise ValueError(f"TRAINER.PROMPTSRC.GPA_STD must be > 0, got {c.GPA_STD}")

    def build_model(self) -> None:
        c = self.method_cfg
        bb = self.get_backbone()
        self.model = PromptSRCCLIP(bb.model, bb.tokenizer, self.classnames, n_ctx_text=c.N_CTX_TEXT,
                                   n_ctx_vision=c.N_CTX_VISION, ctx_init=c.CTX_INIT,
                                   depth_text=c.PROMPT_DEPTH_TEXT, depth_vision=c.PROMPT_DEPTH_VISION).to(self.device)
        optim, sched = self.build_optim_sched(self.model.prompt_learner)
        self.register_model("prompt_learner", self.model.prompt_learner, optim, sched)
        self.gpa = GaussianPromptAggregator(
            [(n, p) for n, p in self.model.prompt_learner.named_parameters() if p.requires_grad],
            self.max_epoch, c.GPA_MEAN, c.GPA_STD)
        self.gpa_weights = self.gpa.weights

    def forward_backward(self, batch) -> Dict[str, float]:
        images, labels = self.parse_batch_train(batch)
        c = self.method_cfg
        m = self.model
        with self.autocast():
            text = m.text_features()
            img = m.image_features(images)
            scale = m.clip.logit_scale.exp()
            logits = (scale * img @ text.t()).float()
            # the frozen teacher on the same images: from the shared cache's bank of views when the
            # loader serves it (NUM_VIEWS > 0 or a deterministic pipeline), else computed now
            zs_img = F.normalize(self.teacher_features(batch, images), dim=-1)
        fixed = F.normalize(m.fixed_embeddings, dim=-1)
        zs_logits = scale.float() * zs_img @ fixed.t()
        loss_ce = F.cross_entropy(logits, labels)
        loss_text = F.l1_loss(text, fixed) * c.TEXT_LOSS_WEIGHT
        loss_img = F.l1_loss(img, zs_img) * c.IMAGE_LOSS_WEIGHT
        loss_kl = F.kl_div(F.log_softmax(logits, 1), F.log_softmax(zs_logits, 1), reduction="sum",
                           log_target=True) / logits.numel()
        loss = loss_ce + loss_text + loss_img + loss_kl
        return self.step_and_report(logits, labels, loss)

    def after_epoch(self) -> None:
        """GPA: add ``g_e * theta_e``; after the last epoch load the aggregate, then checkpoint."""
        self.gpa.step(self.epoch)  # the shared helper, medpt/clip/gpa.py
        super().after_epoch()

    def extra_state(self) -> dict:
        return {"gpa": self.gpa.state_dict()["sum"]}

    def load_extra_state(self, state: dict) -> None:
        self.gpa.load_state_dict({"sum": state.get("gpa")})

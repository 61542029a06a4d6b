"""LASP: language-aware soft prompting (text-to-text loss, text bias, visual LayerNorms).

Source: Bulat & Tzimiropoulos, "LASP: Text-to-Text Optimization for Language-Aware Soft
Prompting of Vision & Language Models", CVPR 2023. **No official code exists**; this follows the
public reimplementation in ``xytian1008/ArGue:trainers/lasp.py`` (ArGue, CVPR 2024, whose LASP
baseline) and its ``configs/trainers/LASP/vit_b16_c4_ep25_batch32_cls_t2t_5_wcl_25_g1_b.yaml``.

Model (through :mod:`medpt.clip.prompted`):

* text: CoOp prompts ``[SOS] ctx(4, init "a photo of a") name . [EOT]``; ``t_c = TextEncoder +
  w`` with the text bias ``w`` ``[1, E]`` (zero init, trained), then normalised;
* image: the frozen ViT with trainable copies of ``ln_1`` and ``ln_2`` of every block
  (``FINETUNE_VIT_LN``; ``ln_pre``/``ln_post`` stay frozen), optimised at ``0.1 x LR``;
* ``L_VL = CE(s * f_hat t_hat^T, y)``;
* text-to-text: the bank ``h[j, c]`` = normalised frozen CLIP features of J hand-crafted templates
  (``TEMPLATES``; default: the dataset's own templates) is computed once; each step, with
  probability 0.5, N(0, 0.05^2) noise is added to it (no re-normalisation);
  ``L_TT = mean_{j,c} CE_k(s * <h[j, c], t_hat_k>, c)``;
* ``L = L_VL + LASP_LOSS_WEIGHT * L_TT`` (5.0 in the 25-epoch config); with ``PREC: amp`` the
  gradient norm is clipped at 1.0 (the reimplementation's amp branch; no clipping for fp32);
* test: ``s * f_hat t_hat^T`` with ``w``; no ``L_TT``.
* Trainable at ViT-B/16: 4*512 + 512 + 12*2*2*768 = 39,424 (2,048 with the bias and LN off).

Deliberate differences from the reimplementation:

* fp32 master weights; ``PREC: amp`` = bf16 autocast on CUDA (fp32 on CPU) instead of fp16
  autocast with a GradScaler; gradient clipping follows ``PREC`` (applied for ``amp`` on any
  device);
* the trainable LayerNorms are copies owned by the method (the backbone stays frozen and
  untouched), initialised from the pretrained ones;
* ``w`` is sized by the joint embedding dim (the reimplementation uses the text width; both are
  512 for ViT-B/16);
* no grouped prompts (G = 1, as the config) and no virtual classes (LASP-V / INCLUDE_ALL_CLASSES
  is moot when every class has images);
* the template bank comes from the dataset definition (domain-appropriate) unless ``TEMPLATES``
  is set, instead of the reimplementation's per-dataset list of 35 natural-image templates;
* CoOp's :class:`PromptLearner` rule for the context length (BPE tokens of ``CTX_INIT``).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from ..clip import PromptLearner, clean_classname
from ..clip.prompted import PromptedTextEncoder, PromptedVisionEncoder
from ..engine.registry import TRAINER_REGISTRY
from ..engine.trainer import ClassTextCacheMixin, TrainerX


class LASPCLIP(nn.Module):
    """CLIP with LASP's prompt, text bias and trainable visual LayerNorms.

    Args:
        clip_model, tokenizer, classnames: backbone, tokenizer, ``C`` class names.
        templates: J hand-crafted templates with one ``{}`` slot (the text-to-text bank).
        n_ctx, ctx_init: CoOp context options.
        correction: add the text bias ``w``; train_w: whether ``w`` is trained.
        finetune_ln: train copies of the visual ``ln_1``/``ln_2``.

    Attributes:
        prompt_learner: trainable container: ``text`` (:class:`PromptLearner`), ``w`` ``[1, E]``
            and ``image_ln`` (the vision encoder's LayerNorm copies, shared, not copied).

    Raises:
        ValueError: no template, or a template without ``{}``.
    """

    def __init__(self, clip_model, tokenizer, classnames, templates, n_ctx: int = 4, ctx_init: str = "a photo of a",
                 correction: bool = True, train_w: bool = True, finetune_ln: bool = True):
        super().__init__()
        templates = list(templates)
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(f"TRAINER.LASP.TEMPLATES need at least one template, each with '{{}}': {templates}")
        self.clip = clip_model
        self.text_encoder = PromptedTextEncoder(clip_model)
        self.image_encoder = PromptedVisionEncoder(clip_model, trainable_ln=("ln_1", "ln_2") if finetune_ln else ())
        self.prompt_learner = nn.Module()
        self.prompt_learner.text = PromptLearner(clip_model, tokenizer, classnames, n_ctx=n_ctx, ctx_init=ctx_init)
        if correction:
            e = clip_model.text_projection.shape[1] if not isinstance(clip_model.text_projection, nn.Linear) \
                else clip_model.text_projection.out_features
            self.prompt_learner.w = nn.Parameter(torch.zeros(1, e), requires_grad=train_w)
        else:
            self.prompt_learner.w = None
        self.prompt_learner.image_ln = self.image_encoder.ln_overrides
        names = [clean_classname(c) for c in classnames]
        dev = clip_model.token_embedding.weight.device
        if dev.type == "meta":  # shapes only (parameter counting)
            bank = torch.empty(len(templates), len(names), self.prompt_learner.text.ctx.shape[-1], device=dev)
        else:
            bank = torch.stack([F.normalize(self.text_encoder.encode_ids(
                tokenizer([t.format(n) for n in names]).to(dev)), dim=-1) for t in templates])
        self.register_buffer("bank", bank, persistent=False)  # [J, C, E]

    def text_features(self) -> torch.Tensor:
        """``[C, E]`` normalised learned class prototypes (with the bias ``w``)."""
        pl = self.prompt_learner
        t = self.text_encoder(pl.text(), pl.text.eot_idx, shared_prefix=pl.text.shares_prefix).float()
        if pl.w is not None:
            t = t + pl.w
        return F.normalize(t, dim=-1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, E]`` normalised image features (LayerNorm-recalibrated encoder)."""
        return F.normalize(self.image_encoder(images).float(), dim=-1)

    def text_to_text_loss(self, text: torch.Tensor, noise: bool) -> torch.Tensor:
        """``L_TT``: the bank's features classified by the learned prototypes ``text`` ``[C, E]``."""
        bank = self.bank
        if noise:
            bank = bank + 0.05 * torch.randn_like(bank)
        logits = self.clip.logit_scale.exp() * bank @ text.t()  # [J, C, C]
        j, c, _ = logits.shape
        target = torch.arange(c, device=logits.device).repeat(j)
        return F.cross_entropy(logits.reshape(j * c, c), target)

    def forward(self, images: torch.Tensor, text_features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, C]`` logits."""
        t = self.text_features() if text_features is None else text_features
        return self.clip.logit_scale.exp() * self.image_features(images) @ t.t()


@TRAINER_REGISTRY.register("LASP")
class LASP(ClassTextCacheMixin, TrainerX):
    """LASP trainer. Config ``TRAINER.LASP``: N_CTX, CTX_INIT, LASP_LOSS_WEIGHT,
    ENABLE_CORRECTION, TRAIN_W, FINETUNE_VIT_LN, LN_LR_MULT, TEMPLATES, GRAD_CLIP, PREC."""

    CONFIG_KEY = "LASP"

    @classmethod
    def config_defaults(cls) -> CN:
        c = CN()
        c.N_CTX = 4
        c.CTX_INIT = "a photo of a"
        c.LASP_LOSS_WEIGHT = 5.0
        c.ENABLE_CORRECTION = True
        c.TRAIN_W = True
        c.FINETUNE_VIT_LN = True
        c.LN_LR_MULT = 0.1  # hard-coded 0.1 in the reimplementation
        c.TEMPLATES = ()  # empty: the dataset's own templates
        c.GRAD_CLIP = 1.0  # gradient-norm clipping under PREC amp (reimplementation's amp branch)
        c.PREC = "fp32"  # "fp32" | "amp"
        return c

    def check_cfg(self, cfg) -> None:
        self.check_prec(cfg)

    def build_model(self) -> None:
        c = self.method_cfg
        bb = self.get_backbone()
        templates = list(c.TEMPLATES) or list(getattr(self.dm.dataset, "templates", None) or ["a photo of a {}."])
        self.model = LASPCLIP(bb.model, bb.tokenizer, self.classnames, templates, n_ctx=c.N_CTX, ctx_init=c.CTX_INIT,
                              correction=c.ENABLE_CORRECTION, train_w=c.TRAIN_W,
                              finetune_ln=c.FINETUNE_VIT_LN).to(self.device)
        pl = self.model.prompt_learner
        ln = [p for p in pl.image_ln.parameters() if p.requires_grad]
        ln_ids = {id(p) for p in ln}
        rest = [p for p in pl.parameters() if p.requires_grad and id(p) not in ln_ids]
        groups = [{"params": rest}]
        if ln:
            groups.insert(0, {"params": ln, "lr": self.cfg.OPTIM.LR * c.LN_LR_MULT})
        optim, sched = self.build_optim_sched(groups)
        self.register_model("prompt_learner", pl, optim, sched)

    def forward_backward(self, batch) -> Dict[str, float]:
        images, labels = self.parse_batch_train(batch)
        c = self.method_cfg
        with self.autocast():
            text = self.model.text_features()
            logits = (self.model.clip.logit_scale.exp() * self.model.image_features(images) @ text.t()).float()
            loss = F.cross_entropy(logits, labels)
            if c.LASP_LOSS_WEIGHT > 0:
                noise = bool(torch.rand(1).item() < 0.5)
                loss = loss + c.LASP_LOSS_WEIGHT * self.model.text_to_text_loss(text.float(), noise)
        self.model_zero_grad()
        self.model_backward(loss)
        if self.prec == "amp" and c.GRAD_CLIP > 0:
            torch.nn.utils.clip_grad_norm_(self.trainable_parameters(), c.GRAD_CLIP)
        self.model_update()
        return {"loss": loss.item(), "acc": self.batch_accuracy(logits, labels)}

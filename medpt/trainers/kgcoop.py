"""KgCoOp: CoOp whose class text features are kept close to hand-crafted zero-shot ones.

Source: Yao et al., "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization",
CVPR 2023 §3.2; ``htyao89/KgCoOp:KgCoOp/trainers/kgcoop.py``,
``KgCoOp/configs/trainers/KgCoOp/vit_b16_ep100_ctxv1.yaml``, ``KgCoOp/scripts/run.sh`` (W = 8).

Forward: CoOp's (4 context vectors from "a photo of a", class token at the end); logits
``exp(logit_scale) * f_hat @ t_hat^T``. Class knowledge ``w_c`` = normalised zero-shot CLIP text
feature of one hand-crafted template (``TEMPLATE``, default the dataset reader's
``templates[0]``, itself defaulting to "a photo of a {}."), computed once.
Loss: ``CE + W * (1 - mean_c cos(t_hat_c, w_c))`` (the code's form; the paper writes a squared
L2 distance, equal to 2(1 - cos) for unit vectors). Trainable: ``ctx`` only, 4 x 512 = 2,048.

Deliberate differences from the official code:

* ``CTX_INIT`` is a phrase as in CoOp (default "a photo of a"); the official boolean forces
  "a photo of a" whenever it is truthy, which is what the default does. "" = random init;
* the template comes from the dataset reader (official: a dict keyed by dataset name that
  raises KeyError for unknown sets); the dead meta-net, bias vectors and adapter of the official
  file (frozen, unused in forward) are not ported;
* ``w_c`` is computed with the run's own frozen CLIP (the official code loads a second copy;
  same weights, same values);
* fp32 master weights; ``PREC: amp`` = bf16 autocast on CUDA (the official amp branch is broken);
* text passes stop at the longest EOT; image features may come from the shared feature cache.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from ..engine.registry import TRAINER_REGISTRY
from ._common import dataset_template, template_text_features  # noqa: F401 (dataset_template re-exported)
from ._frozen import FrozenClassTextCacheMixin, FrozenImageEncoderTrainer
from .coop import CoOpCLIP


def knowledge_loss(text_features: torch.Tensor, knowledge: torch.Tensor) -> torch.Tensor:
    """KgCoOp's term ``1 - mean_c cos(t_c, w_c)`` (cosine with eps 1e-7 as the official code).

    Args:
        text_features, knowledge: ``[C, E]``.

    Returns:
        A scalar tensor in [0, 2].
    """
    return 1.0 - F.cosine_similarity(text_features, knowledge.to(text_features.dtype), dim=1, eps=1e-7).mean()


class KgCoOpCLIP(CoOpCLIP):
    """CoOp's model plus the fixed class knowledge ``w`` (buffer ``text_features_old`` ``[C, E]``)."""

    def __init__(self, clip_model: nn.Module, tokenizer, classnames, knowledge: torch.Tensor, n_ctx: int = 4,
                 ctx_init: str = "a photo of a", csc: bool = False, class_token_position: str = "end"):
        super().__init__(clip_model, tokenizer, classnames, n_ctx=n_ctx, ctx_init=ctx_init, csc=csc,
                         class_token_position=class_token_position)
        self.register_buffer("text_features_old", F.normalize(knowledge.float(), dim=-1))


@TRAINER_REGISTRY.register("KgCoOp")
class KgCoOp(FrozenClassTextCacheMixin, FrozenImageEncoderTrainer):
    """KgCoOp trainer. Config ``TRAINER.KGCOOP``: N_CTX, CTX_INIT, CSC, CLASS_TOKEN_POSITION, W,
    TEMPLATE, PREC."""

    CONFIG_KEY = "KGCOOP"

    @classmethod
    def config_defaults(cls) -> CN:
        c = CN()
        c.N_CTX = 4
        c.CTX_INIT = "a photo of a"
        c.CSC = False
        c.CLASS_TOKEN_POSITION = "end"
        c.W = 8.0  # KgCoOp/scripts/run.sh (train.py's default is 1.0)
        c.TEMPLATE = ""  # "" = the dataset reader's templates[0]
        c.PREC = "fp32"
        return c

    def check_cfg(self, cfg) -> None:
        self.check_prec(cfg)
        c = cfg.TRAINER.KGCOOP
        if c.W < 0:
            raise ValueError(f"TRAINER.KGCOOP.W must be >= 0, got {c.W}")

    def build_model(self) -> None:
        c = self.method_cfg
        bb = self.get_backbone()
        self.template, knowledge = template_text_features(self, c.TEMPLATE)
        self.model = KgCoOpCLIP(bb.model, bb.tokenizer, self.classnames, knowledge, n_ctx=c.N_CTX,
                                ctx_init=c.CTX_INIT, csc=c.CSC,
                                class_token_position=c.CLASS_TOKEN_POSITION).to(self.device)
        optim, sched = self.build_optim_sched(self.model.prompt_learner)
        self.register_model("prompt_learner", self.model.prompt_learner, optim, sched)

    def forward_backward(self, batch) -> Dict[str, float]:
        feats, labels = self.parse_batch_train(batch)
        with self.autocast():
            text = self.model.text_features()
            logits = self.model.forward_features(feats, text_features=text)
        loss = F.cross_entropy(logits.float(), labels) + self.method_cfg.W * knowledge_loss(
            text.float(), self.model.text_features_old)
        return self.step_and_report(logits, labels, loss)

"""BiomedCoOp (Koleilat et al., CVPR 2025), CLIP-backbone variant.

Source: ``HealthX-Lab/BiomedCoOp:trainers/BiomedCoOp/biomedcoop_clip.py``,
``trainers/prompt_templates.py`` (BIOMEDCOOP_TEMPLATES), ``configs/trainers/BiomedCoOp/few_shot/*.yaml``;
docs/methods.md "Methods B" §9. A 17th method beyond the CILMP paper (a recent medical baseline).

Model: CoOp with 4 context vectors initialised from "a photo of a";
``logits = exp(logit_scale) * f . t^T``. Training adds, with frozen CLIP text features
``P`` ``[C, N, E]`` (normalised) of N = 50 LLM descriptions per class (``descriptions`` of the
dataset's knowledge file, :mod:`medpt.knowledge`):

* SCCM: ``L_sccm = LAMBDA1 * MSE(normalize(t_c), normalize(mean_j P[c, j]))``;
* outlier pruning (no grad, per batch): ``score_j = mean_b max_c (s * f_b . P[c, j])``; robust
  z-score ``z_j = (score_j - median) / MAD``; keep j with ``|(z_j - mean z) / std z| <= TAU``;
  teacher ``Q_c = normalize(mean over kept j of P[c, j])``;
* KDSP: ``zs = s * f . Q^T`` (the zero-shot image features equal ``f``: nothing visual is prompted);
  ``L_kd = LAMBDA2 * KL(softmax(zs) || softmax(logits))`` summed and divided by ``B * C``;
* ``loss = CE + L_sccm + L_kd``. Inference: the CoOp logits only.

Trainable: ``ctx`` 4 x 512 = 2,048 at ViT-B/16.

Deliberate differences from the official code:

* descriptions come from the knowledge files (written for this project; the official dict covers
  other class names); a class without a file entry gets 50 generic class-name sentences with a
  warning; if a class has more than N_PROMPTS descriptions, the first N_PROMPTS are used;
* if no description survives the pruning (all |z| > TAU), all are kept (the official code would
  average an empty set);
* if the MAD is 0 (all scores equal), all descriptions are kept;
* fp32 (the official default) with optional bf16 autocast; text passes stop at the longest EOT;
* the image tower is frozen and unprompted, so the trainer runs on the frozen-image-feature base
  (:class:`~medpt.trainers._frozen.FrozenImageEncoderTrainer`): image features come from the
  shared feature cache where the protocol allows (test/val always; training with
  ``MODEL.FEATURE_CACHE.NUM_VIEWS`` > 0), and a training step is then one text pass (issue 9).
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from ..engine.registry import TRAINER_REGISTRY
from ..knowledge import class_knowledge
from .coop import CoOp


def prune_descriptions(scores: torch.Tensor, tau: float) -> torch.Tensor:
    """BiomedCoOp's outlier pruning of description indices.

    Args:
        scores: ``[N]`` mean-over-batch best-class similarity of each description index.
        tau: threshold on the standardised robust z-score (1.5).

    Returns:
        ``[N]`` bool keep-mask (all True when the MAD or the z-score spread is 0, or none survive).
    """
    med = scores.median()
    mad = (scores - med).abs().median()
    if mad <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    z = (scores - med) / mad
    sd = z.std()
    if not torch.isfinite(sd) or sd <= 0:
        return torch.ones_like(scores, dtype=torch.bool)
    keep = ((z - z.mean()) / sd).abs() <= tau
    return keep if keep.any() else torch.ones_like(keep)


@TRAINER_REGISTRY.register("BiomedCoOp")
class BiomedCoOp(CoOp):
    """BiomedCoOp trainer. Config ``TRAINER.BIOMEDCOOP``: N_CTX, CTX_INIT, CSC, CLASS_TOKEN_POSITION,
    N_PROMPTS, TAU, SCCM_LAMBDA, KDSP_LAMBDA, DESCRIPTION_FILE, PREC."""

    CONFIG_KEY = "BIOMEDCOOP"

    @classmethod
    def config_defaults(cls) -> CN:
        c = CN()
        c.N_CTX = 4
        c.CTX_INIT = "a photo of a"
        c.CSC = False
        c.CLASS_TOKEN_POSITION = "end"
        c.N_PROMPTS = 50
        c.TAU = 1.5
        c.SCCM_LAMBDA = 1.0  # train.py fallback; per-dataset values in docs/methods.md
        c.KDSP_LAMBDA = 1.0
        c.DESCRIPTION_FILE = ""
        c.PREC = "fp32"
        return c

    def check_cfg(self, cfg) -> None:
        self.check_prec(cfg)
        c = cfg.TRAINER.BIOMEDCOOP
        if c.N_PROMPTS < 1:
            raise ValueError(f"TRAINER.BIOMEDCOOP.N_PROMPTS must be >= 1, got {c.N_PROMPTS}")

    def build_model(self) -> None:
        super().build_model()  # CoOp's prompt learner, optimiser and schedule, from TRAINER.BIOMEDCOOP
        c = self.method_cfg
        bb = self.get_backbone()
        desc = class_knowledge(self.cfg.DATASET.NAME, self.classnames, "descriptions",
                               path=c.DESCRIPTION_FILE or None)
        short = [name for name, d in zip(self.classnames, desc) if len(d) < c.N_PROMPTS]
        if short:
            raise ValueError(f"BiomedCoOp needs N_PROMPTS={c.N_PROMPTS} descriptions per class; too few for {short}")
        texts = [s for d in desc for s in d[:c.N_PROMPTS]]
        with torch.no_grad():
            tok = bb.tokenizer(texts).to(self.device)
            feats = torch.cat([bb.model.encode_text(tok[i:i + 256]).float() for i in range(0, len(tok), 256)])
        #: ``[C, N, E]`` frozen normalised description features.
        self.desc_feats = F.normalize(feats, dim=-1).view(self.num_classes, c.N_PROMPTS, -1)

    def losses(self, images: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The three loss terms and the logits for one batch (see the module docstring).

        ``images``: ``[B, 3, H, W]`` images or ``[B, E]`` unnormalised frozen image features."""
        c = self.method_cfg
        scale = self.model.clip.logit_scale.exp()
        f = F.normalize(self._as_features(images), dim=-1)
        t = self.model.text_features()
        logits = scale * f @ t.t()
        p = self.desc_feats
        sccm = c.SCCM_LAMBDA * F.mse_loss(t, F.normalize(p.mean(1), dim=-1))
        with torch.no_grad():
            sims = scale * torch.einsum("be,cne->bcn", f, p)  # [B, C, N]
            keep = prune_descriptions(sims.max(1).values.mean(0), c.TAU)
            q = F.normalize(p[:, keep].mean(1), dim=-1)
            zs = scale * f @ q.t()
        kd = F.kl_div(F.log_softmax(logits, dim=1), F.log_softmax(zs, dim=1), reduction="sum", log_target=True)
        kd = c.KDSP_LAMBDA * kd / logits.numel()
        ce = F.cross_entropy(logits, labels)
        return {"logits": logits, "ce": ce, "sccm": sccm, "kd": kd, "n_kept": keep.sum()}

    def forward_backward(self, batch) -> Dict[str, float]:
        feats, labels = self.parse_batch_train(batch)  # [B, E] frozen image features (cached or live)
        with self.autocast():
            out = self.losses(feats, labels)
        loss = out["ce"].float() + out["sccm"].float() + out["kd"].float()
        self.model_backward_and_update(loss)
        logits = out["logits"]
        return {"loss": loss.item(), "ce": out["ce"].item(), "sccm": out["sccm"].item(), "kd": out["kd"].item(),
                "acc": self.batch_accuracy(logits, labels)}

"""DePT: decoupled prompt tuning, a channel-adjusted linear head on top of a prompt method.

Source: Zhang et al., "DePT: Decoupled Prompt Tuning", CVPR 2024; ``Koorye/DePT:trainers/elp_coop.py``
(CoOp with DePT), ``trainers/elp_maple.py`` (the ``FiLM`` channel transform), ``trainers/optim.py``,
``configs/trainers/ExtrasLinearProbeCoOp/vit_b16_ep10_bs4_lr35.yaml``. Spec: docs/methods.md "DePT".

DePT is a plug-in: ``TRAINER.DEPT.BASE`` picks the base method, ``"PromptSRC"`` (default, as the
CILMP paper compares it; :mod:`.promptsrc`) or ``"CoOp"`` (:mod:`.coop`, the official first preset,
on cached frozen image features). The base's own options live in ``TRAINER.DEPT.PROMPTSRC`` /
``TRAINER.DEPT.COOP`` (same keys as the base trainer's node), DePT's in ``TRAINER.DEPT``.

Head (:class:`DePTHead`): channel-wise transforms ``x' = a ⊙ x + b`` (``a`` init 1, ``b`` init 0,
``[E]`` each) for image and text features, and ``linear_probe_proj = Linear(E, C)`` (bias), all on
**unnormalised** features. Training: ``(1 - λ) CE(s f̂ t̂^T, y) + λ CE(W [T'[y]; F'] + b, [y; y])``
(the text features of each sample's class are extra training points of the head), plus whatever
else the base adds (PromptSRC: its L1/KL regularisers and GPA on its prompts). Test (all classes
seen, ``TEST_TIME_FUSION``): ``(1 - λ) s f̂ t̂^T + λ (W F' + b)``, λ = ``LINEAR_PROBE_WEIGHT`` 0.7
(mixed scales, as the official code). λ = 0 is exactly the base method.

Trainable (ViT-B/16, E = 512): head 2,048 + 513 C; on CoOp (16 ctx) 8,192 + 2,048 + 513 C =
13,831 for C = 7 (11,779 for C = 3); on PromptSRC (4 + 4 ctx, depth 9/9) 46,080 + 2,048 + 513 C =
51,719 for C = 7. The head trains at ``HEAD_LR_MULT`` (6.5) x ``OPTIM.LR`` (official staged LR).

Deliberate differences from the official code:

* training on all classes works: the official forward takes the trainable branch only for
  ``SUBSAMPLE_CLASSES == "base"`` or ImageNet, so "all" on any other dataset takes the test-only
  "new" branch and crashes; here the base branch is always used (train + fused inference);
* PromptSRC base: not in the official repo (it has CoOp, CoCoOp, KgCoOp, MaPLe); the composition
  keeps PromptSRC's loss and replaces its CE term by DePT's (``loss - λ CE_sim + λ CE_lp``) and
  leaves the head out of GPA (GPA averages the prompts only);
* the head lives in its own optimiser with the same schedule at 6.5 x LR (the official code puts it
  in a second parameter group of one SGD: identical updates) and is initialised from a forked RNG
  seeded by ``SEED`` so adding it does not shift the base method's random stream;
* fp32 master weights (official: head built in CLIP's dtype, fp16).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode as CN

from ..engine.optim import build_lr_scheduler, build_optimizer
from ..engine.registry import TRAINER_REGISTRY
from ..engine.trainer import TrainerX
from .coop import CoOp
from .promptsrc import PromptSRC

BASES = ("PromptSRC", "CoOp")


class ChannelTransform(nn.Module):
    """DePT's channel-wise transform (``FiLM``): ``[..., E] -> a ⊙ x + b``, ``a`` = 1, ``b`` = 0 at init."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.bias


class DePTHead(nn.Module):
    """Channel transforms + linear probe (``2 E + 2 E + (E + 1) C`` parameters).

    Args:
        dim: feature width E (512 at ViT-B/16).
        n_cls: classes C.
    """

    def __init__(self, dim: int, n_cls: int):
        super().__init__()
        self.film_lp_img = ChannelTransform(dim)
        self.film_lp_text = ChannelTransform(dim)
        self.linear_probe_proj = nn.Linear(dim, n_cls)

    def train_logits(self, text_raw: torch.Tensor, image_raw: torch.Tensor,
                     labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Head logits on ``[T'[y]; F']``.

        Args:
            text_raw: ``[C, E]`` unnormalised class text features.
            image_raw: ``[B, E]`` unnormalised image features.
            labels: ``[B]``.

        Returns:
            ``([2B, C] logits, [2B] labels = [y; y])``.
        """
        x = torch.cat([self.film_lp_text(text_raw[labels]), self.film_lp_img(image_raw)], dim=0)
        return self.linear_probe_proj(x), torch.cat([labels, labels])

    def forward(self, image_raw: torch.Tensor) -> torch.Tensor:
        """``[B, E]`` unnormalised image features -> ``[B, C]`` head logits."""
        return self.linear_probe_proj(self.film_lp_img(image_raw))


def dept_loss(sim_logits: torch.Tensor, labels: torch.Tensor, lp_logits: torch.Tensor, lp_labels: torch.Tensor,
              weight: float) -> torch.Tensor:
    """``(1 - weight) CE(sim_logits, labels) + weight CE(lp_logits, lp_labels)`` (scalar)."""
    return (1 - weight) * F.cross_entropy(sim_logits, labels) + weight * F.cross_entropy(lp_logits, lp_labels)


def fuse_logits(sim_logits: torch.Tensor, lp_logits: torch.Tensor, weight: float) -> torch.Tensor:
    """Test-time fusion ``(1 - weight) sim + weight lp`` (``[B, C]``)."""
    return (1 - weight) * sim_logits + weight * lp_logits


class _DePTMixin:
    """What DePT adds to a base trainer: the head, its optimiser, the config plumbing."""

    CONFIG_KEY = "DEPT"
    BASE_KEY = ""

    @property
    def method_cfg(self) -> CN:  # the base trainer reads its own keys from TRAINER.DEPT.<BASE>
        return self.cfg.TRAINER.DEPT[self.BASE_KEY]

    @property
    def dept_cfg(self) -> CN:
        return self.cfg.TRAINER.DEPT

    @property
    def prec(self) -> str:
        return self.cfg.TRAINER.DEPT.PREC

    def check_cfg(self, cfg) -> None:
        self.check_prec(cfg)
        c = cfg.TRAINER.DEPT
        if not 0.0 <= float(c.LINEAR_PROBE_WEIGHT) <= 1.0:
            raise ValueError(f"TRAINER.DEPT.LINEAR_PROBE_WEIGHT must be in [0, 1], got {c.LINEAR_PROBE_WEIGHT}")

    def build_head(self) -> None:
        """Build and register ``dept_head`` (own optimiser at ``HEAD_LR_MULT`` x LR)."""
        clip = self.get_backbone().model
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(max(int(self.cfg.SEED), 0))
            self.head = DePTHead(clip.text_projection.shape[1], self.num_classes).to(self.device)
        ocfg = self.cfg.OPTIM.clone()
        ocfg.defrost()
        ocfg.LR = float(self.cfg.OPTIM.LR) * float(self.dept_cfg.HEAD_LR_MULT)
        optim = build_optimizer(self.head, ocfg)
        self.register_model("dept_head", self.head, optim, build_lr_scheduler(optim, ocfg))

    @property
    def lp_weight(self) -> float:
        return float(self.dept_cfg.LINEAR_PROBE_WEIGHT)

    def fused(self, sim_logits: torch.Tensor, image_raw: torch.Tensor) -> torch.Tensor:
        """Test logits: fused with the head when ``TEST_TIME_FUSION``, else the similarity logits."""
        if not self.dept_cfg.TEST_TIME_FUSION:
            return sim_logits
        return fuse_logits(sim_logits.float(), self.head(image_raw.float()), self.lp_weight)


class DePTOnCoOp(_DePTMixin, CoOp):
    """DePT with CoOp as the base (frozen image features, cacheable)."""

    BASE_KEY = "COOP"

    def build_model(self) -> None:
        super().build_model()
        self.build_head()

    def forward_backward(self, batch) -> Dict[str, float]:
        feats, labels = self.parse_batch_train(batch)  # [B, E] raw frozen image features
        m = self.model
        with self.autocast():
            pl = m.prompt_learner
            text_raw = m.text_encoder(pl(), pl.eot_idx, shared_prefix=pl.shares_prefix).float()
            sim = (m.clip.logit_scale.exp() * F.normalize(feats, dim=-1) @ F.normalize(text_raw, dim=-1).t()).float()
            lp, lp_y = self.head.train_logits(text_raw, feats.float(), labels)
        loss = dept_loss(sim, labels, lp.float(), lp_y, self.lp_weight)
        return self.step_and_report(sim, labels, loss)

    def inference_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fused(super().inference_features(feats), feats)


class DePTOnPromptSRC(_DePTMixin, PromptSRC):
    """DePT with PromptSRC as the base. PromptSRC's own step runs unchanged; forward hooks capture
    its raw student features, and the loss handed to the optimiser gets DePT's CE replacement."""

    BASE_KEY = "PROMPTSRC"

    def check_cfg(self, cfg) -> None:
        _DePTMixin.check_cfg(self, cfg)
        if cfg.TRAINER.DEPT.PROMPTSRC.GPA_STD <= 0:
            raise ValueError(f"TRAINER.DEPT.PROMPTSRC.GPA_STD must be > 0, got {cfg.TRAINER.DEPT.PROMPTSRC.GPA_STD}")

    def build_model(self) -> None:
        super().build_model()
        self.build_head()
        self._captured: Optional[Dict[str, torch.Tensor]] = None

    def _hooks(self):
        store: Dict[str, torch.Tensor] = {}
        m = self.model
        hs = [m.text_encoder.register_forward_hook(lambda mod, i, o: store.__setitem__("text", o)),
              m.image_encoder.register_forward_hook(lambda mod, i, o: store.__setitem__("image", o))]
        return store, hs

    def forward_backward(self, batch) -> Dict[str, float]:
        store, hs = self._hooks()
        self._captured = store
        self._labels = batch["label"].to(self.device)
        try:
            out = super().forward_backward(batch)
        finally:
            for h in hs:
                h.remove()
            self._captured = None
        out["loss"] = self._last_loss
        return out

    def model_backward_and_update(self, loss: torch.Tensor, names=None) -> None:
        if self._captured is not None:
            t = self._captured["text"].float()
            f = self._captured["image"].float()
            y = self._labels
            w = self.lp_weight
            sim = self.model.clip.logit_scale.exp() * F.normalize(f, dim=-1) @ F.normalize(t, dim=-1).t()
            lp, lp_y = self.head.train_logits(t, f, y)
            loss = loss - w * F.cross_entropy(sim.float(), y) + w * F.cross_entropy(lp.float(), lp_y)
        self._last_loss = float(loss.detach())
        super().model_backward_and_update(loss, names)

    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        store, hs = self._hooks()
        try:
            sim = super().model_inference(images)
        finally:
            for h in hs:
                h.remove()
        return self.fused(sim, store["image"])


@TRAINER_REGISTRY.register("DePT")
class DePT(TrainerX):
    """DePT trainer. ``TRAINER.DEPT``: BASE ("PromptSRC" | "CoOp"), LINEAR_PROBE_WEIGHT,
    TEST_TIME_FUSION, HEAD_LR_MULT, PREC, and the base's options in ``COOP`` / ``PROMPTSRC``.

    Instantiating ``DePT(cfg, ...)`` returns a :class:`DePTOnPromptSRC` or :class:`DePTOnCoOp`.

    Raises:
        ValueError: unknown ``BASE``.
    """

    CONFIG_KEY = "DEPT"

    @classmethod
    def config_defaults(cls) -> CN:
        c = CN()
        c.BASE = "PromptSRC"
        c.LINEAR_PROBE_WEIGHT = 0.7
        c.TEST_TIME_FUSION = True
        c.HEAD_LR_MULT = 6.5
        c.PREC = "fp32"
        c.COOP = CoOp.config_defaults()
        c.PROMPTSRC = PromptSRC.config_defaults()
        return c

    def __new__(cls, cfg, *args, **kwargs):
        base = str(cfg.TRAINER.DEPT.BASE).lower()
        impl = {"promptsrc": DePTOnPromptSRC, "coop": DePTOnCoOp}.get(base)
        if impl is None:
            raise ValueError(f"TRAINER.DEPT.BASE must be one of {BASES}, got '{cfg.TRAINER.DEPT.BASE}'")
        return impl(cfg, *args, **kwargs)

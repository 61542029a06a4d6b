"""Optimiser and learning-rate schedule builders with Dassl's semantics.

Source: ``KaiyangZhou/Dassl.pytorch:dassl/optim/{optimizer.py,lr_scheduler.py}``.

The schedule is stepped once per epoch (trainers call :meth:`TrainerBase.update_lr` after the
last batch of an epoch). With ``LR_SCHEDULER: cosine``, ``WARMUP_EPOCH: 1``,
``WARMUP_TYPE: constant`` (CoOp's configs) the learning rate of epoch ``e`` (0-based) is::

    e = 0:   WARMUP_CONS_LR
    e >= 1:  LR * (1 + cos(pi * (e - 1) / MAX_EPOCH)) / 2

so the cosine spans MAX_EPOCH steps after the warm-up and the last epoch's rate is small but
not zero. This is what Dassl produces (its warm-up wrapper hands over to the cosine scheduler
that was created at step 0); :func:`dassl_lr_sequence` gives the closed form used in tests.
"""
from __future__ import annotations

import math
from typing import Iterable, List, Optional, Union

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

AVAILABLE_OPTIMIZERS = ("sgd", "adam", "adamw", "amsgrad", "rmsprop", "radam")
AVAILABLE_SCHEDULERS = ("single_step", "multi_step", "cosine")


def build_optimizer(model_or_params: Union[nn.Module, Iterable], optim_cfg) -> torch.optim.Optimizer:
    """Build the optimiser named by ``OPTIM.NAME`` over the trainable parameters.

    Args:
        model_or_params: a module (its parameters with ``requires_grad`` are used) or an iterable
            of parameters / parameter groups.
        optim_cfg: the ``cfg.OPTIM`` node.

    Raises:
        ValueError: unknown optimiser name, or no trainable parameter.
    """
    name = optim_cfg.NAME.lower()
    if name not in AVAILABLE_OPTIMIZERS:
        raise ValueError(f"OPTIM.NAME '{optim_cfg.NAME}' is not one of {AVAILABLE_OPTIMIZERS}")
    if isinstance(model_or_params, nn.Module):
        params = [p for p in model_or_params.parameters() if p.requires_grad]
    else:
        params = list(model_or_params)
    if not params:
        raise ValueError("build_optimizer: no trainable parameter was given")
    lr, wd = optim_cfg.LR, optim_cfg.WEIGHT_DECAY
    betas = (optim_cfg.ADAM_BETA1, optim_cfg.ADAM_BETA2)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
                               dampening=optim_cfg.SGD_DAMPNING, nesterov=optim_cfg.SGD_NESTEROV)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=betas, eps=optim_cfg.EPS)
    if name == "amsgrad":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd, betas=betas, eps=optim_cfg.EPS, amsgrad=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd, betas=betas, eps=optim_cfg.EPS)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=optim_cfg.MOMENTUM, weight_decay=wd,
                                   alpha=optim_cfg.RMSPROP_ALPHA)
    return torch.optim.RAdam(params, lr=lr, weight_decay=wd, betas=betas)


class _WarmupScheduler(LRScheduler):
    """Runs a warm-up for ``warmup_epoch`` epochs, then delegates every step to ``successor``.

    Same hand-over as Dassl's ``_BaseWarmupScheduler``: the successor is built first (at its
    step 0), the warm-up overrides the rate for the warm-up epochs, and from then on each step
    advances the successor.
    """

    def __init__(self, optimizer, successor: LRScheduler, warmup_epoch: int, last_epoch: int = -1):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        super().__init__(optimizer, last_epoch)

    def step(self, epoch: Optional[int] = None):  # noqa: D102
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)

    def state_dict(self):  # noqa: D102
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "successor")}
        state["successor"] = self.successor.state_dict()
        return state

    def load_state_dict(self, state_dict):  # noqa: D102
        state = dict(state_dict)
        self.successor.load_state_dict(state.pop("successor"))
        self.__dict__.update(state)


class ConstantWarmupScheduler(_WarmupScheduler):
    """Constant ``cons_lr`` during the warm-up epochs (Dassl ``WARMUP_TYPE: constant``)."""

    def __init__(self, optimizer, successor, warmup_epoch: int, cons_lr: float, last_epoch: int = -1):
        self.cons_lr = cons_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def get_lr(self) -> List[float]:  # noqa: D102
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]


class LinearWarmupScheduler(_WarmupScheduler):
    """``min_lr`` at epoch 0, then ``base_lr * e / warmup_epoch`` (Dassl ``WARMUP_TYPE: linear``)."""

    def __init__(self, optimizer, successor, warmup_epoch: int, min_lr: float, last_epoch: int = -1):
        self.min_lr = min_lr
        super().__init__(optimizer, successor, warmup_epoch, last_epoch)

    def get_lr(self) -> List[float]:  # noqa: D102
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        if self.last_epoch == 0:
            return [self.min_lr for _ in self.base_lrs]
        return [lr * self.last_epoch / self.warmup_epoch for lr in self.base_lrs]


def build_lr_scheduler(optimizer: torch.optim.Optimizer, optim_cfg) -> LRScheduler:
    """Build ``OPTIM.LR_SCHEDULER`` (single_step, multi_step, cosine), wrapped by a warm-up.

    Raises:
        ValueError / TypeError: unknown scheduler, wrong STEPSIZE type, unknown warm-up type.
    """
    name = optim_cfg.LR_SCHEDULER
    stepsize = optim_cfg.STEPSIZE
    if name not in AVAILABLE_SCHEDULERS:
        raise ValueError(f"OPTIM.LR_SCHEDULER '{name}' is not one of {AVAILABLE_SCHEDULERS}")
    if name == "single_step":
        if isinstance(stepsize, (list, tuple)):
            stepsize = stepsize[-1]
        if not isinstance(stepsize, int):
            raise TypeError(f"OPTIM.STEPSIZE must be an int for single_step, got {stepsize!r}")
        if stepsize <= 0:
            stepsize = optim_cfg.MAX_EPOCH
        sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=stepsize, gamma=optim_cfg.GAMMA)
    elif name == "multi_step":
        if not isinstance(stepsize, (list, tuple)):
            raise TypeError(f"OPTIM.STEPSIZE must be a list for multi_step, got {stepsize!r}")
        sched = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(stepsize), gamma=optim_cfg.GAMMA)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, float(optim_cfg.MAX_EPOCH))

    if optim_cfg.WARMUP_EPOCH > 0:
        if not optim_cfg.WARMUP_RECOUNT:
            sched.last_epoch = optim_cfg.WARMUP_EPOCH
        if optim_cfg.WARMUP_TYPE == "constant":
            sched = ConstantWarmupScheduler(optimizer, sched, optim_cfg.WARMUP_EPOCH, optim_cfg.WARMUP_CONS_LR)
        elif optim_cfg.WARMUP_TYPE == "linear":
            sched = LinearWarmupScheduler(optimizer, sched, optim_cfg.WARMUP_EPOCH, optim_cfg.WARMUP_MIN_LR)
        else:
            raise ValueError(f"OPTIM.WARMUP_TYPE '{optim_cfg.WARMUP_TYPE}' is not 'constant' or 'linear'")
    return sched


def dassl_lr_sequence(base_lr: float, max_epoch: int, warmup_epoch: int = 1, cons_lr: float = 1e-5) -> List[float]:
    """Closed form of the per-epoch learning rates of cosine + constant warm-up (see module doc).

    Returns:
        ``max_epoch`` floats, the rate used during each epoch.
    """
    out = []
    for e in range(max_epoch):
        if e < warmup_epoch:
            out.append(cons_lr)
        else:
            out.append(base_lr * (1 + math.cos(math.pi * (e - warmup_epoch) / max_epoch)) / 2)
    return out

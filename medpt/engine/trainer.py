"""TrainerBase -> SimpleTrainer -> TrainerX: Dassl's trainer hierarchy, with safe resume.

Source: ``KaiyangZhou/Dassl.pytorch:dassl/engine/trainer.py``.

A method subclasses :class:`TrainerX`, registers itself in ``TRAINER_REGISTRY``, declares
``CONFIG_KEY`` and :meth:`config_defaults` (its ``cfg.TRAINER.<KEY>`` node), and implements
``build_model`` (build ``self.model``, call :meth:`register_model` for what it trains) and
``forward_backward(batch) -> dict`` (one optimisation step). Evaluation calls
``self.model_inference(images)``, which by default calls ``self.model(images)`` and may be
overridden (e.g. to reuse text features across test batches: :class:`ClassTextCacheMixin`).
Shared step helpers: :meth:`TrainerBase.step_and_report` (backward + update + the
``{"loss", "acc"}`` record), :meth:`TrainerBase.batch_accuracy`, :meth:`SimpleTrainer.check_prec`.

Differences from Dassl, on purpose:

* checkpoints are written atomically (temporary file + ``os.replace``) every
  ``TRAIN.CHECKPOINT_FREQ`` epochs, only the latest is kept, and they carry the RNG states
  (Python, NumPy, torch, the loader's shuffling generator) so a resumed run continues exactly
  where it stopped;
* resume happens only when asked (``resume=True`` / ``cfg.RESUME``), never silently from a
  reused output folder (KaiyangZhou/CoOp#49);
* a non-finite loss raises :class:`FloatingPointError` in every method (Dassl checks only in
  ``model_backward_and_update``);
* trainable parameters are counted from what the optimisers really hold.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import random
import time
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode as CN

from .data import DataManager
from .evaluator import build_evaluator
from .optim import build_lr_scheduler, build_optimizer

log = logging.getLogger(__name__)


def set_random_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA), as Dassl's ``set_random_seed``."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def atomic_torch_save(obj, path: Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    buf = io.BytesIO()
    torch.save(obj, buf)
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class TrainerBase:
    """Holds registered models, their optimisers and schedulers; saves and resumes them."""

    def __init__(self):
        self._models: "OrderedDict[str, nn.Module]" = OrderedDict()
        self._optims: "OrderedDict[str, Optional[torch.optim.Optimizer]]" = OrderedDict()
        self._scheds: "OrderedDict[str, Optional[object]]" = OrderedDict()
        self.history: List[Dict] = []

    def register_model(self, name: str, model: nn.Module, optim=None, sched=None) -> None:
        """Register a module to save/load, with the optimiser and scheduler that train it.

        Raises:
            ValueError: ``name`` is already registered.
        """
        if name in self._models:
            raise ValueError(f"model '{name}' is already registered")
        self._models[name] = model
        self._optims[name] = optim
        self._scheds[name] = sched

    def get_model_names(self, names=None) -> List[str]:
        names_real = list(self._models.keys())
        if names is None:
            return names_real
        names = [names] if isinstance(names, str) else list(names)
        for n in names:
            if n not in names_real:
                raise KeyError(f"model '{n}' is not registered; registered: {names_real}")
        return names

    # -- checkpoints -------------------------------------------------------------------------
    def _rng_state(self) -> dict:
        state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        gen = getattr(self, "loader_generator", None)
        if gen is not None:
            state["loader"] = gen.get_state()
        return state

    def _set_rng_state(self, state: dict) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        gen = getattr(self, "loader_generator", None)
        if gen is not None and "loader" in state:
            gen.set_state(state["loader"])

    def extra_state(self) -> dict:
        """Method state beyond modules/optimisers to keep in checkpoints (override)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Restore what :meth:`extra_state` saved (override)."""

    def save_model(self, epoch: int, directory: str | Path) -> None:
        """Save every registered model after ``epoch`` (0-based) to
        ``<directory>/<name>/model.pth.tar-<epoch+1>``, atomically; keep only the latest."""
        directory = Path(directory)
        for name in self.get_model_names():
            d = directory / name
            fname = f"model.pth.tar-{epoch + 1}"
            ckpt = {
                "state_dict": self._models[name].state_dict(),
                "epoch": epoch + 1,
                "optimizer": self._optims[name].state_dict() if self._optims[name] else None,
                "scheduler": self._scheds[name].state_dict() if self._scheds[name] else None,
                "rng": self._rng_state(),
                "history": list(self.history),
                "extra": self.extra_state(),
            }
            atomic_torch_save(ckpt, d / fname)
            tmp = d / ".checkpoint.tmp"
            tmp.write_text(fname + "\n")
            os.replace(tmp, d / "checkpoint")
            for old in d.glob("model.pth.tar-*"):
                if old.name != fname:
                    old.unlink(missing_ok=True)

    def resume_model_if_exist(self, directory: str | Path) -> int:
        """Load the latest checkpoint of every registered model found under ``directory``.

        Returns:
            The epoch to start from (0 when nothing was found).

        Raises:
            RuntimeError: checkpoints of the registered models disagree on the epoch.
        """
        directory = Path(directory)
        epochs = []
        for name in self.get_model_names():
            pointer = directory / name / "checkpoint"
            if not pointer.is_file():
                continue
            path = directory / name / pointer.read_text().strip()
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
            self._models[name].load_state_dict(ckpt["state_dict"])
            if self._optims[name] is not None and ckpt["optimizer"] is not None:
                self._optims[name].load_state_dict(ckpt["optimizer"])
            if self._scheds[name] is not None and ckpt["scheduler"] is not None:
                self._scheds[name].load_state_dict(ckpt["scheduler"])
            self._set_rng_state(ckpt["rng"])
            self.history = list(ckpt.get("history", []))
            self.load_extra_state(ckpt.get("extra", {}))
            epochs.append(ckpt["epoch"])
            log.info("resumed %s from %s (epoch %d)", name, path, ckpt["epoch"])
        if epochs and len(set(epochs)) != 1:
            raise RuntimeError(f"checkpoints under {directory} disagree on the epoch: {epochs}")
        return epochs[0] if epochs else 0

    def load_model(self, directory: str | Path, epoch: Optional[int] = None) -> None:
        """Load trained weights for evaluation (Dassl ``load_model``); class-dependent prompt
        buffers (``token_prefix``/``token_suffix``/``tokenized_prompts``) are dropped so weights
        trained on one class list load for another.

        Raises:
            FileNotFoundError: no checkpoint for a registered model.
        """
        directory = Path(directory)
        for name in self.get_model_names():
            d = directory / name
            fname = f"model.pth.tar-{epoch}" if epoch else (d / "checkpoint").read_text().strip() \
                if (d / "checkpoint").is_file() else None
            if fname is None or not (d / fname).is_file():
                raise FileNotFoundError(f"No checkpoint for model '{name}' under {d}")
            state = torch.load(d / fname, map_location="cpu", weights_only=False)["state_dict"]
            for k in [k for k in state if k.split(".")[-1] in ("token_prefix", "token_suffix",
                                                             "tokenized_prompts", "eot_idx")]:
                del state[k]
            self._models[name].load_state_dict(state, strict=False)

    # -- optimisation ------------------------------------------------------------------------
    def set_model_mode(self, mode: str = "train", names=None) -> None:
        for name in self.get_model_names(names):
            self._models[name].train(mode == "train")

    def update_lr(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._scheds[name] is not None:
                self._scheds[name].step()

    def get_current_lr(self, names=None) -> float:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                return self._optims[name].param_groups[0]["lr"]
        return 0.0

    @staticmethod
    def detect_anomaly(loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise FloatingPointError(f"Loss is infinite or NaN ({loss.item()})")

    def model_zero_grad(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad(set_to_none=True)

    def model_backward(self, loss: torch.Tensor) -> None:
        self.detect_anomaly(loss)
        loss.backward()

    def model_update(self, names=None) -> None:
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss: torch.Tensor, names=None) -> None:
        self.model_zero_grad(names)
        self.model_backward(loss)
        self.model_update(names)

    @staticmethod
    def batch_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
        """Top-1 accuracy in percent (0-100) of ``[B, C]`` logits against ``[B]`` labels."""
        return 100.0 * (logits.argmax(1) == labels).float().mean().item()

    def step_and_report(self, logits: torch.Tensor, labels: torch.Tensor,
                        loss: Optional[torch.Tensor] = None) -> Dict[str, float]:
        """The supervised step tail shared by the methods: backward + update, then the record.

        Args:
            logits: ``[B, C]`` the batch's logits (for the accuracy only).
            labels: ``[B]`` class indices.
            loss: the scalar loss to optimise; default ``F.cross_entropy(logits.float(), labels)``.

        Returns:
            ``{"loss": float, "acc": percent}`` as :meth:`TrainerX.run_epoch` expects.

        Raises:
            FloatingPointError: the loss is not finite (:meth:`model_backward_and_update`).
        """
        if loss is None:
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        self.model_backward_and_update(loss)
        return {"loss": loss.item(), "acc": self.batch_accuracy(logits, labels)}

    def trainable_parameters(self) -> List[nn.Parameter]:
        """Unique parameters held by the registered optimisers."""
        seen, out = set(), []
        for opt in self._optims.values():
            if opt is None:
                continue
            for g in opt.param_groups:
                for p in g["params"]:
                    if id(p) not in seen:
                        seen.add(id(p))
                        out.append(p)
        return out

    def count_trainable_params(self) -> int:
        """Number of scalars the optimisers train (methods.md's 'trainable parameters')."""
        return int(sum(p.numel() for p in self.trainable_parameters()))


class SimpleTrainer(TrainerBase):
    """Builds data, model and evaluation from a config (Dassl ``SimpleTrainer``).

    Args:
        cfg: the resolved config.
        dm: an existing :class:`DataManager` (default: built from ``cfg``).
        backbone: an existing :class:`medpt.clip.ClipBackbone` (default: built from ``cfg``).
    """

    #: ``cfg.TRAINER.<CONFIG_KEY>`` holds the method's own options (``None``: no options).
    CONFIG_KEY: Optional[str] = None
    #: whether :meth:`train` runs optimisation (zero-shot and other training-free rows: False).
    REQUIRES_TRAINING = True

    @classmethod
    def config_defaults(cls) -> CN:
        """The method's ``cfg.TRAINER.<CONFIG_KEY>`` defaults, declared beside its code."""
        return CN()

    @classmethod
    def planned_epochs(cls, cfg) -> int:
        """Training epochs a run of ``cfg`` makes (``OPTIM.MAX_EPOCH``; a method with stages
        overrides it). Used by cost estimates without building the trainer."""
        return int(cfg.OPTIM.MAX_EPOCH)

    def __init__(self, cfg, dm: Optional[DataManager] = None, backbone=None):
        super().__init__()
        self.cfg = cfg
        self.check_cfg(cfg)
        self.device = torch.device("cuda" if cfg.USE_CUDA and torch.cuda.is_available() else "cpu")
        if cfg.SEED >= 0:
            set_random_seed(cfg.SEED)
        self.start_epoch = 0
        self.epoch = 0
        self.max_epoch = cfg.OPTIM.MAX_EPOCH
        self.output_dir = Path(cfg.OUTPUT_DIR)
        self.dm = dm if dm is not None else DataManager(cfg)
        self.loader_generator = getattr(self.dm.train_loader_x, "generator", None) if self.dm.train_loader_x else None
        self.train_loader_x = self.dm.train_loader_x
        self.test_loader = self.dm.test_loader
        self.val_loader = self.dm.val_loader
        self.num_classes = self.dm.num_classes
        self.classnames = self.dm.classnames
        self._backbone = backbone
        self.build_model()
        self.timings = {"train_s": 0.0, "eval_s": 0.0}

    # -- hooks for methods ---------------------------------------------------------------
    def check_cfg(self, cfg) -> None:
        """Validate method-specific options (override; raise ValueError naming the key)."""

    def build_model(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_backward(self, batch) -> Dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def method_cfg(self) -> CN:
        return self.cfg.TRAINER[self.CONFIG_KEY] if self.CONFIG_KEY else CN()

    @property
    def prec(self) -> str:
        return self.method_cfg.get("PREC", "fp32")

    def check_prec(self, cfg, hint: str = "") -> None:
        """Validate ``cfg.TRAINER.<CONFIG_KEY>.PREC`` (shared by the methods' :meth:`check_cfg`).

        Raises:
            ValueError: PREC is not ``fp32`` or ``amp`` (``hint`` is appended to the message).
        """
        prec = cfg.TRAINER[self.CONFIG_KEY].PREC
        if prec not in ("fp32", "amp"):
            raise ValueError(f"TRAINER.{self.CONFIG_KEY}.PREC must be 'fp32' or 'amp', got '{prec}'{hint}")

    def autocast(self):
        """bf16 autocast on CUDA when PREC is ``amp`` (fp32 master weights); fp32 otherwise."""
        if self.prec == "amp" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def get_backbone(self):
        """The CLIP backbone (built from ``cfg.MODEL.BACKBONE`` on first use)."""
        if self._backbone is None:
            from ..clip import build_backbone

            self._backbone = build_backbone(self.cfg, device=self.device)
        return self._backbone

    def build_optim_sched(self, params_or_module):
        """Optimiser and scheduler from ``cfg.OPTIM``."""
        optim = build_optimizer(params_or_module, self.cfg.OPTIM)
        return optim, build_lr_scheduler(optim, self.cfg.OPTIM)

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def parse_batch_test(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, C]`` logits (override to reuse per-test work)."""
        return self.model(images)

    def before_test(self) -> None:
        """Called once before a test pass (e.g. to precompute text features)."""

    @torch.no_grad()
    def image_features_for_analysis(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, E]`` the method's image features (t-SNE figures).

        Default: ``self.model.image_features`` if the model has it, else the frozen CLIP image
        encoder. Methods whose prompts change the image features override this.
        """
        fn = getattr(self.model, "image_features", None)
        if fn is None:
            fn = self.get_backbone().model.encode_image
        return fn(images).float()

    def after_test(self) -> None:
        """Called once after a test pass."""

    # -- loop ----------------------------------------------------------------------------
    def train(self, resume: bool = False) -> None:
        """Train from epoch 0, or from the latest checkpoint under OUTPUT_DIR when ``resume``."""
        if not self.REQUIRES_TRAINING:
            return
        if resume or self.cfg.RESUME:
            self.start_epoch = self.resume_model_if_exist(self.cfg.RESUME or self.output_dir)
        t0 = time.time()
        for self.epoch in range(self.start_epoch, self.max_epoch):
            self.before_epoch()
            self.run_epoch()
            self.after_epoch()
        self.timings["train_s"] += time.time() - t0

    def before_epoch(self) -> None:
        pass

    def after_epoch(self) -> None:
        freq = self.cfg.TRAIN.CHECKPOINT_FREQ
        last = self.epoch + 1 == self.max_epoch
        if freq > 0 and ((self.epoch + 1) % freq == 0 or last):
            self.save_model(self.epoch, self.output_dir)

    @torch.no_grad()
    def test(self, split: Optional[str] = None) -> Dict:
        """Evaluate on ``split`` (default ``TEST.SPLIT``) and return the metrics dict of
        :func:`medpt.metrics.compute_classification_metrics`.

        Raises:
            ValueError: ``split`` is not ``val`` or ``test``.
        """
        split = split or self.cfg.TEST.SPLIT
        if split not in ("val", "test"):
            raise ValueError(f"TEST.SPLIT must be 'val' or 'test', got '{split}'")
        loader = self.val_loader if split == "val" else self.test_loader
        t0 = time.time()
        for name in self.get_model_names():
            self._models[name].eval()
        if hasattr(self, "model"):
            self.model.eval()
        self.before_test()
        evaluator = build_evaluator(self.cfg.TEST.EVALUATOR, self.classnames)
        for batch in loader:
            images, y = self.parse_batch_test(batch)
            with self.autocast():
                evaluator.process(self.model_inference(images), y)
        self.after_test()
        metrics = evaluator.evaluate()
        metrics["split"] = split
        self.timings["eval_s"] += time.time() - t0
        return metrics


class TrainerX(SimpleTrainer):
    """Trainer over labelled data only (Dassl ``TrainerX``)."""

    def run_epoch(self) -> None:
        self.set_model_mode("train")
        if hasattr(self, "model"):
            self.model.train()
            self.freeze_modes()
        lr = self.get_current_lr()
        t0 = time.time()
        losses, accs, n = 0.0, 0.0, 0
        num_batches = len(self.train_loader_x)
        for self.batch_idx, batch in enumerate(self.train_loader_x):
            out = self.forward_backward(batch)
            bs = batch["label"].shape[0]
            losses += out["loss"] * bs
            accs += out.get("acc", float("nan")) * bs
            n += bs
            if self.batch_idx + 1 == num_batches:
                self.update_lr()
        rec = {"epoch": self.epoch + 1, "loss": losses / max(n, 1), "acc": accs / max(n, 1), "lr": lr,
               "time_s": time.time() - t0}
        self.history.append(rec)
        if self.cfg.VERBOSE:
            log.info("epoch [%d/%d] loss %.4f acc %.2f lr %.3e", rec["epoch"], self.max_epoch,
                     rec["loss"], rec["acc"], lr)

    def freeze_modes(self) -> None:
        """Put frozen parts back in eval mode after ``model.train()`` (override if needed).

        By default every submodule without a trainable parameter goes to eval mode, so frozen
        CLIP towers never run dropout or update statistics."""
        for m in self.model.modules():
            if m is self.model:
                continue
            if not any(p.requires_grad for p in m.parameters(recurse=True)):
                m.eval()


class ClassTextCacheMixin:
    """Opt-in: compute the class text features once per test pass instead of once per batch.

    For methods whose class features do not depend on the image: :meth:`before_test` stores
    :meth:`class_text_features` (under ``torch.no_grad`` and the method's :meth:`autocast`) in
    ``self._test_text``, :meth:`after_test` drops it, and :meth:`model_inference` passes it to
    ``self.model(images, text_features=...)``. Put the mixin first among the bases
    (``class M(ClassTextCacheMixin, TrainerX)``). Source: the official trainers recompute the text
    features per test batch; the numbers are the same, only the repeated work goes.

    Hooks: override :meth:`class_text_features` (return ``None`` to compute per batch, e.g. for
    image-conditioned prompts) and/or :meth:`model_inference` (another model signature).
    """

    _test_text = None

    def class_text_features(self) -> Optional[torch.Tensor]:
        """``[C, E]`` class text features for the test pass (default ``self.model.text_features()``)."""
        return self.model.text_features()

    def before_test(self) -> None:
        super().before_test()
        with torch.no_grad(), self.autocast():
            self._test_text = self.class_text_features()

    def after_test(self) -> None:
        self._test_text = None
        super().after_test()

    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W] -> [B, C]`` logits with the cached class text features."""
        return self.model(images, text_features=self._test_text)

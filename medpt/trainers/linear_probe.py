"""Linear probe on frozen CLIP image features (a reference row).

Source: Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
ICML 2021 §3.2 and Appendix A.3 (L-BFGS logistic regression on the image encoder's features,
no augmentation, inverse regularisation strength C found by a hyper-parameter search);
``openai/CLIP`` README (``LogisticRegression(random_state=0, C=0.316, max_iter=1000)`` on
``encode_image`` features); ``KaiyangZhou/CoOp:lpclip/`` (CoOp's linear-probe baseline).

Training: training images through the **test** pipeline (resize + centre crop, as CLIP's
protocol), unnormalised ``encode_image`` features ``[N, E]``, then scikit-learn's
``LogisticRegression`` (L-BFGS, multinomial, ``MAX_ITER`` 1000). ``C``: a positive value is
used as is; ``C <= 0`` (default) searches ``C_GRID`` by stratified k-fold cross-validation on the
training features (``CV_FOLDS``, fewer when a class has fewer images) and refits on all of them.
Logits: ``X @ coef^T + intercept`` ``[B, C]`` (for two classes: ``[0, z]``, whose softmax is
sklearn's sigmoid). Trainable parameters reported: C x E weights + C biases (two classes: E + 1,
what sklearn fits).

Why scikit-learn and not a torch head: it is CLIP's protocol (a convex problem solved to
convergence, deterministic, no learning-rate schedule to choose), and on cached features it
takes seconds on a CPU.

Deliberate differences from CLIP's / CoOp's code: C is searched by cross-validation on the
training split instead of on a validation split (the CILMP datasets have none: their "val" is
the test set, and choosing C on it would leak); features may come from the shared cache.
"""
from __future__ import annotations

import logging
from typing import Dict

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode as CN

from ..engine.registry import TRAINER_REGISTRY
from ._frozen import FrozenImageEncoderTrainer

log = logging.getLogger(__name__)


def fit_logistic_regression(x: np.ndarray, y: np.ndarray, num_classes: int, c: float = -1.0,
                            c_grid=(1e-6, 1e-4, 1e-2, 0.316, 1.0, 1e2, 1e4, 1e6), folds: int = 5,
                            max_iter: int = 1000, seed: int = 0):
    """Fit CLIP's linear probe.

    Args:
        x: ``[N, E]`` features. y: ``[N]`` labels in ``[0, num_classes)``.
        c: inverse regularisation strength; ``<= 0`` searches ``c_grid`` by stratified CV.

    Returns:
        ``(weight [K, E], bias [K], chosen C)`` as numpy arrays/float, with K = num_classes;
        classes absent from ``y`` get weight 0 and bias -1e4 (never predicted).

    Raises:
        ValueError: fewer than two classes in ``y``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    present = np.unique(y)
    if len(present) < 2:
        raise ValueError(f"linear probe: the training split has {len(present)} class(es); need at least 2")
    if c <= 0:
        k = int(min(folds, np.bincount(y)[present].min()))
        if k >= 2:
            cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
            scores = [cross_val_score(LogisticRegression(C=cc, max_iter=max_iter, random_state=seed), x, y, cv=cv).mean()
                      for cc in c_grid]
            c = float(c_grid[int(np.argmax(scores))])
        else:
            c = 0.316
            log.warning("linear probe: a class has < 2 training images; no C search, C = 0.316")
    clf = LogisticRegression(C=c, max_iter=max_iter, random_state=seed).fit(x, y)
    w = np.zeros((num_classes, x.shape[1]), dtype=np.float32)
    b = np.full((num_classes,), -1e4, dtype=np.float32)
    if clf.coef_.shape[0] == 1:  # binary: sklearn's decision_function z; logits [0, z]
        w[present[1]] = clf.coef_[0]
        b[present[1]] = clf.intercept_[0]
        b[present[0]] = 0.0
    else:
        w[clf.classes_] = clf.coef_
        b[clf.classes_] = clf.intercept_
    return w, b, c


@TRAINER_REGISTRY.register("LinearProbe", aliases=("linear-probe", "lp", "linear_probe"))
class LinearProbe(FrozenImageEncoderTrainer):
    """Linear-probe CLIP. Config ``TRAINER.LINEAR_PROBE``: C, C_GRID, CV_FOLDS, MAX_ITER."""

    CONFIG_KEY = "LINEAR_PROBE"
    TRAIN_PIPELINE = "test"  # CLIP's protocol: no augmentation for the probe's features

    @classmethod
    def config_defaults(cls) -> CN:
        c = CN()
        c.C = -1.0  # <= 0: stratified-CV search over C_GRID on the training split
        c.C_GRID = [1e-6, 1e-4, 1e-2, 0.316, 1.0, 1e2, 1e4, 1e6]
        c.CV_FOLDS = 5
        c.MAX_ITER = 1000
        c.PREC = "fp32"
        return c

    def build_model(self) -> None:
        dim = int(self.clip_model.visual.output_dim)
        self.model = nn.Linear(dim, self.num_classes).to(self.device)
        nn.init.zeros_(self.model.weight)
        nn.init.zeros_(self.model.bias)
        self.model.requires_grad_(False)
        self.register_model("head", self.model)
        self.chosen_c = None

    def count_trainable_params(self) -> int:
        """Scalars the logistic regression fits: C x (E + 1), or E + 1 for two classes."""
        k = 1 if self.num_classes == 2 else self.num_classes
        return int(k * (self.model.in_features + 1))

    def train(self, resume: bool = False) -> None:
        """Extract training features (test pipeline; cached when enabled) and fit the probe."""
        import time

        t0 = time.time()
        bank = self.feature_bank("train", pipeline="test")
        c = self.method_cfg
        w, b, chosen = fit_logistic_regression(bank.features[0].numpy(), bank.labels.numpy(), self.num_classes,
                                               c=float(c.C), c_grid=tuple(c.C_GRID), folds=int(c.CV_FOLDS),
                                               max_iter=int(c.MAX_ITER), seed=max(int(self.cfg.SEED), 0))
        with torch.no_grad():
            self.model.weight.copy_(torch.from_numpy(w))
            self.model.bias.copy_(torch.from_numpy(b))
        self.chosen_c = chosen
        self.history.append({"epoch": 1, "C": chosen, "time_s": time.time() - t0})
        self.epoch = 0
        self.save_model(0, self.output_dir)
        self.timings["train_s"] += time.time() - t0

    def extra_state(self) -> Dict:
        return {"C": self.chosen_c}

    def forward_backward(self, batch):  # pragma: no cover - fitted in closed form
        raise RuntimeError("the linear probe is fitted by train(), not by gradient steps")

    def inference_features(self, feats: torch.Tensor) -> torch.Tensor:
        return self.model(feats.float())

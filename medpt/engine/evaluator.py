"""Evaluators (Dassl ``dassl/evaluation/evaluator.py``), registered by name.

``Classification`` accumulates logits and labels over batches and returns the suite's metrics
(:func:`medpt.metrics.compute_classification_metrics`).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..metrics import compute_classification_metrics
from .registry import EVALUATOR_REGISTRY


@EVALUATOR_REGISTRY.register()
class Classification:
    """Accumulate ``[B, C]`` logits and ``[B]`` labels; :meth:`evaluate` returns the metrics dict."""

    def __init__(self, classnames: Optional[Sequence[str]] = None):
        self.classnames = classnames
        self.reset()

    def reset(self) -> None:
        self._logits: List[np.ndarray] = []
        self._labels: List[np.ndarray] = []

    def process(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self._logits.append(logits.detach().float().cpu().numpy())
        self._labels.append(labels.detach().cpu().numpy())

    def evaluate(self) -> Dict:
        return compute_classification_metrics(np.concatenate(self._labels), np.concatenate(self._logits),
                                              self.classnames)


def build_evaluator(name: str, classnames: Optional[Sequence[str]] = None):
    """The evaluator registered as ``name`` (``cfg.TEST.EVALUATOR``)."""
    return EVALUATOR_REGISTRY.get(name)(classnames)

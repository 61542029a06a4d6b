"""The suite's classification metrics, with pinned definitions.

All four headline metrics are reported in percent (0-100), as the CILMP paper's tables do:

* ``acc``: top-1 accuracy.
* ``macro_f1``: F1 averaged over the **full label set** ``0..C-1`` (scikit-learn
  ``f1_score(average="macro", labels=range(C), zero_division=0)``): a class that is never
  predicted and never present counts as F1 = 0. Dassl instead averages over the labels present;
  we state ours because small test sets can miss a class.
* ``auc``: one-vs-rest macro ROC-AUC from softmax probabilities. For each class with at least one
  positive and one negative test sample, the ROC-AUC of its probability column; the mean over
  those classes. A class absent from the test labels has no defined AUC and is **left out of the
  mean** (``auc_classes`` records how many were used). With two classes this is the usual binary
  AUC of the positive class's probability. NaN if no class qualifies.
* ``kappa``: Cohen's kappa, unweighted (as the paper); ``kappa_quadratic`` is the
  quadratic-weighted variant, an extra for ordinal grading sets (APTOS).

Also returned: ``per_class`` accuracy (recall) with counts, and the confusion matrix
(rows = true class, columns = predicted class, raw counts).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix, f1_score, roc_auc_score

#: Headline metrics in table order, with their display names.
METRICS = (("acc", "ACC"), ("macro_f1", "macro-F1"), ("auc", "AUC"), ("kappa", "Kappa"))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of ``[N, C]`` logits, numerically stable."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def ovr_macro_auc(labels: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """One-vs-rest macro AUC over the classes that have both positives and negatives.

    Args:
        labels: ``[N]`` integer labels.
        probs: ``[N, C]`` class probabilities.

    Returns:
        ``(auc in [0, 1] or NaN, number of classes averaged)``.
    """
    aucs = []
    for c in range(probs.shape[1]):
        pos = labels == c
        if pos.any() and (~pos).any():
            aucs.append(roc_auc_score(pos.astype(int), probs[:, c]))
    if not aucs:
        return float("nan"), 0
    return float(np.mean(aucs)), len(aucs)


def compute_classification_metrics(labels: Sequence[int], logits: np.ndarray,
                                   classnames: Optional[Sequence[str]] = None) -> Dict:
    """Every metric of the suite from test labels and logits.

    Args:
        labels: ``[N]`` true labels in ``[0, C)``.
        logits: ``[N, C]`` scores; probabilities are their softmax.
        classnames: ``C`` names for ``per_class``; default ``"class_<i>"``.

    Returns:
        dict with ``acc, macro_f1, auc, kappa, kappa_quadratic`` (percent), ``auc_classes``,
        ``n``, ``per_class`` (list of ``{"classname", "acc", "n"}``; ``acc`` is NaN for a class
        with no test sample) and ``confusion_matrix`` (``C x C`` list of ints).

    Raises:
        ValueError: shapes disagree, or a label is outside ``[0, C)``.
    """
    y = np.asarray(labels, dtype=int)
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] != y.shape[0]:
        raise ValueError(f"logits must be [N, C] with N = len(labels); got {logits.shape} and {y.shape}")
    n, c = logits.shape
    if n == 0:
        raise ValueError("no test samples")
    if y.min() < 0 or y.max() >= c:
        raise ValueError(f"labels must lie in [0, {c}); got range [{y.min()}, {y.max()}]")
    names = list(classnames) if classnames is not None else [f"class_{i}" for i in range(c)]
    probs = softmax(logits)
    pred = logits.argmax(axis=1)
    labels_all = list(range(c))
    cm = confusion_matrix(y, pred, labels=labels_all)
    auc, auc_n = ovr_macro_auc(y, probs)

    def _kappa(weights=None) -> float:
        k = cohen_kappa_score(y, pred, labels=labels_all, weights=weights)
        return 0.0 if math.isnan(k) else float(k)  # all-one-class predictions and labels

    per_class: List[Dict] = []
    for i in range(c):
        ni = int(cm[i].sum())
        per_class.append({"classname": names[i], "acc": 100.0 * cm[i, i] / ni if ni else float("nan"), "n": ni})
    return {
        "acc": 100.0 * float((pred == y).mean()),
        "macro_f1": 100.0 * float(f1_score(y, pred, labels=labels_all, average="macro", zero_division=0)),
        "auc": 100.0 * auc,
        "auc_classes": auc_n,
        "kappa": 100.0 * _kappa(),
        "kappa_quadratic": 100.0 * _kappa("quadratic"),
        "n": int(n),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
    }

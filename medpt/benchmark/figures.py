"""Figures from records (matplotlib, Agg backend): the paper's cost, per-class, label-ratio and
t-SNE figures.

* :func:`gflops_vs_accuracy`: inference GFLOPs per image added over CoOp (x) against mean ACC over
  the datasets (y), marker area ~ trainable parameters (the paper's efficiency figure).
* :func:`per_class_bars`: per-class accuracy of chosen rows on one dataset (class-imbalance study).
* :func:`label_ratio_curves`: ACC against the fraction of labelled training data.
* :func:`tsne_two_classes`: t-SNE (scikit-learn) of test image features of two chosen classes,
  read from the ``test_features.safetensors`` a run saved (the paper's bacterial vs viral
  pneumonia figure).
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .tables import row_name  # noqa: E402

_WARN = "random-init backbone: numbers test the plumbing only"


def _finish(fig, ax, records: List[Dict], path: Path) -> Path:
    if any(not r["backbone"].get("pretrained", True) for r in records):
        ax.text(0.5, 0.5, _WARN, transform=ax.transAxes, ha="center", va="center", fontsize=11,
                color="red", alpha=0.35, rotation=20)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def gflops_vs_accuracy(records: List[Dict], path: Path, reference: str = "CoOp") -> Optional[Path]:
    """Scatter of GFLOPs added over ``reference`` vs mean ACC; ``None`` if no record has a cost."""
    acc, gfl, params = defaultdict(list), defaultdict(list), {}
    for r in records:
        if not r.get("cost"):
            continue
        acc[row_name(r)].append(r["metrics"]["acc"])
        gfl[row_name(r)].append(r["cost"]["image_gflops"])
        params[row_name(r)] = r.get("trainable_params") or 0
    if not acc:
        return None
    base = float(np.mean(gfl[reference])) if reference in gfl else 0.0
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for m in sorted(acc):
        x, y = float(np.mean(gfl[m])) - base, float(np.mean(acc[m]))
        ax.scatter([x], [y], s=30 + 200 * math.log10(1 + params[m]) / 7, alpha=0.7)
        ax.annotate(m, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel(f"inference GFLOPs per image added over {reference}" if base else "inference GFLOPs per image")
    ax.set_ylabel("mean ACC over datasets (%)")
    ax.grid(alpha=0.3)
    return _finish(fig, ax, records, Path(path))


def per_class_bars(records: List[Dict], dataset: str, path: Path, rows: Optional[Sequence[str]] = None) -> Optional[Path]:
    """Grouped bars: per-class accuracy (mean over seeds) of ``rows`` on ``dataset``."""
    recs = [r for r in records if r["dataset"] == dataset and (not rows or row_name(r) in rows)]
    if not recs:
        return None
    names = recs[0]["classnames"]
    by = defaultdict(list)
    for r in recs:
        by[row_name(r)].append([pc["acc"] for pc in r["per_class"]])
    order = [m for m in (rows or sorted(by)) if m in by]
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(names) + 2), 4))
    width = 0.8 / len(order)
    for i, m in enumerate(order):
        vals = np.nanmean(np.asarray(by[m], dtype=float), axis=0)
        ax.bar(np.arange(len(names)) + i * width, vals, width, label=m)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2)
    ax.set_xticklabels(names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("per-class accuracy (%)")
    ax.set_title(dataset)
    ax.legend(fontsize=8)
    return _finish(fig, ax, recs, Path(path))


def label_ratio_curves(records: List[Dict], dataset: str, path: Path) -> Optional[Path]:
    """ACC (mean over seeds) against the label ratio, one line per row."""
    by = defaultdict(lambda: defaultdict(list))
    recs = [r for r in records if r["dataset"] == dataset]
    for r in recs:
        by[row_name(r)][r.get("label_ratio", 1.0)].append(r["metrics"]["acc"])
    if not by:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for m in sorted(by):
        qs = sorted(by[m])
        ax.plot([100 * q for q in qs], [np.mean(by[m][q]) for q in qs], marker="o", label=m)
    ax.set_xlabel("labelled training data (%)")
    ax.set_ylabel("ACC (%)")
    ax.set_title(dataset)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _finish(fig, ax, recs, Path(path))


def tsne_two_classes(features_file: Path, classes: Sequence[int], classnames: Sequence[str], path: Path,
                     seed: int = 0, record: Optional[Dict] = None) -> Path:
    """t-SNE of the test image features of two classes.

    Args:
        features_file: safetensors with ``features`` ``[N, E]`` and ``labels`` ``[N]``.
        classes: the two class indices to show.

    Raises:
        ValueError: fewer than 2 samples of the chosen classes.
    """
    from safetensors.torch import load_file
    from sklearn.manifold import TSNE

    data = load_file(str(features_file))
    f, y = data["features"].numpy(), data["labels"].numpy()
    keep = np.isin(y, list(classes))
    if keep.sum() < 3:
        raise ValueError(f"{features_file}: fewer than 3 test samples of classes {list(classes)}")
    emb = TSNE(n_components=2, perplexity=min(30.0, max(2.0, keep.sum() / 4)), random_state=seed,
               init="pca").fit_transform(f[keep])
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for c in classes:
        sel = y[keep] == c
        ax.scatter(emb[sel, 0], emb[sel, 1], s=12, label=classnames[c], alpha=0.8)
    ax.legend()
    ax.set_xticks([])
    ax.set_yticks([])
    if record:
        ax.set_title(f"{row_name(record)} on {record['dataset']} (seed {record['seed']})", fontsize=9)
    return _finish(fig, ax, [record] if record else [], Path(path))

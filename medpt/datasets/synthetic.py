"""A linearly separable synthetic image set for tests and smoke runs (not registered).

Each class ``k`` is a solid colour (a fixed RGB per class) plus small Gaussian pixel noise, so
any image encoder, even a random one, maps the classes to separable clusters.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..engine.data import DatasetBase, Datum

_COLOURS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 220, 40), (200, 40, 220), (40, 220, 220),
            (250, 250, 250), (10, 10, 10)]


def write_separable_images(folder: Path, n_per_class: int, n_classes: int, size: int = 40, seed: int = 0,
                           prefix: str = "") -> list:
    """Write ``n_per_class`` PNGs per class into ``folder``; returns ``[(path, label)]``."""
    if n_classes > len(_COLOURS):
        raise ValueError(f"at most {len(_COLOURS)} synthetic classes")
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(n_classes):
        for i in range(n_per_class):
            arr = np.clip(np.array(_COLOURS[k], dtype=np.float64) + rng.normal(0, 12, (size, size, 3)), 0, 255)
            p = folder / f"{prefix}class{k}_{i:03d}.png"
            Image.fromarray(arr.astype(np.uint8)).save(p)
            out.append((p, k))
    return out


class SeparableSynthetic(DatasetBase):
    """Synthetic dataset: solid-colour classes; pass it to ``DataManager(cfg, dataset=...)``.

    Args:
        folder: where to write the PNGs.
        classnames: class names (their count sets the number of classes).
        n_train, n_test: images per class.
    """

    modality = "synthetic"

    def __init__(self, folder: Path, classnames: Sequence[str] = ("red", "green"), n_train: int = 8,
                 n_test: int = 8, seed: int = 0):
        folder = Path(folder)
        c = len(classnames)
        tr = write_separable_images(folder / "train", n_train, c, seed=seed, prefix="tr_")
        te = write_separable_images(folder / "test", n_test, c, seed=seed + 1, prefix="te_")
        super().__init__([Datum(str(p), k, classnames[k]) for p, k in tr], None,
                         [Datum(str(p), k, classnames[k]) for p, k in te], classnames=list(classnames))

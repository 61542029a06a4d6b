"""Few-shot (K per class) and label-ratio (10 %, 30 %) training subsets, seeded and cached.

Few-shot follows Dassl's ``DatasetBase.generate_fewshot_dataset`` (``repeat=False``): per class,
K items drawn without replacement; a class with fewer than K items keeps all of them. Unlike
Dassl (``random.sample`` on the global state), the draw uses its own
``numpy.random.Generator(PCG64(seed))`` over the class's items sorted by path, classes in label
order, so it does not depend on anything else seeded in the run.

Label ratio (paper's data-efficiency study: 10 % / 30 % of the labelled training data): the
subset size ``round(ratio * N)`` is allocated across classes by largest remainder
(:func:`~medpt.datasets.splits.largest_remainder`), at least one item per non-empty class,
then drawn per class as above.

Either subset is cached as JSON (list of relative paths) under
``<split folder>/fewshot/<id>_<split hash[:16]>_<k16|ratio0.1>_seed<seed>.json``; the key holds
the split hash, K (or ratio) and the seed, so a different split never reuses a cache. A cached
file is checked against the training list (every path must be in it).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..engine.data import Datum
from .splits import _sha, largest_remainder


def _per_class(items: Sequence[Datum]) -> Dict[int, List[Datum]]:
    out: Dict[int, List[Datum]] = {}
    for d in sorted(items, key=lambda d: d.impath):
        out.setdefault(d.label, []).append(d)
    return out


def sample_few_shot(items: Sequence[Datum], k: int, seed: int) -> List[Datum]:
    """K items per class (all of a class that has fewer), seeded; returned sorted by path.

    Raises:
        ValueError: ``k < 1``.
    """
    if k < 1:
        raise ValueError(f"few-shot: K must be >= 1, got {k}")
    rng = np.random.Generator(np.random.PCG64(seed))
    out = []
    for label in sorted(by := _per_class(items)):
        cls = by[label]
        if len(cls) <= k:
            out += cls
        else:
            out += [cls[int(i)] for i in rng.choice(len(cls), size=k, replace=False)]
    return sorted(out, key=lambda d: d.impath)


def sample_label_ratio(items: Sequence[Datum], ratio: float, seed: int) -> List[Datum]:
    """``round(ratio * N)`` items, stratified by largest remainder (>= 1 per class), seeded.

    Raises:
        ValueError: ``ratio`` outside ``(0, 1]``.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"label ratio must be in (0, 1], got {ratio}")
    by = _per_class(items)
    labels = sorted(by)
    counts = [len(by[l]) for l in labels]
    total = max(len(labels), int(round(ratio * sum(counts))))
    alloc = largest_remainder(counts, min(total, sum(counts)))
    # at least one per class: take seats from the largest allocations if needed
    for i, a in enumerate(alloc):
        if a == 0 and counts[i] > 0:
            j = max(range(len(alloc)), key=lambda t: (alloc[t], -t))
            alloc[j] -= 1
            alloc[i] = 1
    rng = np.random.Generator(np.random.PCG64(seed))
    out = []
    for l, n in zip(labels, alloc):
        cls = by[l]
        out += [cls[int(i)] for i in sorted(rng.choice(len(cls), size=n, replace=False))]
    return sorted(out, key=lambda d: d.impath)


def cache_key(dataset: str, split_hash: str, seed: int, k: int = -1, ratio: float = 1.0) -> str:
    """File stem of a subset cache: dataset, split hash prefix, K or ratio, seed."""
    what = f"k{k}" if k > 0 else f"ratio{ratio:g}"
    return f"{dataset}_{split_hash[:16]}_{what}_seed{seed}"


def _rel(d: Datum, root: Optional[Path]) -> str:
    if root is None:
        return d.impath
    try:
        return Path(d.impath).relative_to(root).as_posix()
    except ValueError:
        return d.impath


def subset_train(train: Sequence[Datum], dataset: str, split_hash: str, seed: int, *, k: int = -1,
                 ratio: float = 1.0, cache_dir: Optional[Path] = None,
                 root: Optional[Path] = None) -> Tuple[List[Datum], dict]:
    """Few-shot (``k > 0``) or label-ratio (``ratio < 1``) subset of ``train``, cached.

    Returns:
        ``(subset, info)`` with ``info = {"kind", "k" | "ratio", "seed", "n", "sha256", "cache"}``.

    Raises:
        ValueError: both ``k > 0`` and ``ratio < 1``; or a cache file naming a path that is not in
            the training list (names the cache file; delete it to redraw).
    """
    if k > 0 and ratio < 1:
        raise ValueError("DATASET.NUM_SHOTS and DATASET.LABEL_RATIO cannot both be set; choose one")
    key = cache_key(dataset, split_hash, seed, k, ratio)
    by_rel = {_rel(d, root): d for d in train}
    path = cache_dir / f"{key}.json" if cache_dir is not None else None
    subset = None
    if path is not None and path.is_file():
        obj = json.loads(path.read_text())
        bad = [p for p in obj["items"] if p not in by_rel]
        if bad:
            raise ValueError(f"{dataset}: cached subset {path} lists {len(bad)} item(s) not in the training "
                             f"split (e.g. {bad[0]}); delete the file to redraw it")
        subset = [by_rel[p] for p in obj["items"]]
    if subset is None:
        subset = sample_few_shot(train, k, seed) if k > 0 else sample_label_ratio(train, ratio, seed)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"dataset": dataset, "split_sha256": split_hash, "k": k,
                                            "ratio": ratio, "seed": seed,
                                            "items": [_rel(d, root) for d in subset]}, indent=0) + "\n")
            except OSError as err:
                warnings.warn(f"{dataset}: could not cache the subset in {path} ({err})")
    info = {"kind": "few_shot" if k > 0 else "label_ratio", "seed": seed, "n": len(subset),
            "sha256": _sha(sorted([_rel(d, root), d.label] for d in subset)),
            "cache": str(path) if path is not None else ""}
    info.update({"k": k} if k > 0 else {"ratio": ratio})
    return subset, info


def apply_train_subset(cfg, train: List[Datum], rows, split_hash: str, dataset: str,
                       cache_dir: Optional[Path], root: Optional[Path]) -> Tuple[List[Datum], Optional[dict]]:
    """Apply ``DATASET.NUM_SHOTS`` / ``DATASET.LABEL_RATIO`` of ``cfg`` (seed ``cfg.SEED``, or 1
    when unset) to ``train``; ``(train, None)`` when neither is set."""
    k = int(cfg.DATASET.NUM_SHOTS)
    ratio = float(getattr(cfg.DATASET, "LABEL_RATIO", 1.0))
    if k <= 0 and ratio >= 1:
        return train, None
    seed = int(cfg.SEED) if int(cfg.SEED) >= 0 else 1
    return subset_train(train, dataset, split_hash, seed, k=k, ratio=ratio, cache_dir=cache_dir, root=root)

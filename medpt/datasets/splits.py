"""Deterministic split generator and split files (CoOp JSON + ``meta``).

Spec: ``docs/datasets.md`` §"Splits" of this repository (from the project's dataset research
note, §2). A split file is JSON::

    {"train":  [[relative_posix_path, label, classname], ...],
     "test":   [...],
     "unused": [...],          # optional: labelled files the split deliberately leaves out
                               # (official validation sets, images outside a paper subset)
     "meta":   {"dataset", "protocol", "seed", "counts_per_class", "source_items_sha256",
                "split_sha256", "created_by", "note"?}}

The ``train``/``test`` lists are CILMP/CoOp compatible (``OxfordPets.read_split`` layout); paths
are relative to ``<DATASET.ROOT>/<id>/``.

Generator (for datasets without an official split: CPN-X-ray, Kvasir, ODIR, DermaMNIST-paper and
APTOS when only the competition files are present):

1. items ``(relative path, label)`` are normalised to POSIX and sorted;
2. one ``numpy.random.Generator(PCG64(seed))`` per dataset; classes in label order, each class's
   sorted items are permuted with it (``rng.permutation``);
3. the train total is allocated across classes by largest-remainder (Hamilton) apportionment of
   ``n_c * N_train / N`` (ties: smaller label first); the first ``n_train_c`` permuted items of a
   class go to train, the rest to test. An optional first stage draws a stratified subset
   (DermaMNIST-paper: 8,000 of 10,015) the same way; the rest is ``unused``.

This reproduces the paper's per-split totals exactly (tests assert the per-class numbers of
datasets.md).
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

#: (relative POSIX path, integer label)
Item = Tuple[str, int]
#: {"train": [...], "test": [...], "unused": [...], "meta": {...}} with items as (path, label)
SplitRows = Dict[str, object]

SPLIT_KEYS = ("train", "val", "test", "unused")


def largest_remainder(counts: Sequence[int], total: int) -> List[int]:
    """Hamilton apportionment of ``total`` seats proportionally to ``counts``.

    Each class gets ``floor(n_c * total / N)``; the seats left go to the largest remainders,
    ties broken by the smaller index. Integer arithmetic only (no float rounding).

    Args:
        counts: items per class, ``N = sum(counts) > 0``.
        total: seats to allocate, ``0 <= total <= N``.

    Returns:
        Per-class allocation summing to ``total``, each ``<= counts[c]``.

    Raises:
        ValueError: ``total`` outside ``[0, N]`` or ``N == 0``.
    """
    n = int(sum(counts))
    if n <= 0 or not 0 <= total <= n:
        raise ValueError(f"largest_remainder: cannot allocate {total} of {n} items")
    base = [c * total // n for c in counts]
    rem = [c * total % n for c in counts]
    left = total - sum(base)
    order = sorted(range(len(counts)), key=lambda i: (-rem[i], i))
    for i in order[:left]:
        base[i] += 1
    return base


def _sha(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def split_sha256(rows: SplitRows) -> str:
    """sha256 of the canonical ``{"test": sorted [[path, label]], "train": ...}`` of a split.

    Equal to :func:`medpt.engine.data.compute_split_hash` of the same split with paths relative
    to the dataset folder, so the value in ``meta`` is the one run records carry.
    """
    canon = {k: sorted([str(p), int(l)] for p, l in rows[k]) for k in ("test", "train")}
    return _sha(canon)


def counts_per_class(rows: SplitRows, classnames: Sequence[str]) -> Dict[str, Dict[str, int]]:
    """``{split: {classname: count}}`` for every list in ``rows`` (classes in label order)."""
    out = {}
    for k in SPLIT_KEYS:
        if k in rows:
            c = [0] * len(classnames)
            for _, label in rows[k]:
                c[label] += 1
            out[k] = {classnames[i]: c[i] for i in range(len(classnames))}
    return out


def generate_split(items: Sequence[Item], num_classes: int, n_train: int, seed: int = 0,
                   n_subset: Optional[int] = None) -> SplitRows:
    """Stratified, seeded train/test split reproducing given totals (see module docstring).

    Args:
        items: ``(relative path, label)`` pairs; order does not matter (they are sorted).
        num_classes: number of classes ``C``; labels must lie in ``[0, C)``.
        n_train: train total (the paper's count).
        seed: PCG64 seed (the project uses 0).
        n_subset: if given, first draw a stratified subset of this size; items outside it are
            returned under ``"unused"``.

    Returns:
        ``{"train": [...], "test": [...], "unused": [...]}``, each sorted by path.

    Raises:
        ValueError: duplicate paths, a label outside ``[0, C)``, or impossible totals.
    """
    items = sorted((Path(p).as_posix(), int(l)) for p, l in items)
    paths = [p for p, _ in items]
    if len(set(paths)) != len(paths):
        dup = sorted({p for p in paths if paths.count(p) > 1})[:5]
        raise ValueError(f"generate_split: duplicate items {dup}")
    by_class: List[List[Item]] = [[] for _ in range(num_classes)]
    for p, l in items:
        if not 0 <= l < num_classes:
            raise ValueError(f"generate_split: label {l} of {p} outside [0, {num_classes})")
        by_class[l].append((p, l))
    counts = [len(b) for b in by_class]
    total = sum(counts)
    pool_n = counts if n_subset is None else largest_remainder(counts, n_subset)
    train_n = largest_remainder(pool_n, n_train)
    rng = np.random.Generator(np.random.PCG64(seed))
    train, test, unused = [], [], []
    for c in range(num_classes):
        order = rng.permutation(counts[c]) if counts[c] else []
        for rank, idx in enumerate(order):
            it = by_class[c][int(idx)]
            if rank < train_n[c]:
                train.append(it)
            elif rank < pool_n[c]:
                test.append(it)
            else:
                unused.append(it)
    assert len(train) == n_train and len(train) + len(test) == (total if n_subset is None else n_subset)
    return {"train": sorted(train), "test": sorted(test), "unused": sorted(unused)}


def scaled_total(n_items: int, paper_total: int, paper_part: int) -> int:
    """``paper_part`` when ``n_items == paper_total``, else ``round(n_items * paper_part / paper_total)``
    (a miniature or partial download keeps the paper's ratio)."""
    if n_items == paper_total:
        return paper_part
    return int(round(n_items * paper_part / paper_total))


def make_meta(rows: SplitRows, dataset: str, protocol: str, classnames: Sequence[str],
              seed: Optional[int], created_by: str, note: str = "") -> dict:
    """The ``meta`` object of a split file (counts, hashes, provenance)."""
    all_items = sorted([p, int(l)] for k in SPLIT_KEYS if k in rows for p, l in rows[k])
    meta = {"dataset": dataset, "protocol": protocol, "seed": seed,
            "counts_per_class": counts_per_class(rows, classnames),
            "source_items_sha256": _sha(all_items),
            "split_sha256": split_sha256(rows), "created_by": created_by}
    if note:
        meta["note"] = note
    return meta


def write_split_file(path: Path, rows: SplitRows, classnames: Sequence[str], meta: dict) -> bool:
    """Write ``rows`` as a split file; returns False (with a warning) when the folder is read-only."""
    obj = {}
    for k in SPLIT_KEYS:
        if k in rows and (rows[k] or k in ("train", "test")):
            obj[k] = [[p, int(l), classnames[l]] for p, l in sorted(rows[k])]
    obj["meta"] = meta
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(obj, indent=0) + "\n")
        tmp.replace(path)
        return True
    except OSError as err:
        warnings.warn(f"could not write the split file {path} ({err}); the split is used from memory")
        return False


def read_split_file(path: Path | str, num_classes: int, dataset: str) -> SplitRows:
    """Read a split file into ``{"train": [(path, label)], ..., "meta": {...}}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: invalid JSON, a malformed row or a label outside ``[0, num_classes)``
            (names the file, the list and the row).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: split file not found: {path}")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{dataset}: split file {path} is not valid JSON: {err}") from None
    if not isinstance(obj, dict) or "train" not in obj or "test" not in obj:
        raise ValueError(f"{dataset}: split file {path} needs both 'train' and 'test' lists")
    out: SplitRows = {"meta": obj.get("meta", {})}
    for k in SPLIT_KEYS:
        if k not in obj:
            continue
        rows = []
        for i, row in enumerate(obj[k]):
            if not (isinstance(row, (list, tuple)) and len(row) in (2, 3)):
                raise ValueError(f"{dataset}: {path} '{k}' row {i} is not [relpath, label, classname]: {row!r}")
            try:
                label = int(row[1])
            except (TypeError, ValueError):
                raise ValueError(f"{dataset}: {path} '{k}' row {i}: label {row[1]!r} is not an integer") from None
            if not 0 <= label < num_classes:
                raise ValueError(f"{dataset}: {path} '{k}' row {i}: label {label} outside [0, {num_classes}) "
                                 f"for {row[0]!r}")
            rows.append((str(row[0]), label))
        out[k] = rows
    return out

"""Data check: what is on disk versus the split file, every problem reported at once.

For each dataset under ``<root>/<id>/`` the check

1. says whether the dataset folder is present (and, if not, where to download it, its licence
   and the layout to unpack);
2. loads the split: the split file beside the data (``<root>/<id>/splits/<id>_<name>.json``)
   when it exists, otherwise the split the reader builds from the official metadata (nothing
   is written); a reader error (missing ground-truth file, bad label) is recorded, not raised;
3. lists **missing** files (in ``train``/``val``/``test`` of the split but not on disk),
   **unexpected** files (image files of the layout that the split does not list, ``unused``
   included) and **count mismatches** (per split totals against the paper's table and per-class
   counts where datasets.md gives them, or against ``expected`` when given).

``benchmark/run.py --check-data`` calls :func:`check_data_cli`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..engine.registry import DATASET_REGISTRY
from . import splits as S

#: the paper's 11 datasets, then the extras the check also covers
PAPER_DATASETS = ("adam", "aptos2019", "chaoyang", "cpn_xray", "dermamnist", "derm7pt", "fetal_us",
                  "isic2018", "kvasir", "odir", "pneumonia")
EXTRA_DATASETS = ("pneumoniamnist",)


@dataclass
class DatasetReport:
    """Result of :func:`check_dataset`.

    Attributes:
        dataset: dataset id. root: ``<root>/<id>``. present: the folder exists.
        split_file: the split file compared with (empty when the split was built in memory).
        counts: ``{"train": [per class], "test": [per class]}`` of the split (empty if unreadable).
        missing / unexpected: relative paths. problems: every other problem (reader errors,
        count mismatches), one line each. source / licence / layout: where to get it.
    """

    dataset: str
    root: str
    present: bool
    split_file: str = ""
    counts: Dict[str, List[int]] = field(default_factory=dict)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    problems: List[str] = field(default_factory=list)
    source: str = ""
    licence: str = ""
    layout: str = ""

    @property
    def ok(self) -> bool:
        return self.present and not (self.missing or self.unexpected or self.problems)

    def all_problems(self) -> List[str]:
        """Every problem as one line each (missing and unexpected files listed in full)."""
        out = list(self.problems)
        out += [f"missing file: {p}" for p in self.missing]
        out += [f"unexpected file: {p}" for p in self.unexpected]
        return out


def _counts(rows, key: str, num_classes: int) -> List[int]:
    c = [0] * num_classes
    for _, label in rows.get(key, []):
        c[label] += 1
    return c


def check_dataset(dataset: str, root: Path | str, expected: Optional[Dict[str, Sequence[int]]] = None) -> DatasetReport:
    """Check one dataset (see the module docstring).

    Args:
        dataset: registered id (e.g. ``"kvasir"``).
        root: the ``DATASET.ROOT`` folder.
        expected: per-class ``{"train": [...], "test": [...]}`` to compare with instead of the
            paper's counts (tests use the fixture's counts).

    Returns:
        A :class:`DatasetReport`; never raises for data problems.
    """
    from .. import datasets as _datasets  # noqa: F401  (registers readers)

    cls = DATASET_REGISTRY.get(dataset)
    droot = Path(root).expanduser() / cls.dataset_dir
    rep = DatasetReport(dataset, str(droot), droot.is_dir(), source=cls.source, licence=cls.licence,
                        layout=getattr(cls, "layout", ""))
    if not rep.present:
        return rep
    n = len(cls.classnames)
    rows = None
    path = cls.split_path(droot)
    try:
        if path.is_file():
            rows = S.read_split_file(path, n, dataset)
            rep.split_file = str(path)
        else:
            rows = cls.build_split(droot)
    except (FileNotFoundError, ValueError, KeyError) as err:
        rep.problems.append(f"cannot build the split: {err}")
    disk = cls.disk_files(droot)
    if rows is None:
        return rep
    listed = {p for k in ("train", "val", "test") for p, _ in rows.get(k, [])}
    known = listed | {p for p, _ in rows.get("unused", [])}
    rep.missing = sorted(listed - disk)
    rep.unexpected = sorted(disk - known)
    rep.counts = {k: _counts(rows, k, n) for k in ("train", "test")}
    if expected is not None:
        want_class = {k: list(v) for k, v in expected.items()}
        want_total = {k: sum(v) for k, v in expected.items()}
    else:
        want_class = {k: list(v) for k, v in (cls.class_counts or {}).items()}
        want_total = dict(zip(("train", "test"), cls.paper_counts))
    for k in ("train", "test"):
        got = rep.counts[k]
        if k in want_total and sum(got) != want_total[k]:
            rep.problems.append(f"count mismatch: {k} has {sum(got)} items, expected {want_total[k]}")
        if k in want_class and got != want_class[k]:
            diff = ", ".join(f"{cls.classnames[i]} {g} (expected {w})"
                             for i, (g, w) in enumerate(zip(got, want_class[k])) if g != w)
            rep.problems.append(f"count mismatch per class in {k}: {diff}")
    return rep


def check_all(root: Path | str, datasets: Sequence[str] = PAPER_DATASETS + EXTRA_DATASETS) -> List[DatasetReport]:
    """:func:`check_dataset` for each of ``datasets`` (default: the paper's 11 and the extras)."""
    return [check_dataset(d, root) for d in datasets]


def format_report(reports: Sequence[DatasetReport], max_files: int = 10) -> str:
    """Human-readable summary: one block per dataset (present / missing, problems, where to get it)."""
    lines = []
    for r in reports:
        if not r.present:
            lines.append(f"[MISSING] {r.dataset}: not found at {r.root}")
            lines.append(f"    download: {r.source}")
            lines.append(f"    licence:  {r.licence}")
            if r.layout:
                lines += ["    expected layout:"] + [f"      {l}" for l in r.layout.splitlines()]
            continue
        tr, te = (sum(r.counts.get(k, [])) for k in ("train", "test"))
        status = "OK" if r.ok else "PROBLEMS"
        lines.append(f"[{status}] {r.dataset}: {r.root} - train {tr} / test {te}"
                     + (f" (split file {r.split_file})" if r.split_file else " (split from the official metadata)"))
        for p in r.problems:
            lines.append(f"    {p}")
        for what, items in (("missing", r.missing), ("unexpected", r.unexpected)):
            if items:
                shown = ", ".join(items[:max_files]) + (f", ... ({len(items) - max_files} more)" if len(items) > max_files else "")
                lines.append(f"    {len(items)} {what} file(s): {shown}")
        if not r.ok:
            lines.append(f"    download: {r.source}")
    n_ok = sum(r.ok for r in reports)
    n_absent = sum(not r.present for r in reports)
    lines.append(f"{n_ok} of {len(reports)} datasets present and consistent; {n_absent} missing; "
                 f"{len(reports) - n_ok - n_absent} with problems.")
    return "\n".join(lines)


def check_data_cli(root: str) -> int:
    """Print :func:`format_report` of :func:`check_all` for ``root``.

    Returns:
        0 when every dataset is present and consistent, 1 otherwise.
    """
    reports = check_all(root)
    print(f"Data check of {Path(root).expanduser()}")
    print(format_report(reports))
    return 0 if all(r.ok for r in reports) else 1

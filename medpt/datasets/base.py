"""Shared machinery of the medical readers: split files, few-shot / label-ratio, data-check hooks.

A reader subclasses :class:`MedicalDataset`, sets the class attributes that describe the
dataset (``dataset_dir``, ``modality``, ``classnames`` = CILMP's strings in label order,
``prompt_names``, ``templates``, ``source``, ``licence``, ``paper_counts``) and implements

* :meth:`MedicalDataset.build_split` ``(root) -> {"train", "test", "unused"?: [(relpath, label)]}``
  from the files as downloaded (official split, or :func:`~medpt.datasets.splits.generate_split`);
* :meth:`MedicalDataset.disk_files` ``(root) -> set of relpaths`` of the image files its layout
  holds (what the data check compares with the split file).

On first use the split is written beside the data as ``<root>/<id>/splits/<id>_<name>.json``;
a generated split is read back from that file afterwards (so it never changes under a user),
an official split is rebuilt from the official metadata each time (the file is the record).
``DATASET.SPLIT_FILE`` replaces both. The dataset's ``split_hash`` is the sha256 of the full
split (:func:`~medpt.datasets.splits.split_sha256`); ``DATASET.NUM_SHOTS > 0`` or
``DATASET.LABEL_RATIO < 1`` then subsample the training list (:mod:`medpt.datasets.fewshot`),
described by ``train_subset``.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set

from ..engine.data import DatasetBase, Datum
from . import splits as S

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def is_image(p: Path) -> bool:
    """An image file by extension (case-insensitive), not a macOS ``._`` resource fork."""
    return p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("._")


def list_files(folder: Path, recursive: bool = False, exts: Sequence[str] = IMAGE_EXTS) -> List[Path]:
    """Sorted image files in ``folder`` (``[]`` if it does not exist)."""
    if not folder.is_dir():
        return []
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("._")
                  and "__MACOSX" not in p.parts)


def find_dir(root: Path, names: Iterable[str], max_depth: int = 3) -> Optional[Path]:
    """First folder (breadth-first, sorted) under ``root`` whose name matches one of ``names``
    case-insensitively, at depth ``<= max_depth`` (``root`` itself is depth 0); skips ``__MACOSX``."""
    wanted = {n.lower() for n in names}
    level = [root]
    for _ in range(max_depth + 1):
        nxt = []
        for d in level:
            if d.name.lower() in wanted and d != root:
                return d
            if d.is_dir():
                nxt += sorted(c for c in d.iterdir() if c.is_dir() and c.name != "__MACOSX")
        level = nxt
    return None


def read_csv_rows(path: Path, dataset: str, delimiter: Optional[str] = None) -> List[Dict[str, str]]:
    """Rows of a CSV file as dicts with stripped header names (``"Train "`` -> ``"Train"``).

    The delimiter is sniffed among ``,;\\t`` unless given. Raises FileNotFoundError naming
    the dataset when absent.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: file not found: {path}")
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    if delimiter is None:
        first = text.splitlines()[0] if text else ""
        delimiter = max(",;\t", key=first.count)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    rows = list(reader)
    if not rows:
        return []
    header = [h.strip() for h in rows[0]]
    return [dict(zip(header, (v.strip() for v in r))) for r in rows[1:] if any(v.strip() for v in r)]


def read_xlsx_rows(path: Path, dataset: str) -> List[Dict[str, str]]:
    """Rows of the first sheet of an XLSX file as dicts of strings (header names stripped).

    Needs ``openpyxl``. Integral floats are written without ``.0``.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{dataset}: file not found: {path}")
    try:
        import openpyxl
    except ImportError:  # pragma: no cover
        raise ImportError(f"{dataset}: reading {path} needs openpyxl (pip install openpyxl)") from None
    wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        rows = list(wb.worksheets[0].iter_rows(values_only=True))
    finally:
        wb.close()

    def s(v):
        if v is None:
            return ""
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v).strip()

    if not rows:
        return []
    header = [s(h) for h in rows[0]]
    return [dict(zip(header, map(s, r))) for r in rows[1:] if any(v is not None for v in r)]


def read_table(path: Path, dataset: str) -> List[Dict[str, str]]:
    """CSV or XLSX rows by extension."""
    return read_xlsx_rows(path, dataset) if path.suffix.lower() == ".xlsx" else read_csv_rows(path, dataset)


def data_root(cfg) -> Path:
    """``DATASET.ROOT`` expanded (``.`` when empty)."""
    return Path(cfg.DATASET.ROOT or ".").expanduser()


class MedicalDataset(DatasetBase):
    """Base of the suite's medical readers (see the module docstring).

    Class attributes (beyond :class:`~medpt.engine.data.DatasetBase`):
        prompt_names: cleaned alternative class names (label order), not used by default.
        paper_counts: ``(train, test)`` of the CILMP paper's table.
        class_counts: optional ``{"train": [...], "test": [...]}`` per-class counts expected on
            the full download (datasets.md).
        generated: whether the default split is generated (vs official).
        layout: the folder layout expected under ``<root>/<id>/`` (for messages and docs).
        seed: generator seed of a generated split.

    Raises (construction):
        FileNotFoundError: the dataset folder or a metadata / ground-truth file is missing (the
            message says what to download and where to put it).
        ValueError: a label outside the class list (names the file and row).
    """

    prompt_names: Sequence[str] = ()
    paper_counts = (0, 0)
    class_counts: Optional[Dict[str, Sequence[int]]] = None
    generated = False
    layout = ""
    seed = 0
    split_tag = ""  # file-name tag; default "generated" / "official"

    # ---------------------------------------------------------------- reader hooks
    @classmethod
    def build_split(cls, root: Path) -> S.SplitRows:  # pragma: no cover - abstract
        """``{"train": [(relpath, label)], "test": [...], "unused"?: [...]}`` from the files as
        downloaded under ``root`` (= ``<DATASET.ROOT>/<id>``)."""
        raise NotImplementedError

    @classmethod
    def disk_files(cls, root: Path) -> Set[str]:  # pragma: no cover - abstract
        """Relative POSIX paths of every image file the layout holds under ``root``."""
        raise NotImplementedError

    # ---------------------------------------------------------------- helpers
    @classmethod
    def dataset_id(cls) -> str:
        return cls.dataset_dir

    @classmethod
    def is_generated(cls, root: Path) -> bool:
        """Whether the default split for the data under ``root`` is generated (vs official)."""
        return cls.generated

    @classmethod
    def split_name(cls) -> str:
        return cls.split_tag or ("generated" if cls.generated else "official")

    @classmethod
    def split_path(cls, root: Path) -> Path:
        """Where the split file lives: ``<root>/splits/<id>_<name>.json``."""
        return root / "splits" / f"{cls.dataset_id()}_{cls.split_name()}.json"

    @classmethod
    def missing_message(cls, root: Path, what: str = "") -> str:
        what = what or f"dataset folder {root}"
        return (f"{cls.dataset_id()}: {what} not found. Download it from {cls.source} "
                f"(licence: {cls.licence}) and unpack it under {root} as downloaded"
                + (f"; expected layout:\n{cls.layout}" if cls.layout else ""))

    @classmethod
    def require_dir(cls, root: Path) -> None:
        if not root.is_dir():
            raise FileNotFoundError(cls.missing_message(root))

    @classmethod
    def generate(cls, items: Sequence[S.Item], n_subset_paper: Optional[int] = None,
                 pool_paper: Optional[int] = None) -> S.SplitRows:
        """Generated split hitting ``paper_counts`` (scaled when the download is partial)."""
        n = len(items)
        if n_subset_paper is not None:
            n_subset = S.scaled_total(n, pool_paper, n_subset_paper)
            n_train = S.scaled_total(n_subset, sum(cls.paper_counts), cls.paper_counts[0])
        else:
            n_subset = None
            n_train = S.scaled_total(n, sum(cls.paper_counts), cls.paper_counts[0])
        return S.generate_split(items, len(cls.classnames), n_train, seed=cls.seed, n_subset=n_subset)

    @classmethod
    def load_split(cls, root: Path, write: bool = True) -> S.SplitRows:
        """The dataset's default split: a generated split is read from its file when present;
        otherwise the split is built and (``write``) its file written when absent or when it
        records another split (an official split rebuilt from a changed download)."""
        path = cls.split_path(root)
        generated = cls.is_generated(root)
        if generated and path.is_file():
            return S.read_split_file(path, len(cls.classnames), cls.dataset_id())
        cls.require_dir(root)
        rows = cls.build_split(root)
        if write and (not path.is_file() or cls._recorded_hash(path) != S.split_sha256(rows)):
            meta = S.make_meta(rows, cls.dataset_id(), path.stem[len(cls.dataset_id()) + 1:], cls.classnames,
                               cls.seed if generated else None,
                               f"{cls.__module__}.{cls.__name__}.build_split",
                               note=getattr(cls, "split_note", ""))
            S.write_split_file(path, rows, cls.classnames, meta)
        return rows

    @staticmethod
    def _recorded_hash(path: Path) -> str:
        try:
            return json.loads(path.read_text()).get("meta", {}).get("split_sha256", "")
        except (OSError, ValueError):
            return ""

    def _abs(self, root: Path, rel: str) -> str:
        return str(root / rel)

    def __init__(self, cfg):
        from .fewshot import apply_train_subset

        root = data_root(cfg) / self.dataset_dir
        self.root = root
        if cfg.DATASET.SPLIT_FILE:
            rows = S.read_split_file(cfg.DATASET.SPLIT_FILE, len(self.classnames), self.dataset_id())
            self.split_file = Path(cfg.DATASET.SPLIT_FILE)
        else:
            rows = self.load_split(root)
            self.split_file = self.split_path(root)
        names = list(self.classnames)

        def data(key):
            return [Datum(self._abs(root, p), l, names[l]) for p, l in sorted(rows[key])]

        train, test = data("train"), data("test")
        val = data("val") if cfg.DATASET.SPLIT_FILE and rows.get("val") else None
        split_hash = S.split_sha256(rows)
        train, self.train_subset = apply_train_subset(cfg, train, rows, split_hash, self.dataset_id(),
                                                      cache_dir=self.split_file.parent / "fewshot",
                                                      root=root)
        super().__init__(train, val, test, classnames=names, split_hash=split_hash,
                         val_is_test=val is None)

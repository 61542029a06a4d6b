"""ADAM (ISBI 2020 Automatic Detection challenge on Age-related Macular degeneration), 2 classes.

Layout as downloaded under ``<DATASET.ROOT>/adam/`` (see :attr:`Adam.layout`). Train =
``Training400`` (label from the ``AMD`` / ``Non-AMD`` folder), test = the labelled
``Validation400`` set: its labels come from the released validation ground-truth table (any
``.xlsx`` / ``.csv`` under ``adam/`` outside ``Training400`` with an image-name column
``imgName``/``ImgName``/``image``/``filename`` and a ``Label``/``AMD`` column, 1 = AMD). Paper
counts 400 / 400. Source: ``usr922/cilmp:cilmp/datasets/adam.py`` (class names, AMD = 1);
Fang et al., IEEE TMI 2022.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Set

from ..engine.registry import DATASET_REGISTRY
from . import splits as S
from .base import MedicalDataset, find_dir, list_files, read_table

NAME_COLS = ("imgname", "img_name", "image", "image_name", "filename", "file", "name", "id")
LABEL_COLS = ("label", "amd", "class", "classification")


def _find_gt(root: Path, train_dir: Optional[Path]) -> Optional[Path]:
    """The validation classification table (first match, sorted) or None."""
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in (".xlsx", ".csv") or not p.is_file() or p.name.startswith("._"):
            continue
        if train_dir is not None and train_dir in p.parents:
            continue
        if "fovea" in p.name.lower() or "splits" in p.relative_to(root).parts:
            continue
        try:
            rows = read_table(p, "adam")
        except Exception:
            continue
        if rows and _cols(rows[0]) is not None:
            return p
    return None


def _cols(row: Dict[str, str]):
    keys = {k.lower(): k for k in row}
    name = next((keys[c] for c in NAME_COLS if c in keys), None)
    label = next((keys[c] for c in LABEL_COLS if c in keys), None)
    return (name, label) if name and label else None


@DATASET_REGISTRY.register("adam")
class Adam(MedicalDataset):
    """ADAM fundus photographs: 0 normal fundus, 1 AMD; official Training400 / Validation400.

    Raises:
        FileNotFoundError: ``Training400`` or the validation ground-truth table is missing (says
            which file to download).
        ValueError: a label not in {0, 1} (names the table and the row); a ground-truth image
            name with no file.
    """

    dataset_dir = "adam"
    modality = "fundus photography"
    classnames = ("normal fundus", "fundus with age-related macular degeneration")
    prompt_names = ("non-AMD fundus", "age-related macular degeneration")
    templates = ("a photo of a {}.", "a fundus photograph of {}.", "a retinal image showing {}.")
    source = "https://amd.grand-challenge.org (registration; also Baidu AI Studio iChallenge-AMD)"
    licence = "challenge terms, research use only (no open licence)"
    paper_counts = (400, 400)
    class_counts = {"train": (311, 89), "test": (311, 89)}
    layout = """adam/
  Training400/AMD/A0001.jpg ...            (89)
  Training400/Non-AMD/N0001.jpg ...        (311)
  Training400/Fovea_location.xlsx          (not used)
  Validation400/V0001.jpg ... V0400.jpg
  Validation400/<classification GT>.xlsx|.csv   columns imgName, Label (1 = AMD)"""

    @classmethod
    def _dirs(cls, root: Path):
        train = find_dir(root, ("Training400", "Training-400", "Training"), 2)
        val = find_dir(root, ("Validation400", "Validation-400", "Validation"), 2)
        return train, val

    @classmethod
    def build_split(cls, root: Path) -> S.SplitRows:
        train_dir, val_dir = cls._dirs(root)
        if train_dir is None:
            raise FileNotFoundError(cls.missing_message(root / "Training400", "training folder"))
        train = []
        for sub, label in (("Non-AMD", 0), ("AMD", 1)):
            for p in list_files(train_dir / sub):
                train.append((p.relative_to(root).as_posix(), label))
        if val_dir is None:
            raise FileNotFoundError(cls.missing_message(root / "Validation400", "validation (test) image folder"))
        gt = _find_gt(root, train_dir)
        if gt is None:
            raise FileNotFoundError(
                f"adam: the validation ground truth (classification labels) is missing: download the "
                f"ADAM Validation400 classification ground-truth file (a table with columns imgName, "
                f"Label) from {cls.source} and put it in {val_dir}")
        files = {p.name.lower(): p for p in list_files(val_dir, recursive=True)}
        rows = read_table(gt, "adam")
        name_col, label_col = _cols(rows[0])
        test = []
        for i, r in enumerate(rows, start=2):
            name = r[name_col]
            try:
                label = int(float(r[label_col]))
            except ValueError:
                label = -1
            if label not in (0, 1):
                raise ValueError(f"adam: {gt} row {i}: label {r[label_col]!r} of {name} is not 0 (normal) or 1 (AMD)")
            p = files.get(name.lower()) or files.get(name.lower() + ".jpg")
            if p is None:
                raise ValueError(f"adam: {gt} row {i} names {name}, which is not in {val_dir}")
            test.append((p.relative_to(root).as_posix(), label))
        return {"train": train, "test": test}

    @classmethod
    def disk_files(cls, root: Path) -> Set[str]:
        train_dir, val_dir = cls._dirs(root)
        out: List[Path] = []
        if train_dir is not None:
            out += list_files(train_dir / "AMD") + list_files(train_dir / "Non-AMD")
        if val_dir is not None:
            out += list_files(val_dir, recursive=True)
        return {p.relative_to(root).as_posix() for p in out}

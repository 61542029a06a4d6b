"""ODIR-5K colour fundus, 8 classes, single label per image (Kaggle ``full_df.csv``), generated split.

Layout: Kaggle ``andrewmvd/ocular-disease-recognition-odir5k`` under ``<DATASET.ROOT>/odir/``:
``full_df.csv`` (6,392 rows, one per image) and ``preprocessed_images/<filename>``; an image
missing there is taken from ``ODIR-5K/ODIR-5K/Training Images/``. Label = the per-image
``labels`` column (a string like ``['N']``), *not* the patient-level ``N..O`` columns; the
``filepath`` column (Kaggle-absolute) is ignored. Generated split (:mod:`medpt.datasets.splits`,
seed 0): 5,113 / 1,279. Source: ``usr922/cilmp:cilmp/datasets/odir.py``.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Set

from ..engine.registry import DATASET_REGISTRY
from . import splits as S
from .base import MedicalDataset, list_files, read_csv_rows

LETTERS = ("N", "D", "G", "C", "A", "H", "M", "O")
ORIGINALS = Path("ODIR-5K/ODIR-5K/Training Images")


def parse_letter(value: str, where: str) -> int:
    """``"['N']"`` -> 0 ... ``"['O']"`` -> 7.

    Raises:
        ValueError: not a one-letter list of an ODIR letter (names ``where``).
    """
    try:
        v = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        v = value
    if isinstance(v, (list, tuple)) and len(v) == 1:
        v = v[0]
    if not isinstance(v, str) or v.strip().upper() not in LETTERS:
        raise ValueError(f"odir: {where}: labels value {value!r} is not one of {list(LETTERS)}")
    return LETTERS.index(v.strip().upper())


@DATASET_REGISTRY.register("odir")
class Odir(MedicalDataset):
    """ODIR-5K fundus images: N, D, G, C, A, H, M, O.

    Raises:
        FileNotFoundError: ``full_df.csv`` missing.
        ValueError: a ``labels`` value that is not a single ODIR letter (names the row).
    """

    dataset_dir = "odir"
    modality = "fundus photography"
    classnames = ("normal", "diabetes", "glaucoma", "cataract", "age related macular degeneration",
                  "hypertension", "pathological myopia", "other diseases or abnormalities")
    prompt_names = ("normal fundus", "diabetic retinopathy", "glaucoma", "cataract",
                    "age-related macular degeneration", "hypertensive retinopathy", "pathological myopia",
                    "other ocular disease")
    templates = ("a photo of a {}.", "a fundus photograph of {}.", "a retinal image showing {}.")
    source = "https://www.kaggle.com/datasets/andrewmvd/ocular-disease-recognition-odir5k"
    licence = "not specified (ODIR-2019, Peking University); research use"
    paper_counts = (5113, 1279)
    class_counts = {"train": (2298, 1286, 227, 234, 213, 103, 186, 566),
                    "test": (575, 322, 57, 59, 53, 25, 46, 142)}
    generated = True
    layout = """odir/
  full_df.csv                      (..., filepath, labels, target, filename)
  preprocessed_images/<ID>_<left|right>.jpg"""

    @classmethod
    def build_split(cls, root: Path) -> S.SplitRows:
        csv_path = root / "full_df.csv"
        if not csv_path.is_file():
            raise FileNotFoundError(cls.missing_message(root, f"table {csv_path}"))
        items = []
        for i, r in enumerate(read_csv_rows(csv_path, "odir"), start=2):
            label = parse_letter(r.get("labels", ""), f"{csv_path} row {i}")
            rel = Path("preprocessed_images") / r["filename"]
            if not (root / rel).is_file() and (root / ORIGINALS / r["filename"]).is_file():
                rel = ORIGINALS / r["filename"]
            items.append((rel.as_posix(), label))
        return cls.generate(items)

    @classmethod
    def disk_files(cls, root: Path) -> Set[str]:
        return {p.relative_to(root).as_posix() for p in list_files(root / "preprocessed_images")}

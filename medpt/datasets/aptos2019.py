"""APTOS 2019 Blindness Detection, 5 diabetic-retinopathy grades.

Two layouts under ``<DATASET.ROOT>/aptos2019/`` (see :attr:`Aptos2019.layout`):

* the Kaggle re-split ``mariaherrerot/aptos2019`` (``train_1.csv`` / ``valid.csv`` /
  ``test.csv``): train = ``train_1.csv`` (2,930), test = ``valid.csv`` + ``test.csv`` (732), the
  paper's counts (datasets.md §3.2, **verify**);
* the competition download (``train.csv`` + ``train_images/``): the generated split
  (:mod:`medpt.datasets.splits`, seed 0) of the 3,662 labelled images with 2,930 train.

Label = the ``diagnosis`` integer. Source: ``usr922/cilmp:cilmp/datasets/aptos2019.py`` (class
names); ``LuckyE993/cilmp:scripts/prepare_aptos2019_dataset.py`` (re-split layout).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Set

from ..engine.registry import DATASET_REGISTRY
from . import splits as S
from .base import MedicalDataset, list_files, read_csv_rows

RESPLIT = ("train_1.csv", "valid.csv", "test.csv")


def _label(r: Dict[str, str], csv_path: Path, i: int) -> int:
    try:
        label = int(float(r["diagnosis"]))
    except (KeyError, ValueError):
        label = -1
    if not 0 <= label <= 4:
        raise ValueError(f"aptos2019: {csv_path} row {i}: diagnosis {r.get('diagnosis')!r} of "
                         f"{r.get('id_code')} is not one of 0..4")
    return label


@DATASET_REGISTRY.register("aptos2019")
class Aptos2019(MedicalDataset):
    """APTOS 2019 fundus photographs graded 0-4 (no DR ... proliferative DR).

    Raises:
        FileNotFoundError: neither ``train_1.csv`` (re-split) nor ``train.csv`` (competition), or
            an image listed in a CSV is absent.
        ValueError: a ``diagnosis`` outside 0..4 (names the CSV and the row).
    """

    dataset_dir = "aptos2019"
    modality = "fundus photography"
    classnames = ("no diabetic retinopathy", "mild diabetic retinopathy", "moderate diabetic retinopathy",
                  "severe diabetic retinopathy", "proliferative diabetic retinopathy")
    prompt_names = ("no DR", "mild DR", "moderate DR", "severe DR", "proliferative DR")
    templates = ("a photo of a {}.", "a fundus photograph with {}.", "a retinal image showing {}.")
    source = ("https://www.kaggle.com/datasets/mariaherrerot/aptos2019 (re-split, paper counts) or "
              "https://www.kaggle.com/c/aptos2019-blindness-detection (competition)")
    licence = "Kaggle competition rules, non-commercial research"
    paper_counts = (2930, 732)
    layout = """aptos2019/
  train_1.csv valid.csv test.csv          (re-split: id_code, diagnosis)
  train_images/train_images/<id_code>.png
  val_images/val_images/<id_code>.png
  test_images/test_images/<id_code>.png
or (competition)
  train.csv                                (id_code, diagnosis)
  train_images/<id_code>.png"""

    @classmethod
    def is_resplit(cls, root: Path) -> bool:
        return all((root / f).is_file() for f in RESPLIT)

    @classmethod
    def split_path(cls, root: Path) -> Path:
        tag = "resplit" if cls.is_resplit(root) else "generated"
        return root / "splits" / f"aptos2019_{tag}.json"

    @classmethod
    def is_generated(cls, root: Path) -> bool:
        return not cls.is_resplit(root)

    @classmethod
    def _index(cls, root: Path) -> Dict[str, Path]:
        out = {}
        for d in ("train_images", "val_images", "test_images"):
            for p in list_files(root / d, recursive=True, exts=(".png", ".jpg", ".jpeg")):
                out.setdefault(p.stem, p)
        return out

    @classmethod
    def build_split(cls, root: Path) -> S.SplitRows:
        if cls.is_resplit(root):
            index = cls._index(root)
            out: Dict[str, List[S.Item]] = {"train": [], "test": []}
            for f, key in zip(RESPLIT, ("train", "test", "test")):
                for i, r in enumerate(read_csv_rows(root / f, "aptos2019"), start=2):
                    label = _label(r, root / f, i)
                    p = index.get(r["id_code"])
                    if p is None:
                        raise FileNotFoundError(f"aptos2019: {root / f} row {i}: no image {r['id_code']}.png "
                                                f"under train_images/, val_images/ or test_images/")
                    out[key].append((p.relative_to(root).as_posix(), label))
            return out
        csv_path = root / "train.csv"
        if not csv_path.is_file():
            raise FileNotFoundError(cls.missing_message(root, f"labels file {csv_path} (or train_1.csv/valid.csv/test.csv)"))
        items = []
        for i, r in enumerate(read_csv_rows(csv_path, "aptos2019"), start=2):
            items.append((f"train_images/{r['id_code']}.png", _label(r, csv_path, i)))
        return cls.generate(items)

    @classmethod
    def disk_files(cls, root: Path) -> Set[str]:
        if cls.is_resplit(root):
            return {p.relative_to(root).as_posix() for p in cls._index(root).values()}
        return {p.relative_to(root).as_posix() for p in list_files(root / "train_images", exts=(".png",))}

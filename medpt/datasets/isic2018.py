"""ISIC 2018 Task 3 (HAM10000) dermoscopy, 7 classes, official training / test sets.

Layout: the challenge zips unpacked under ``<DATASET.ROOT>/isic2018/`` (see
:attr:`Isic2018.layout`). Labels: argmax of the one-hot ground-truth row (columns
``image, MEL, NV, BCC, AKIEC, BKL, DF, VASC``); the test ground truth may also be the
Dataverse HAM-style table (``image_id``, ``dx`` in mel/nv/bcc/akiec/bkl/df/vasc). Test labels
were released after the challenge as a separate file: without it the reader stops and says
which file to download. Only ``*.jpg`` are read (the input folders also hold ``LICENSE.txt`` /
``ATTRIBUTION.txt``); the 193 validation images are not used. Counts 10,015 / 1,512.
Source: ``usr922/cilmp:cilmp/datasets/isic.py``; https://challenge.isic-archive.com/data/#2018 .
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Set

from ..engine.registry import DATASET_REGISTRY
from . import splits as S
from .base import MedicalDataset, list_files, read_csv_rows

CODES = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
TRAIN_IN = "ISIC2018_Task3_Training_Input"
TRAIN_GT = "ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv"
TEST_INS = ("ISIC2018_Task3_Test_Input", "ISIC2018_Task3_Test_Images")
TEST_GTS = ("ISIC2018_Task3_Test_GroundTruth/ISIC2018_Task3_Test_GroundTruth.csv",
            "ISIC2018_Task3_Test_GroundTruth.csv")


def gt_labels(path: Path) -> Dict[str, int]:
    """``{image id: label}`` from a one-hot (``image, MEL, ...``) or HAM-style (``image_id, dx``) CSV.

    Raises:
        ValueError: a row that is not exactly one-hot, or an unknown ``dx`` (names file and row).
    """
    rows = read_csv_rows(path, "isic2018")
    out = {}
    for i, r in enumerate(rows, start=2):
        if "dx" in r:
            dx = r["dx"].upper()
            if dx not in CODES:
                raise ValueError(f"isic2018: {path} row {i}: unknown dx {r['dx']!r} (expected {CODES})")
            out[r.get("image_id") or r["image"]] = CODES.index(dx)
            continue
        try:
            vals = [float(r[c]) for c in CODES]
        except (KeyError, ValueError):
            raise ValueError(f"isic2018: {path} row {i}: needs numeric columns {CODES}: {r!r}") from None
        if sorted(vals) != [0.0] * 6 + [1.0]:
            raise ValueError(f"isic2018: {path} row {i}: {r.get('image')} is not one-hot over {CODES}: {vals}")
        out[r["image"]] = vals.index(1.0)
    return out


@DATASET_REGISTRY.register("isic2018", aliases=("isic",))
class Isic2018(MedicalDataset):
    """ISIC 2018 Task 3: MEL, NV, BCC, AKIEC, BKL, DF, VASC.

    Raises:
        FileNotFoundError: the training input/ground truth, the test input, or the test ground
            truth is missing (names the file to download).
        ValueError: a malformed ground-truth row; a ground-truth image without a file.
    """

    dataset_dir = "isic2018"
    modality = "dermoscopy"
    classnames = ("Melanoma", "Melanocytic nevus", "Basal cell carcinoma", "Actinic keratosis",
                  "Benign keratosis", "Dermatofibroma", "Vascular lesion")
    prompt_names = ("melanoma", "melanocytic nevus", "basal cell carcinoma",
                    "actinic keratosis or intraepithelial carcinoma", "benign keratosis",
                    "dermatofibroma", "vascular lesion")
    templates = ("a photo of a {}.", "a dermoscopic image of {}.", "a dermoscopy image of a skin lesion with {}.")
    source = ("https://challenge.isic-archive.com/data/#2018 (Task 3 training input + ground truth, "
              "test input + test ground truth)")
    licence = "CC BY-NC 4.0 (Tschandl et al., Sci Data 2018; Codella et al. 2019)"
    paper_counts = (10015, 1512)
    class_counts = {"train": (1113, 6705, 514, 327, 1099, 115, 142)}
    layout = """isic2018/
  ISIC2018_Task3_Training_Input/ISIC_00xxxxx.jpg
  ISIC2018_Task3_Training_GroundTruth/ISIC2018_Task3_Training_GroundTruth.csv  (image,MEL,NV,BCC,AKIEC,BKL,DF,VASC)
  ISIC2018_Task3_Test_Input/ISIC_00xxxxx.jpg
  ISIC2018_Task3_Test_GroundTruth/ISIC2018_Task3_Test_GroundTruth.csv          (same columns, released later)"""

    @classmethod
    def _test_dir(cls, root: Path) -> Optional[Path]:
        return next((root / d for d in TEST_INS if (root / d).is_dir()), None)

    @classmethod
    def build_split(cls, root: Path) -> S.SplitRows:
        out: Dict[str, List[S.Item]] = {}
        test_dir = cls._test_dir(root)
        test_gt = next((root / g for g in TEST_GTS if (root / g).is_file()), None)
        for key, in_dir, gt in (("train", root / TRAIN_IN, root / TRAIN_GT), ("test", test_dir, test_gt)):
            if in_dir is None or not in_dir.is_dir():
                raise FileNotFoundError(cls.missing_message(root / (TRAIN_IN if key == "train" else TEST_INS[0]),
                                                            f"{key} image folder"))
            if gt is None or not gt.is_file():
                want = root / (TRAIN_GT if key == "train" else TEST_GTS[0])
                raise FileNotFoundError(
                    f"isic2018: {key} ground truth {want} is missing: download "
                    f"{Path(want).parent.name if key == 'train' else 'ISIC2018_Task3_Test_GroundTruth'}.zip "
                    f"from {cls.source} and unzip it in {root}")
            files = {p.stem: p for p in list_files(in_dir, exts=(".jpg",))}
            rows = []
            for image, label in gt_labels(gt).items():
                if image not in files:
                    raise ValueError(f"isic2018: {gt} lists {image}, which is not in {in_dir}")
                rows.append((files[image].relative_to(root).as_posix(), label))
            out[key] = rows
        return out

    @classmethod
    def disk_files(cls, root: Path) -> Set[str]:
        dirs = [root / TRAIN_IN, cls._test_dir(root)]
        return {p.relative_to(root).as_posix() for d in dirs if d is not None for p in list_files(d, exts=(".jpg",))}

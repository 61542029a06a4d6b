"""Derm7pt (seven-point checklist dermoscopy), 5 diagnosis groups, official index files.

Layout ``release_v0`` under ``<DATASET.ROOT>/derm7pt/`` (see :attr:`Derm7pt.layout`). One case =
one dermoscopic image ``images/<derm column>``; the ``clinic`` images and the 203 validation
cases are listed as ``unused``. Index files hold 0-based row positions into ``meta.csv``
(column ``indexes``), not ``case_num``. Diagnosis grouping = the official package's
``Derm7PtDatasetGroupInfrequent`` (``jeremykawahara/derm7pt:derm7pt/dataset.py``), in CILMP's
label order (alphabetical by last word: carcinoma, keratosis, melanoma, miscellaneous, nevus).
Counts 413 / 395. Source: ``usr922/cilmp:cilmp/datasets/derm7pt.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Set

from ..engine.registry import DATASET_REGISTRY
from . import splits as S
from .base import MedicalDataset, list_files, read_csv_rows

#: raw ``diagnosis`` value -> CILMP label
DIAGNOSIS = {
    "basal cell carcinoma": 0,
    "seborrheic keratosis": 1,
    "melanoma": 2, "melanoma (in situ)": 2, "melanoma (less than 0.76 mm)": 2,
    "melanoma (0.76 to 1.5 mm)": 2, "melanoma (more than 1.5 mm)": 2, "melanoma metastasis": 2,
    "dermatofibroma": 3, "lentigo": 3, "melanosis": 3, "miscellaneous": 3, "vascular lesion": 3,
    "blue nevus": 4, "clark nevus": 4, "combined nevus": 4, "congenital nevus": 4, "dermal nevus": 4,
    "recurrent nevus": 4, "reed or spitz nevus": 4,
}


@DATASET_REGISTRY.register("derm7pt")
class Derm7pt(MedicalDataset):
    """Derm7pt dermoscopic images: carcinoma, keratosis, melanoma, miscellaneous, nevus.

    Raises:
        FileNotFoundError: ``meta/meta.csv`` or an index file is missing.
        ValueError: an unknown ``diagnosis`` value or an index outside ``meta.csv`` (names the
            file and the row).
    """

    dataset_dir = "derm7pt"
    modality = "dermoscopy"
    classnames = ("carcinoma", "keratosis", "melanoma", "miscellaneous", "nevus")
    prompt_names = ("basal cell carcinoma", "seborrheic keratosis", "melanoma",
                    "other benign lesion", "nevus")
    templates = ("a photo of a {}.", "a dermoscopic image of {}.", "a dermoscopy image of a skin lesion with {}.")
    source = "https://derm.cs.sfu.ca (registration; release_v0.zip)"
    licence = "research use under the download terms (Kawahara et al., IEEE JBHI 2019)"
    paper_counts = (413, 395)
    layout = """derm7pt/                (release_v0)
  images/<subdir>/<file>.jpg
  meta/meta.csv            (case_num, diagnosis, ..., clinic, derm, ...)
  meta/train_indexes.csv   (column indexes = 0-based rows of meta.csv)
  meta/valid_indexes.csv
  meta/test_indexes.csv"""

    @classmethod
    def build_split(cls, root: Path) -> S.SplitRows:
        meta_path = root / "meta" / "meta.csv"
        if not meta_path.is_file():
            raise FileNotFoundError(cls.missing_message(root, f"metadata file {meta_path}"))
        meta = read_csv_rows(meta_path, "derm7pt")
        labels = []
        for i, r in enumerate(meta, start=2):
            dx = r.get("diagnosis", "").strip().lower()
            if dx not in DIAGNOSIS:
                raise ValueError(f"derm7pt: {meta_path} row {i}: unknown diagnosis {r.get('diagnosis')!r}")
            labels.append(DIAGNOSIS[dx])
        out = {"train": [], "test": [], "unused": []}
        used = set()
        for key, fname in (("train", "train_indexes.csv"), ("unused", "valid_indexes.csv"), ("test", "test_indexes.csv")):
            path = root / "meta" / fname
            if not path.is_file():
                raise FileNotFoundError(cls.missing_message(root, f"index file {path}"))
            for j, r in enumerate(read_csv_rows(path, "derm7pt"), start=2):
                try:
                    idx = int(r["indexes"])
                except (KeyError, ValueError):
                    raise ValueError(f"derm7pt: {path} row {j}: no integer 'indexes' value: {r!r}") from None
                if not 0 <= idx < len(meta):
                    raise ValueError(f"derm7pt: {path} row {j}: index {idx} outside meta.csv ({len(meta)} rows)")
                out[key].append((f"images/{meta[idx]['derm']}", labels[idx]))
                used.add(idx)
        # clinical images (and cases in no index file) are part of the download but not of the split
        for idx, r in enumerate(meta):
            if r.get("clinic"):
                out["unused"].append((f"images/{r['clinic']}", labels[idx]))
            if idx not in used:
                out["unused"].append((f"images/{r['derm']}", labels[idx]))
        return out

    @classmethod
    def disk_files(cls, root: Path) -> Set[str]:
        return {p.relative_to(root).as_posix() for p in list_files(root / "images", recursive=True)}

"""Kermany et al. (Cell 2018) paediatric chest X-rays, 3 classes from the file names.

Layout as unzipped from Kaggle ``paultimothymooney/chest-xray-pneumonia`` under
``<DATASET.ROOT>/pneumonia/``::

    chest_xray/train/NORMAL/*.jpeg               label 0
    chest_xray/train/PNEUMONIA/*_bacteria_*.jpeg label 1
    chest_xray/train/PNEUMONIA/*_virus_*.jpeg    label 2
    chest_xray/test/...                          same
    chest_xray/val/...                           16 images, unused by CILMP

Split: the official ``train`` (5,216) / ``test`` (624) folders (CILMP,
``usr922/cilmp:cilmp/datasets/pneumonia3.py``). Files starting with ``._`` (macOS resource forks)
are skipped; folders are not globbed recursively (the Kaggle archive nests a duplicate copy).

The bundled sample (``pneumonia_sample``) is the Kaggle ``val/`` folder (8 normal, 8 bacterial),
read by the same code: :func:`pneumonia3_label` and :func:`list_images`.
Licence: CC BY 4.0, Kermany, Zhang, Goldbaum (2018), Mendeley Data rscbjbr9sj, Cell 172(5).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List

from ..engine.data import DatasetBase, Datum, compute_split_hash
from ..engine.registry import DATASET_REGISTRY
from .base import MedicalDataset
from .splits import read_split_file

#: CILMP's prompt class names, in label order.
PNEUMONIA3_CLASSNAMES = ("normal", "bacteria pneumonia", "virus pneumonia")
XRAY_TEMPLATES = (
    "a photo of a {}.",
    "a chest X-ray showing {}.",
    "a chest radiograph of {}.",
    "an X-ray image of the chest with {}.",
)
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SAMPLE_ROOT = Path(__file__).resolve().parent / "data" / "pneumonia_sample"


def pneumonia3_label(path: Path) -> int:
    """Label of a Kermany file: under ``NORMAL/`` -> 0; ``bacteria`` in the name -> 1;
    ``virus`` -> 2 (case-insensitive).

    Raises:
        ValueError: a ``PNEUMONIA/`` file whose name says neither (names the file).
    """
    folder = path.parent.name.upper()
    name = path.name.lower()
    if folder == "NORMAL":
        return 0
    if folder == "PNEUMONIA":
        if "bacteria" in name:
            return 1
        if "virus" in name:
            return 2
    raise ValueError(f"pneumonia: cannot tell the class of {path}: expected NORMAL/ or a PNEUMONIA/ "
                     "file name containing 'bacteria' or 'virus'")


def list_images(folder: Path) -> List[Path]:
    """Image files directly in ``folder/NORMAL`` and ``folder/PNEUMONIA``, sorted, without ``._`` files."""
    out = []
    for sub in ("NORMAL", "PNEUMONIA"):
        d = folder / sub
        if d.is_dir():
            out += sorted(p for p in d.iterdir()
                          if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("._"))
    return out


@DATASET_REGISTRY.register("pneumonia")
class Pneumonia(MedicalDataset):
    """Kermany pneumonia, 3 classes (normal, bacterial, viral); official Kaggle train/test.

    The 16 ``val/`` images are listed as ``unused`` in the split file. Shared machinery (split
    file, few-shot, data check): :class:`medpt.datasets.base.MedicalDataset`.

    Raises:
        FileNotFoundError: ``<ROOT>/pneumonia/chest_xray/{train,test}`` is missing (says where
            to get it and where to put it).
        ValueError: a ``PNEUMONIA/`` file name with neither ``bacteria`` nor ``virus``.
    """

    dataset_dir = "pneumonia"
    modality = "X-ray"
    classnames = PNEUMONIA3_CLASSNAMES
    prompt_names = ("normal lungs", "bacterial pneumonia", "viral pneumonia")
    templates = XRAY_TEMPLATES
    source = "https://www.kaggle.com/datasets/paultimothymooney/chest-xray-pneumonia"
    licence = "CC BY 4.0 (Kermany et al., Cell 2018)"
    paper_counts = (5216, 624)
    class_counts = {"train": (1341, 2530, 1345), "test": (234, 242, 148)}
    layout = """pneumonia/
  chest_xray/train/NORMAL/*.jpeg  chest_xray/train/PNEUMONIA/person*_{bacteria,virus}_*.jpeg
  chest_xray/val/{NORMAL,PNEUMONIA}/   (16, unused)
  chest_xray/test/{NORMAL,PNEUMONIA}/"""

    @classmethod
    def build_split(cls, root: Path):
        base = root / "chest_xray"
        for sub in ("train", "test"):
            if not (base / sub).is_dir():
                raise FileNotFoundError(
                    f"pneumonia: dataset folder not found: {base / sub}. Download the Kaggle archive "
                    f"({cls.source}), unzip it and put its chest_xray/ folder under {root}.")
        out = {}
        for key, sub in (("train", "train"), ("test", "test"), ("unused", "val")):
            out[key] = [(p.relative_to(root).as_posix(), pneumonia3_label(p)) for p in list_images(base / sub)]
        return out

    @classmethod
    def disk_files(cls, root: Path):
        base = root / "chest_xray"
        return {p.relative_to(root).as_posix() for sub in ("train", "val", "test") for p in list_images(base / sub)}


@DATASET_REGISTRY.register("pneumonia_sample")
class PneumoniaSample(DatasetBase):
    """The 16 real chest X-rays bundled with the suite (Kermany ``val/``: 8 normal, 8 bacterial
    pneumonia), downsized to 256 px on the short side, read with the pneumonia reader's code.

    Classes: ``normal`` and ``bacteria pneumonia`` only (the sample holds no viral case, so the
    third class of the full dataset would have no example). Split: the shipped
    ``pneumonia_sample.json`` (4 + 4 train, 4 + 4 test; per class, file names sorted and shuffled
    with ``numpy.random.Generator(PCG64(0))``, first half train). ``DATASET.ROOT`` is ignored.
    """

    dataset_dir = str(SAMPLE_ROOT)
    modality = "X-ray"
    classnames = PNEUMONIA3_CLASSNAMES[:2]
    templates = XRAY_TEMPLATES
    source = "bundled (medpt/datasets/data/pneumonia_sample)"
    licence = "CC BY 4.0 (Kermany et al., Cell 2018)"
    split_file = SAMPLE_ROOT / "pneumonia_sample.json"

    def __init__(self, cfg):
        split_path = Path(cfg.DATASET.SPLIT_FILE) if cfg.DATASET.SPLIT_FILE else self.split_file
        rows = read_split_file(split_path, len(self.classnames), "pneumonia_sample")
        split = {k: [Datum(str(SAMPLE_ROOT / rel), label, self.classnames[label]) for rel, label in v]
                 for k, v in rows.items() if k != "meta"}
        for d in split["train"] + split["test"]:
            label = pneumonia3_label(Path(d.impath))
            if label != d.label:
                raise ValueError(f"pneumonia_sample: {split_path} labels {d.impath} as {d.label}, "
                                 f"its file name says {label}")
        super().__init__(split["train"], split.get("val"), split["test"],
                         split_hash=compute_split_hash({"train": split["train"], "test": split["test"]},
                                                       SAMPLE_ROOT))


def write_sample_split(seed: int = 0) -> Path:
    """(Re)generate ``pneumonia_sample.json`` from the bundled files (see :class:`PneumoniaSample`)."""
    import numpy as np

    files = list_images(SAMPLE_ROOT / "chest_xray" / "val")
    by_class: dict = {}
    for p in files:
        by_class.setdefault(pneumonia3_label(p), []).append(p)
    rng = np.random.Generator(np.random.PCG64(seed))
    train, test = [], []
    for label in sorted(by_class):
        items = sorted(by_class[label])
        order = rng.permutation(len(items))
        half = len(items) // 2
        for rank, idx in enumerate(order):
            row = [items[idx].relative_to(SAMPLE_ROOT).as_posix(), label, PNEUMONIA3_CLASSNAMES[label]]
            (train if rank < half else test).append(row)
    counts = {"train": {}, "test": {}}
    for k, rows in (("train", train), ("test", test)):
        for r in rows:
            counts[k][r[2]] = counts[k].get(r[2], 0) + 1
    obj = {"train": sorted(train), "test": sorted(test),
           "meta": {"dataset": "pneumonia_sample", "protocol": "demo", "seed": seed,
                    "counts_per_class": counts, "created_by": "medpt.datasets.pneumonia.write_sample_split"}}
    PneumoniaSample.split_file.write_text(json.dumps(obj, indent=1) + "\n")
    return PneumoniaSample.split_file

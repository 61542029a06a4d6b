"""Kvasir v2 GI endoscopy, 8 classes, generated 70/30 split (700 / 300 per class).

Layout: ``kvasir-dataset-v2/<class-folder>/<uuid>.jpg`` under ``<DATASET.ROOT>/kvasir/`` (the
Kaggle mirror nests ``<class-folder>/<class-folder>/``); the eight class folders are found by name
at depth <= 3 (the deepest folder of that name holding images). Classes: alphabetical folder
order = CILMP. Generated split (:mod:`medpt.datasets.splits`, seed 0): 5,600 / 2,400. Source:
``usr922/cilmp:cilmp/datasets/kvasir.py``; https://datasets.simula.no/kvasir .
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Set

from ..engine.registry import DATASET_REGISTRY
from . import splits as S
from .base import MedicalDataset, list_files

FOLDERS = ("dyed-lifted-polyps", "dyed-resection-margins", "esophagitis", "normal-cecum",
           "normal-pylorus", "normal-z-line", "polyps", "ulcerative-colitis")


def _class_dir(root: Path, name: str) -> Optional[Path]:
    best = None
    level = [root]
    for _ in range(4):
        nxt = []
        for d in level:
            if d.name.lower() == name and list_files(d):
                best = d
            nxt += sorted(c for c in d.iterdir() if c.is_dir() and c.name != "__MACOSX")
        level = nxt
    return best


@DATASET_REGISTRY.register("kvasir")
class Kvasir(MedicalDataset):
    """Kvasir v2 (8,000 images, 1,000 per class).

    Raises:
        FileNotFoundError: a class folder is missing (names it).
    """

    dataset_dir = "kvasir"
    modality = "endoscopy"
    classnames = ("dyed lifted polyps", "dyed resection margins", "esophagitis", "normal cecum",
                  "normal pylorus", "normal z-line", "polyps", "ulcerative colitis")
    prompt_names = classnames
    templates = ("a photo of a {}.", "an endoscopic image of {}.", "a gastrointestinal endoscopy image showing {}.")
    source = "https://datasets.simula.no/kvasir (kvasir-dataset-v2.zip)"
    licence = "research and education only; commercial use needs permission (Pogorelov et al., MMSys 2017)"
    paper_counts = (5600, 2400)
    class_counts = {"train": (700,) * 8, "test": (300,) * 8}
    generated = True
    layout = """kvasir/
  kvasir-dataset-v2/dyed-lifted-polyps/<uuid>.jpg ... (8 folders x 1,000)"""

    @classmethod
    def build_split(cls, root: Path) -> S.SplitRows:
        items = []
        for label, name in enumerate(FOLDERS):
            d = _class_dir(root, name)
            if d is None:
                raise FileNotFoundError(cls.missing_message(root / "kvasir-dataset-v2" / name, f"class folder {name}/"))
            items += [(p.relative_to(root).as_posix(), label) for p in list_files(d)]
        return cls.generate(items)

    @classmethod
    def disk_files(cls, root: Path) -> Set[str]:
        out = set()
        for name in FOLDERS:
            d = _class_dir(root, name)
            if d is not None:
                out |= {p.relative_to(root).as_posix() for p in list_files(d)}
        return out

"""CPN-X-ray (COVID / Pneumonia / Normal chest X-rays, Kaggle ``sachinkumar413``), 3 classes.

Layout: the three class folders ``COVID/``, ``NORMAL/``, ``PNEUMONIA/`` (found by name,
case-insensitive, at depth <= 2 under ``<DATASET.ROOT>/cpn_xray/``; the Kaggle zip may nest them
one level). Labels map by name, not by sorted order: 0 normal, 1 covid, 2 pneumonia (CILMP).
No official split: generated (:mod:`medpt.datasets.splits`, seed 0) with the paper's 3,659 /
1,569 (train 1,261 / 1,138 / 1,260). Source: ``usr922/cilmp:cilmp/datasets/cpn_x_ray.py``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Set

from ..engine.registry import DATASET_REGISTRY
from . import splits as S
from .base import MedicalDataset, find_dir, list_files

FOLDERS = ("NORMAL", "COVID", "PNEUMONIA")  # label order


@DATASET_REGISTRY.register("cpn_xray")
class CpnXray(MedicalDataset):
    """CPN chest X-rays: normal, covid, pneumonia; generated 70/30 split.

    Raises:
        FileNotFoundError: a class folder is missing (names it).
    """

    dataset_dir = "cpn_xray"
    modality = "X-ray"
    classnames = ("normal", "covid", "pneumonia")
    prompt_names = ("normal chest", "COVID-19 pneumonia", "non-COVID pneumonia")
    templates = ("a photo of a {}.", "a chest X-ray showing {}.", "a chest radiograph of {}.")
    source = "https://www.kaggle.com/datasets/sachinkumar413/covid-pneumonia-normal-chest-xray-images"
    licence = "no clear licence (images from Eurorad, Radiopaedia, Coronacases, Kermany); research use"
    paper_counts = (3659, 1569)
    class_counts = {"train": (1261, 1138, 1260), "test": (541, 488, 540)}
    generated = True
    layout = """cpn_xray/
  COVID/*.png|jpg       (1,626)
  NORMAL/*.png|jpg      (1,802)
  PNEUMONIA/*.png|jpg   (1,800)"""

    @classmethod
    def _folders(cls, root: Path):
        return [find_dir(root, (f,), 2) for f in FOLDERS]

    @classmethod
    def build_split(cls, root: Path) -> S.SplitRows:
        items = []
        for label, (name, d) in enumerate(zip(FOLDERS, cls._folders(root))):
            if d is None:
                raise FileNotFoundError(cls.missing_message(root / name, f"class folder {name}/"))
            items += [(p.relative_to(root).as_posix(), label) for p in list_files(d)]
        return cls.generate(items)

    @classmethod
    def disk_files(cls, root: Path) -> Set[str]:
        return {p.relative_to(root).as_posix() for d in cls._folders(root) if d is not None for p in list_files(d)}

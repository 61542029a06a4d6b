"""Chaoyang colon histopathology patches, 4 classes, official split (``train.json`` / ``test.json``).

Layout: the unzipped ``chaoyang-data`` folder under ``<DATASET.ROOT>/chaoyang/`` (see
:attr:`Chaoyang.layout`); each JSON is a list of ``{"name": "train/<file>.JPG", "label": int}``
with the official codes 0 normal, 1 serrated, 2 adenocarcinoma, 3 adenoma (= CILMP order).
Training labels are the majority vote of three pathologists (noisy by design). Counts 4,021 /
2,139. Source: ``bupt-ai-cz/HSA-NRL:README.md``, ``usr922/cilmp:cilmp/datasets/chaoyang.py``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Set

from ..engine.registry import DATASET_REGISTRY
from . import splits as S
from .base import MedicalDataset, list_files


@DATASET_REGISTRY.register("chaoyang")
class Chaoyang(MedicalDataset):
    """Chaoyang H&E patches: normal, serrated, adenocarcinoma, adenoma.

    Raises:
        FileNotFoundError: ``train.json`` / ``test.json`` missing.
        ValueError: a JSON entry without ``name``/``label`` or with a label outside 0..3 (names
            the file and the entry index).
    """

    dataset_dir = "chaoyang"
    modality = "histopathology"
    classnames = ("normal", "serrated", "adenocarcinoma", "adenoma")
    prompt_names = ("normal colonic mucosa", "serrated lesion", "adenocarcinoma", "adenoma")
    templates = ("a photo of a {}.", "a histopathology image of {}.", "an H&E stained colon tissue patch of {}.")
    source = "https://bupt-ai-cz.github.io/HSA-NRL/ (Google Drive link on the page)"
    licence = "non-commercial research only, no redistribution (Zhu et al., IEEE TMI 2021)"
    paper_counts = (4021, 2139)
    class_counts = {"train": (1111, 842, 1404, 664), "test": (705, 321, 840, 273)}
    layout = """chaoyang/
  train/*.JPG
  test/*.JPG
  train.json   [{"name": "train/<file>.JPG", "label": 0..3}, ...]
  test.json"""

    @classmethod
    def build_split(cls, root: Path) -> S.SplitRows:
        out = {}
        for key in ("train", "test"):
            path = root / f"{key}.json"
            if not path.is_file():
                raise FileNotFoundError(cls.missing_message(root, f"label file {path}"))
            try:
                entries = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(f"chaoyang: {path} is not valid JSON: {err}") from None
            rows = []
            for i, e in enumerate(entries):
                if not isinstance(e, dict) or "name" not in e or "label" not in e:
                    raise ValueError(f"chaoyang: {path} entry {i} lacks 'name'/'label': {e!r}")
                label = int(e["label"])
                if not 0 <= label < 4:
                    raise ValueError(f"chaoyang: {path} entry {i}: label {label} of {e['name']} outside 0..3")
                rows.append((Path(e["name"]).as_posix(), label))
            out[key] = rows
        return out

    @classmethod
    def disk_files(cls, root: Path) -> Set[str]:
        return {p.relative_to(root).as_posix() for d in ("train", "test") for p in list_files(root / d)}

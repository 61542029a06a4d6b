"""One reader for the MedMNIST v2 2D ``.npz`` files as distributed (any image size).

A MedMNIST file ``<flag>.npz`` (28 px) or ``<flag>_<size>.npz`` (64, 128, 224; the 28 px file
is also accepted as ``<flag>_28.npz``) holds ``{train,val,test}_images`` (``[N, H, W]`` or
``[N, H, W, 3]`` uint8) and ``{train,val,test}_labels`` (``[N, 1]`` int). Items are addressed as
``"<file>.npz#<split>/<index>"`` (relative to ``<DATASET.ROOT>/<flag>/``) and decoded by
:meth:`MedMNIST2D.read_image`; no image files are exported. When several sizes are present the
largest is used (a split file naming another size selects that one). Labels and names follow
``MedMNIST/MedMNIST:medmnist/info.py``.

Registrations:

* ``dermamnist`` - the paper's protocol: the 10,015 images pooled, a stratified subset of 8,000
  drawn and split 5,600 / 2,400 by :mod:`medpt.datasets.splits` (seed 0). The CILMP counts cannot
  be derived from MedMNIST's official split, so the counts match the paper but the membership is
  unknown (recorded in the split file's ``meta.note``).
* ``dermamnist_official`` - MedMNIST's split: train 7,007 / test 2,005 (val 1,003 unused).
* ``pneumoniamnist`` - an extra beyond the paper's 11: MedMNIST's split 4,708 / 624 (val 524
  unused).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import numpy as np
from PIL import Image

from ..engine.data import ImageReadError
from ..engine.registry import DATASET_REGISTRY
from . import splits as S
from .base import MedicalDataset

NPZ_SPLITS = ("train", "val", "test")


def npz_files(root: Path, flag: str) -> Dict[int, Path]:
    """``{size: path}`` of the ``<flag>[_<size>].npz`` files in ``root``."""
    out = {}
    if root.is_dir():
        for p in root.iterdir():
            m = re.fullmatch(re.escape(flag) + r"(?:_(\d+))?\.npz", p.name)
            if m and p.is_file():
                out.setdefault(int(m.group(1) or 28), p)
    return out


def npz_labels(path: Path, dataset: str) -> Dict[str, np.ndarray]:
    """``{split: labels [N] int64}`` of a MedMNIST file.

    Raises:
        ValueError: the file is not a readable npz with ``<split>_labels`` keys (names it).
    """
    try:
        with np.load(path) as z:
            return {s: np.asarray(z[f"{s}_labels"]).reshape(-1).astype(np.int64) for s in NPZ_SPLITS}
    except Exception as err:
        raise ValueError(f"{dataset}: cannot read MedMNIST file {path}: {err}") from err


def parse_ref(ref: str) -> Tuple[str, str, int]:
    """``"/a/b/dermamnist_224.npz#train/17"`` -> ``("/a/b/dermamnist_224.npz", "train", 17)``.

    Raises:
        ValueError: not of that form.
    """
    m = re.fullmatch(r"(.+\.npz)#(train|val|test)/(\d+)", ref)
    if not m:
        raise ValueError(f"not a MedMNIST item reference '<file>.npz#<split>/<index>': {ref!r}")
    return m.group(1), m.group(2), int(m.group(3))


class MedMNIST2D(MedicalDataset):
    """Base reader for a MedMNIST 2D set; subclasses set ``flag`` and the descriptive attributes.

    ``protocol``: ``"official"`` (MedMNIST train/test, val unused) or ``"paper"`` (pooled, with
    ``paper_subset`` / ``paper_pool`` the subset size and the full pool size of the paper).

    Raises:
        FileNotFoundError: no ``<flag>*.npz`` in ``<DATASET.ROOT>/<flag>/``.
        ValueError: a label outside the class list (names the file, split and index).
    """

    flag = ""
    protocol = "official"
    paper_subset: Optional[int] = None
    paper_pool: Optional[int] = None

    def __init__(self, cfg):
        self._arrays: Dict[Tuple[str, str], np.ndarray] = {}
        super().__init__(cfg)

    @classmethod
    def split_path(cls, root: Path) -> Path:
        return root / "splits" / f"{cls.dataset_id()}_{cls.protocol}.json"

    @classmethod
    def is_generated(cls, root: Path) -> bool:
        return cls.protocol == "paper"

    @classmethod
    def npz(cls, root: Path) -> Path:
        files = npz_files(root, cls.flag)
        if not files:
            raise FileNotFoundError(cls.missing_message(root, f"MedMNIST file {root}/{cls.flag}_<size>.npz"))
        return files[max(files)]

    @classmethod
    def _items(cls, root: Path) -> Dict[str, List[S.Item]]:
        path = cls.npz(root)
        out = {}
        for split, labels in npz_labels(path, cls.dataset_id()).items():
            bad = np.flatnonzero((labels < 0) | (labels >= len(cls.classnames)))
            if bad.size:
                raise ValueError(f"{cls.dataset_id()}: {path} {split}_labels[{bad[0]}] = {labels[bad[0]]} "
                                 f"is outside the {len(cls.classnames)} classes")
            out[split] = [(f"{path.name}#{split}/{i}", int(l)) for i, l in enumerate(labels)]
        return out

    @classmethod
    def build_split(cls, root: Path) -> S.SplitRows:
        items = cls._items(root)
        if cls.protocol == "official":
            return {"train": items["train"], "test": items["test"], "unused": items["val"]}
        pool = items["train"] + items["val"] + items["test"]
        return cls.generate(pool, n_subset_paper=cls.paper_subset, pool_paper=cls.paper_pool)

    @classmethod
    def disk_files(cls, root: Path) -> Set[str]:
        try:
            items = cls._items(root)
        except (FileNotFoundError, ValueError):
            return set()
        return {p for rows in items.values() for p, _ in rows}

    def read_image(self, impath: str) -> Image.Image:
        """Decode item ``"<file>.npz#<split>/<index>"`` to an RGB image (H x W as stored).

        Raises:
            FileNotFoundError: the npz file is missing.
            ImageReadError: the file cannot be read or the index is out of range (names both).
        """
        file, split, idx = parse_ref(impath)
        key = (file, split)
        if key not in self._arrays:
            if not Path(file).is_file():
                raise FileNotFoundError(f"{self.name}: MedMNIST file not found: {file}")
            try:
                with np.load(file) as z:
                    self._arrays[key] = np.asarray(z[f"{split}_images"])
            except Exception as err:
                raise ImageReadError(f"{self.name}: cannot read {split}_images of {file}: {err}") from err
        arr = self._arrays[key]
        if not 0 <= idx < len(arr):
            raise ImageReadError(f"{self.name}: {impath}: index {idx} outside {split}_images ({len(arr)} images)")
        return Image.fromarray(arr[idx]).convert("RGB")


_DERMA = dict(
    modality="dermoscopy",
    classnames=("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
                "vascular lesions"),
    prompt_names=("actinic keratosis", "basal cell carcinoma", "benign keratosis", "dermatofibroma",
                  "melanoma", "melanocytic nevus", "vascular lesion"),
    templates=("a photo of a {}.", "a dermoscopic image of {}.", "a dermoscopy image of a skin lesion with {}."),
    source="https://zenodo.org/records/10519652 (dermamnist.npz, dermamnist_64/_128/_224.npz; or the medmnist package)",
    licence="CC BY-NC 4.0 (MedMNIST v2; HAM10000)",
    layout="""dermamnist/
  dermamnist_224.npz    (or dermamnist.npz / _64 / _128; keys {train,val,test}_{images,labels})""",
)


@DATASET_REGISTRY.register("dermamnist")
class DermaMNIST(MedMNIST2D):
    """DermaMNIST, paper protocol (8,000-image stratified subset, 5,600 / 2,400)."""

    dataset_dir = "dermamnist"
    flag = "dermamnist"
    protocol = "paper"
    paper_counts = (5600, 2400)
    paper_subset, paper_pool = 8000, 10015
    class_counts = {"train": (183, 288, 615, 64, 622, 3749, 79), "test": (78, 123, 263, 28, 267, 1607, 34)}
    split_note = "counts match the CILMP paper (5,600 / 2,400); the paper's membership is unknown"


@DATASET_REGISTRY.register("dermamnist_official")
class DermaMNISTOfficial(MedMNIST2D):
    """DermaMNIST, MedMNIST's official split (train 7,007 / test 2,005; val 1,003 unused)."""

    dataset_dir = "dermamnist"
    flag = "dermamnist"
    protocol = "official"
    paper_counts = (7007, 2005)

    @classmethod
    def dataset_id(cls) -> str:
        return "dermamnist"


for _cls in (DermaMNIST, DermaMNISTOfficial):
    for _k, _v in _DERMA.items():
        setattr(_cls, _k, _v)


@DATASET_REGISTRY.register("pneumoniamnist")
class PneumoniaMNIST(MedMNIST2D):
    """PneumoniaMNIST (extra, not in the paper): normal vs pneumonia, MedMNIST split 4,708 / 624."""

    dataset_dir = "pneumoniamnist"
    flag = "pneumoniamnist"
    protocol = "official"
    modality = "X-ray"
    classnames = ("normal", "pneumonia")
    prompt_names = ("normal lungs", "pneumonia")
    templates = ("a photo of a {}.", "a chest X-ray showing {}.", "a chest radiograph of {}.")
    source = "https://zenodo.org/records/10519652 (pneumoniamnist.npz, pneumoniamnist_64/_128/_224.npz)"
    licence = "CC BY 4.0 (MedMNIST v2; Kermany et al. 2018)"
    paper_counts = (4708, 624)
    class_counts = {"train": (1214, 3494), "test": (234, 390)}
    layout = """pneumoniamnist/
  pneumoniamnist.npz    (or pneumoniamnist_28/_64/_128/_224.npz)"""

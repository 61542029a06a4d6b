"""Datum, DatasetBase and DataManager: Dassl's data layer, reading images as downloaded.

Source: ``KaiyangZhou/Dassl.pytorch:dassl/data/{datasets/base_dataset.py,data_manager.py,
transforms/transforms.py}``.

Differences from Dassl, on purpose: a :class:`Datum` whose file is missing raises
:class:`FileNotFoundError` naming the dataset (Dassl asserts); an unreadable image raises
:class:`ImageReadError` naming the file and the dataset; a dataset carries its ``split_hash``,
``modality`` and ``templates`` so that run records can prove which split was used.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .registry import DATASET_REGISTRY


class ImageReadError(OSError):
    """An image file could not be decoded; the message names the file and the dataset."""


@dataclass(frozen=True)
class Datum:
    """One labelled sample (Dassl's ``Datum``).

    Attributes:
        impath: absolute path of the image file, or a ``"<file>.npz#<split>/<index>"`` reference
            for array-backed sets (read by the dataset's ``read_image``).
        label: integer class index in ``[0, num_classes)``.
        classname: the class's prompt name.
        domain: domain index (always 0 in this suite).
    """

    impath: str
    label: int
    classname: str = ""
    domain: int = 0


class DatasetBase:
    """A dataset's train / val / test lists of :class:`Datum` and what describes them.

    Subclasses (readers) are registered in ``DATASET_REGISTRY`` and built as ``cls(cfg)``.
    Class attributes a reader sets: ``dataset_dir`` (folder under ``DATASET.ROOT``),
    ``modality``, ``classnames`` (prompt names in label order), ``templates`` (hand-crafted
    prompt templates with one ``{}``; the first is the dataset's default), ``source`` (where to
    download it), ``licence``.

    Args:
        train_x: training data.
        val: validation data (CILMP has none: readers pass ``test`` here, see ``val_is_test``).
        test: test data.
        classnames: prompt class names in label order; default: from the data.
        split_hash: sha256 of the canonical split (see :func:`split_hash`).

    Raises:
        ValueError: a label outside ``[0, len(classnames))``, naming the datum.
    """

    dataset_dir = ""
    modality = ""
    classnames: Sequence[str] = ()
    templates: Sequence[str] = ("a photo of a {}.",)
    source = ""
    licence = ""

    def __init__(self, train_x: List[Datum], val: Optional[List[Datum]] = None,
                 test: Optional[List[Datum]] = None, classnames: Optional[Sequence[str]] = None,
                 split_hash: str = "", val_is_test: bool = False):
        self._train_x = list(train_x)
        self._test = list(test or [])
        self._val = list(val) if val is not None else list(self._test)
        self.val_is_test = val_is_test or val is None
        names = list(classnames) if classnames is not None else list(self.classnames)
        if not names:
            names = self._names_from_data(self._train_x + self._test)
        self.classnames = names  # instance list shadows the reader's class attribute
        for split, items in (("train", self._train_x), ("val", self._val), ("test", self._test)):
            for d in items:
                if not 0 <= d.label < len(names):
                    raise ValueError(
                        f"{type(self).__name__}: label {d.label} of {d.impath} ({split}) is outside "
                        f"the class list {names}"
                    )
        self.split_hash = split_hash or compute_split_hash(
            {"train": self._train_x, "test": self._test}, root=None
        )

    @staticmethod
    def _names_from_data(items: List[Datum]) -> List[str]:
        m: Dict[int, str] = {}
        for d in items:
            m.setdefault(d.label, d.classname)
        return [m[i] for i in range(max(m) + 1)] if m else []

    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def train_x(self) -> List[Datum]:
        return self._train_x

    @property
    def val(self) -> List[Datum]:
        return self._val

    @property
    def test(self) -> List[Datum]:
        return self._test

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def lab2cname(self) -> Dict[int, str]:
        return dict(enumerate(self.classnames))

    def read_image(self, impath: str) -> Image.Image:
        """Open ``impath`` as RGB.

        Raises:
            FileNotFoundError: the file is missing (names the dataset).
            ImageReadError: the file cannot be decoded (names the file and the dataset).
        """
        if not os.path.exists(impath):
            raise FileNotFoundError(f"{self.name}: image file not found: {impath}")
        try:
            with Image.open(impath) as im:
                return im.convert("RGB")
        except Exception as err:  # PIL raises several types for broken files
            raise ImageReadError(f"{self.name}: cannot read image {impath}: {err}") from err


def compute_split_hash(split: Dict[str, List[Datum]], root: Optional[str]) -> str:
    """sha256 of a split's canonical JSON: sorted ``[relative path, label]`` pairs per split.

    Paths are made relative to ``root`` (when given) and POSIX, so the hash does not depend on
    where the data lives.
    """
    canon = {}
    for k in sorted(split):
        rows = []
        for d in split[k]:
            p = d.impath
            if root is not None:
                try:
                    p = Path(p).resolve().relative_to(Path(root).resolve()).as_posix()
                except ValueError:
                    pass
            rows.append([p, int(d.label)])
        canon[k] = sorted(rows)
    return hashlib.sha256(json.dumps(canon, sort_keys=True).encode()).hexdigest()


_INTERP = {"bicubic": 3, "bilinear": 2, "nearest": 0}


def build_transform(cfg, is_train: bool) -> Callable:
    """CLIP preprocessing with Dassl's transform names.

    Train: ``random_resized_crop`` (scale ``INPUT.RRCROP_SCALE``), ``random_flip``, then
    ``normalize`` with CLIP's mean/std. Test: resize the short side to ``INPUT.SIZE`` and
    centre-crop, then normalise. Output tensors are ``[3, H, W]`` float32.
    """
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    interp = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
              "nearest": InterpolationMode.NEAREST}[cfg.INPUT.INTERPOLATION]
    size = tuple(cfg.INPUT.SIZE)
    names = list(cfg.INPUT.TRANSFORMS)
    unknown = set(names) - {"random_resized_crop", "random_flip", "normalize", "center_crop", "resize"}
    if unknown:
        raise ValueError(f"INPUT.TRANSFORMS: unknown transform(s) {sorted(unknown)}")
    normalize = T.Normalize(mean=cfg.INPUT.PIXEL_MEAN, std=cfg.INPUT.PIXEL_STD)
    ops = []
    if is_train and not cfg.INPUT.NO_TRANSFORM:
        if "random_resized_crop" in names:
            ops.append(T.RandomResizedCrop(size, scale=tuple(cfg.INPUT.RRCROP_SCALE), interpolation=interp))
        else:
            ops += [T.Resize(max(size), interpolation=interp), T.CenterCrop(size)]
        if "random_flip" in names:
            ops.append(T.RandomHorizontalFlip())
    else:
        ops += [T.Resize(max(size), interpolation=interp), T.CenterCrop(size)]
    ops.append(T.ToTensor())
    if "normalize" in names:
        ops.append(normalize)
    return T.Compose(ops)


class DatasetWrapper(Dataset):
    """Torch dataset over a list of :class:`Datum`; items are dicts
    ``{"img": [3, H, W] float32, "label": int, "impath": str, "index": int}``."""

    def __init__(self, dataset: DatasetBase, data: List[Datum], transform: Callable):
        self.dataset = dataset
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx: int) -> dict:
        d = self.data[idx]
        img = self.dataset.read_image(d.impath)
        return {"img": self.transform(img), "label": d.label, "impath": d.impath, "index": idx}


def build_dataset(cfg) -> DatasetBase:
    """Instantiate the reader named by ``cfg.DATASET.NAME`` (KeyError with close matches)."""
    from .. import datasets as _datasets  # noqa: F401  (registers readers)

    return DATASET_REGISTRY.get(cfg.DATASET.NAME)(cfg)


class DataManager:
    """Builds the dataset and its loaders (Dassl's ``DataManager``).

    Attributes:
        dataset: the :class:`DatasetBase`.
        train_loader_x, val_loader, test_loader: torch ``DataLoader`` objects; the training
            loader shuffles and drops the last incomplete batch when the set is at least one
            batch long (as Dassl).
    """

    def __init__(self, cfg, dataset: Optional[DatasetBase] = None, generator_seed: Optional[int] = None):
        self.cfg = cfg
        self.dataset = dataset if dataset is not None else build_dataset(cfg)
        if not self.dataset.train_x and not self.dataset.test:
            raise ValueError(f"{self.dataset.name}: the dataset is empty")
        self.tfm_train = build_transform(cfg, is_train=True)
        self.tfm_test = build_transform(cfg, is_train=False)
        workers = min(cfg.DATALOADER.NUM_WORKERS, os.cpu_count() or 1)
        g = torch.Generator()
        g.manual_seed(generator_seed if generator_seed is not None else max(cfg.SEED, 0))
        bs = cfg.DATALOADER.TRAIN_X.BATCH_SIZE
        train = self.dataset.train_x
        self.train_loader_x = DataLoader(
            DatasetWrapper(self.dataset, train, self.tfm_train), batch_size=bs, shuffle=True,
            num_workers=workers, drop_last=len(train) >= bs, generator=g,
            persistent_workers=False,
        ) if train else None
        tbs = cfg.DATALOADER.TEST.BATCH_SIZE
        self.val_loader = DataLoader(DatasetWrapper(self.dataset, self.dataset.val, self.tfm_test),
                                     batch_size=tbs, shuffle=False, num_workers=workers)
        self.test_loader = DataLoader(DatasetWrapper(self.dataset, self.dataset.test, self.tfm_test),
                                      batch_size=tbs, shuffle=False, num_workers=workers)

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def lab2cname(self) -> Dict[int, str]:
        return self.dataset.lab2cname

    @property
    def classnames(self) -> List[str]:
        return list(self.dataset.classnames)

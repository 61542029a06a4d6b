"""The shared MedMNIST .npz reader: the real PneumoniaMNIST file, sizes, loaders."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import SHARED_DATA, TINY_OPTS
from medpt.datasets.check import check_dataset
from medpt.datasets.fixtures import make_fixture
from medpt.datasets.medmnist import MedMNIST2D, npz_files, parse_ref
from medpt.engine import build_config
from medpt.engine.data import DataManager, ImageReadError
from medpt.engine.registry import DATASET_REGISTRY

REAL = SHARED_DATA / "pneumoniamnist_28.npz"


def test_one_reader_shared_by_every_medmnist_set():
    for name in ("dermamnist", "dermamnist_official", "pneumoniamnist"):
        cls = DATASET_REGISTRY.get(name)
        assert issubclass(cls, MedMNIST2D) and cls.read_image is MedMNIST2D.read_image
        assert cls.build_split.__func__ is MedMNIST2D.build_split.__func__


@pytest.mark.skipif(not REAL.is_file(), reason=f"{REAL} not present")
def test_real_pneumoniamnist_file(tmp_path):
    d = tmp_path / "pneumoniamnist"
    d.mkdir()
    (d / REAL.name).symlink_to(REAL)
    cfg = build_config("coop", "pneumoniamnist", root=str(tmp_path), opts=["DATALOADER.NUM_WORKERS", "0"])
    ds = DATASET_REGISTRY.get("pneumoniamnist")(cfg)
    with np.load(REAL) as z:
        want = {s: np.bincount(z[f"{s}_labels"].ravel(), minlength=2).tolist() for s in ("train", "test")}
        first = z["train_images"][0]
    got = {s: [sum(x.label == c for x in items) for c in range(2)] for s, items in (("train", ds.train_x), ("test", ds.test))}
    assert got == want and sum(want["test"]) == 624
    ref = next(x.impath for x in ds.train_x if x.impath.endswith("#train/0"))
    im = ds.read_image(ref)
    assert im.mode == "RGB" and im.size == (28, 28)
    assert np.array_equal(np.asarray(im)[..., 0], first)                 # grayscale replicated
    rep = check_dataset("pneumoniamnist", tmp_path, expected=want)
    assert rep.ok, rep.all_problems()


def test_largest_size_is_read_and_refs(tmp_path):
    make_fixture("dermamnist", tmp_path)
    assert sorted(npz_files(tmp_path / "dermamnist", "dermamnist")) == [28, 64]
    cfg = build_config("coop", "dermamnist_official", root=str(tmp_path), opts=["DATALOADER.NUM_WORKERS", "0"])
    ds = DATASET_REGISTRY.get("dermamnist_official")(cfg)
    assert all("dermamnist_64.npz#" in x.impath for x in ds.train_x + ds.test)
    assert ds.read_image(ds.train_x[0].impath).size == (8, 8)
    assert parse_ref("/a/b_224.npz#val/17") == ("/a/b_224.npz", "val", 17)
    with pytest.raises(ValueError):
        parse_ref("/a/b.png")
    with pytest.raises(ImageReadError, match="index 999"):
        ds.read_image(ds.train_x[0].impath.rsplit("/", 1)[0] + "/999")


def test_medmnist_through_the_data_manager(tmp_path):
    make_fixture("pneumoniamnist", tmp_path)
    cfg = build_config("coop", "pneumoniamnist", root=str(tmp_path), protocol="demo", opts=TINY_OPTS)
    dm = DataManager(cfg)
    batch = next(iter(dm.test_loader))
    assert tuple(batch["img"].shape) == (5, 3, 32, 32) and batch["label"].tolist() == [0, 0, 1, 1, 1]

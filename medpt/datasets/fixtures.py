"""Miniature copies of each dataset's real layout, for tests (no real data needed).

:func:`make_fixture` writes, under ``<root>/<id>/``, a few images per class with the dataset's
own file-name patterns, metadata files and columns (CSV with ``;`` and a trailing-space header
for Fetal-US, one-hot float CSVs for ISIC, an XLSX ground truth for ADAM and an XLSX copy for
Fetal-US, ``full_df.csv`` for ODIR, index CSVs for Derm7pt, MedMNIST ``.npz`` files) and image
modes seen in the real sets (grayscale ``L``, ``RGB``, ``RGBA`` and palette ``P``; JPEG and PNG;
upper-case ``.JPG`` for Chaoyang), plus the clutter of real downloads that readers must ignore
(``LICENSE.txt``, ``._`` resource forks, unlabelled competition test images, ``val/`` folders).

It returns the per-class ``{"train": [...], "test": [...]}`` counts the reader must produce:
written by hand for official splits, and for generated splits the allocation of
:func:`medpt.datasets.splits.largest_remainder` at the paper's ratio.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np
from PIL import Image

from .splits import largest_remainder, scaled_total

Counts = Dict[str, List[int]]


def write_image(path: Path, mode: str = "RGB", size=(12, 10), seed: int = 0) -> Path:
    """A small random image in ``mode`` (``L``, ``RGB``, ``RGBA``, ``P``), format from the suffix."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    if mode == "L":
        im = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L")
    else:
        im = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
        if mode == "RGBA":
            im = im.convert("RGBA")
        elif mode == "P":
            im = im.convert("P", palette=Image.ADAPTIVE, colors=16)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}[path.suffix.lower()]
    if fmt == "JPEG" and im.mode in ("RGBA", "P"):
        im = im.convert("RGB")
    im.save(path, fmt)
    return path


def _csv(path: Path, header: Sequence[str], rows, delimiter=","):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)


def _xlsx(path: Path, header: Sequence[str], rows):
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(list(header))
    for r in rows:
        ws.append(list(r))
    path.parent.mkdir(parents=True, exist_ok=True)
    wb.save(path)


def generated_counts(per_class: Sequence[int], paper_train: int, paper_total: int,
                     subset: int = None, pool: int = None) -> Counts:
    """Per-class train/test counts the generator gives for a miniature set (paper ratio)."""
    n = sum(per_class)
    if subset is not None:
        chosen = largest_remainder(per_class, scaled_total(n, pool, subset))
    else:
        chosen = list(per_class)
    n_train = scaled_total(sum(chosen), paper_total, paper_train)
    train = largest_remainder(chosen, n_train)
    return {"train": train, "test": [c - t for c, t in zip(chosen, train)]}


def _adam(d: Path) -> Counts:
    for i in range(3):
        write_image(d / "Training400" / "Non-AMD" / f"N{i + 1:04d}.jpg", "RGB", seed=i)
    for i in range(2):
        write_image(d / "Training400" / "AMD" / f"A{i + 1:04d}.jpg", "RGB", seed=10 + i)
    _xlsx(d / "Training400" / "Fovea_location.xlsx", ["ID", "imgName", "Fovea_X", "Fovea_Y"],
          [[1, "A0001.jpg", 1000.5, 1020.1], [2, "A0002.jpg", 990.0, 1001.2]])
    labels = [0, 1, 0, 0, 1, 0]
    for i in range(len(labels)):
        write_image(d / "Validation400" / f"V{i + 1:04d}.jpg", "RGB", seed=20 + i)
    _xlsx(d / "Validation400" / "Classification_Results.xlsx", ["imgName", "Label"],
          [[f"V{i + 1:04d}.jpg", l] for i, l in enumerate(labels)])
    return {"train": [3, 2], "test": [4, 2]}


def _aptos(d: Path, resplit: bool = False) -> Counts:
    if resplit:
        spec = {"train_1.csv": ("train_images/train_images", [3, 2, 2, 1, 1]),
                "valid.csv": ("val_images/val_images", [1, 1, 0, 1, 0]),
                "test.csv": ("test_images/test_images", [1, 0, 1, 0, 1])}
        k = 0
        for f, (folder, counts) in spec.items():
            rows = []
            for label, n in enumerate(counts):
                for _ in range(n):
                    code = f"{k * 7919 % 65536:04x}{k:08x}"
                    write_image(d / folder / f"{code}.png", "RGB", seed=k)
                    rows.append([code, label])
                    k += 1
            _csv(d / f, ["id_code", "diagnosis"], rows)
        return {"train": [3, 2, 2, 1, 1], "test": [2, 1, 1, 1, 1]}
    counts = [5, 3, 4, 2, 2]
    rows, k = [], 0
    for label, n in enumerate(counts):
        for _ in range(n):
            code = f"{k * 7919 % 65536:04x}{k:08x}"
            write_image(d / "train_images" / f"{code}.png", "RGB", seed=k)
            rows.append([code, label])
            k += 1
    _csv(d / "train.csv", ["id_code", "diagnosis"], rows)
    write_image(d / "test_images" / "ffff00000001.png", "RGB", seed=99)  # unlabelled, ignored
    _csv(d / "test.csv", ["id_code"], [["ffff00000001"]])
    return generated_counts(counts, 2930, 3662)


def _chaoyang(d: Path) -> Counts:
    per = {"train": [2, 2, 3, 1], "test": [1, 1, 2, 1]}
    k = 0
    for key, counts in per.items():
        entries = []
        for label, n in enumerate(counts):
            for _ in range(n):
                name = f"{key}/{353042 + k}_4-IMG{k:03d}x014-{label + 1}.JPG"
                write_image(d / name, "RGB", seed=k)
                entries.append({"name": name, "label": label})
                k += 1
        (d / f"{key}.json").write_text(json.dumps(entries))
    return per


def _cpn(d: Path) -> Counts:
    spec = (("NORMAL", 5, "L", ".png"), ("COVID", 4, "RGB", ".jpg"), ("PNEUMONIA", 4, "P", ".png"))
    for f, n, mode, ext in spec:
        for i in range(n):
            write_image(d / f / f"{f}({i + 1}){ext}", mode, seed=i)
    return generated_counts([5, 4, 4], 3659, 5228)


def _npz(path: Path, per_split: Dict[str, Sequence[int]], rgb: bool, size: int = 8):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, counts in per_split.items():
        labels = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.uint8)
        shape = (len(labels), size, size, 3) if rgb else (len(labels), size, size)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = labels.reshape(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)


DERMA_SPLITS = {"train": [3, 3, 4, 2, 4, 8, 2], "val": [1, 1, 1, 0, 1, 2, 1], "test": [1, 1, 2, 1, 2, 3, 1]}


def _dermamnist(d: Path) -> Counts:
    _npz(d / "dermamnist.npz", DERMA_SPLITS, rgb=True, size=6)  # 28 px file (smaller here)
    _npz(d / "dermamnist_64.npz", DERMA_SPLITS, rgb=True, size=8)  # the larger one is read
    pool = [sum(v[c] for v in DERMA_SPLITS.values()) for c in range(7)]
    return generated_counts(pool, 5600, 8000, subset=8000, pool=10015)


def _dermamnist_official(d: Path) -> Counts:
    _dermamnist(d)
    return {"train": DERMA_SPLITS["train"], "test": DERMA_SPLITS["test"]}


def _pneumoniamnist(d: Path) -> Counts:
    per = {"train": [3, 5], "val": [1, 1], "test": [2, 3]}
    _npz(d / "pneumoniamnist.npz", per, rgb=False)
    return {"train": per["train"], "test": per["test"]}


DERM7PT_CASES = [  # diagnosis, split
    ("basal cell carcinoma", "train"), ("basal cell carcinoma", "test"),
    ("seborrheic keratosis", "train"), ("seborrheic keratosis", "test"),
    ("melanoma (in situ)", "train"), ("melanoma (less than 0.76 mm)", "train"), ("melanoma", "test"),
    ("melanoma metastasis", "valid"),
    ("lentigo", "train"), ("vascular lesion", "test"), ("dermatofibroma", "valid"),
    ("clark nevus", "train"), ("blue nevus", "train"), ("reed or spitz nevus", "test"), ("dermal nevus", "valid"),
]


def _derm7pt(d: Path) -> Counts:
    header = ["case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
              "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
              "level_of_diagnostic_difficulty", "elevation", "location", "sex", "clinic", "derm", "notes"]
    rows, idx = [], {"train": [], "valid": [], "test": []}
    for i, (dx, split) in enumerate(DERM7PT_CASES):
        sub = ["Aal", "Nel", "Fcl", "Gdl"][i % 4]
        clinic = f"{sub}/{sub}c{i:03d}.jpg"
        derm = f"{sub}/{sub}d{i:03d}" + (".JPG" if i % 5 == 0 else ".jpg")
        write_image(d / "images" / clinic, "RGB", seed=i)
        write_image(d / "images" / derm, "RGB", seed=100 + i)
        rows.append([i + 1, dx, 1, "absent", "absent", "absent", "absent", "absent", "absent", "absent",
                     "low", "flat", "back", "female", clinic, derm, ""])
        idx[split].append(i)
    _csv(d / "meta" / "meta.csv", header, rows)
    for split, ids in idx.items():
        _csv(d / "meta" / f"{split}_indexes.csv", ["indexes"], [[i] for i in ids])
    return {"train": [1, 1, 2, 1, 2], "test": [1, 1, 1, 1, 1]}


def _fetal(d: Path) -> Counts:
    planes = ["Fetal brain", "Fetal femur", "Fetal abdomen", "Fetal thorax", "Maternal cervix", "Other"]
    per = {"1": [2, 1, 1, 2, 1, 2], "0": [1, 1, 1, 1, 1, 1]}
    rows, k = [], 0
    for flag, counts in per.items():
        for label, n in enumerate(counts):
            for _ in range(n):
                name = f"Patient{k + 1:05d}_Plane{label + 1}_{k % 3 + 1}_of_3"
                write_image(d / "Images" / f"{name}.png", "RGBA" if k % 4 == 0 else "L", seed=k)
                brain = "Trans-thalamic" if label == 0 else "Not A Brain"
                rows.append([name, k + 1, planes[label], brain, "Op. 1", "Voluson E6", flag])
                k += 1
    header = ["Image_name", "Patient_num", "Plane", "Brain_plane", "Operator", "US_Machine", "Train "]
    _csv(d / "FETAL_PLANES_DB_data.csv", header, rows, delimiter=";")
    _xlsx(d / "FETAL_PLANES_DB_data.xlsx", header, [r[:-1] + [int(r[-1])] for r in rows])
    return {"train": per["1"], "test": per["0"]}


def _isic(d: Path) -> Counts:
    codes = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    per = {"Training": [2, 3, 1, 1, 2, 1, 1], "Test": [1, 2, 1, 1, 1, 1, 1]}
    k = 24306
    for part, counts in per.items():
        rows = []
        for label, n in enumerate(counts):
            for _ in range(n):
                image = f"ISIC_{k:07d}"
                write_image(d / f"ISIC2018_Task3_{part}_Input" / f"{image}.jpg", "RGB", seed=k)
                rows.append([image] + ["1.0" if c == label else "0.0" for c in range(7)])
                k += 1
        (d / f"ISIC2018_Task3_{part}_Input" / "LICENSE.txt").write_text("CC BY-NC 4.0\n")
        _csv(d / f"ISIC2018_Task3_{part}_GroundTruth" / f"ISIC2018_Task3_{part}_GroundTruth.csv",
             ["image"] + codes, rows)
    write_image(d / "ISIC2018_Task3_Validation_Input" / "ISIC_0034321.jpg", "RGB")  # unused
    _csv(d / "ISIC2018_Task3_Training_LesionGroupings.csv", ["image", "lesion_id", "diagnosis_confirm_type"],
         [["ISIC_0024306", "HAM_0000118", "histopathology"]])
    return {"train": per["Training"], "test": per["Test"]}


KVASIR_FOLDERS = ("dyed-lifted-polyps", "dyed-resection-margins", "esophagitis", "normal-cecum",
                  "normal-pylorus", "normal-z-line", "polyps", "ulcerative-colitis")


def _kvasir(d: Path) -> Counts:
    counts = [5] * 8
    k = 0
    for f, n in zip(KVASIR_FOLDERS, counts):
        for _ in range(n):
            uuid = f"{k:08x}-{k * 31 % 65536:04x}-4e5f-8a9b-{k * 7919:012x}"
            write_image(d / "kvasir-dataset-v2" / f / f"{uuid}.jpg", "RGB", seed=k)
            k += 1
    return generated_counts(counts, 5600, 8000)


def _odir(d: Path) -> Counts:
    letters = "NDGCAHMO"
    counts = [6, 4, 2, 2, 2, 2, 2, 3]
    header = ["ID", "Patient Age", "Patient Sex", "Left-Fundus", "Right-Fundus", "Left-Diagnostic Keywords",
              "Right-Diagnostic Keywords"] + list(letters) + ["filepath", "labels", "target", "filename"]
    rows, k = [], 0
    for label, n in enumerate(counts):
        for _ in range(n):
            pid, eye = k // 2, ("left", "right")[k % 2]
            fname = f"{pid}_{eye}.jpg"
            write_image(d / "preprocessed_images" / fname, "RGB", seed=k)
            onehot = [1 if c == label else 0 for c in range(8)]
            rows.append([pid, 60, "Male", f"{pid}_left.jpg", f"{pid}_right.jpg", "normal fundus", "normal fundus"]
                        + onehot + [f"../input/ocular-disease-recognition-odir5k/ODIR-5K/Training Images/{fname}",
                                    f"['{letters[label]}']", str(onehot), fname])
            k += 1
    _csv(d / "full_df.csv", header, rows)
    return generated_counts(counts, 5113, 6392)


def _pneumonia(d: Path) -> Counts:
    base = d / "chest_xray"
    spec = {"train": (3, 2, 2), "test": (2, 1, 1), "val": (1, 1, 0)}
    k = 0
    for split, (n_norm, n_bac, n_vir) in spec.items():
        for i in range(n_norm):
            name = f"IM-{115 + k:04d}-0001.jpeg" if i % 2 == 0 else f"NORMAL2-IM-{1427 + k:04d}-0001.jpeg"
            write_image(base / split / "NORMAL" / name, "L", seed=k)
            k += 1
        for i in range(n_bac):
            write_image(base / split / "PNEUMONIA" / f"person{k}_bacteria_{k * 3}.jpeg", "RGB" if i else "L", seed=k)
            k += 1
        for i in range(n_vir):
            write_image(base / split / "PNEUMONIA" / f"person{k}_virus_{k * 3}.jpeg", "L", seed=k)
            k += 1
    (base / "train" / "NORMAL" / "._IM-0115-0001.jpeg").write_bytes(b"\x00\x05\x16\x07")  # macOS fork
    return {"train": [3, 2, 2], "test": [2, 1, 1]}


MAKERS: Dict[str, Callable[[Path], Counts]] = {
    "adam": _adam, "aptos2019": _aptos, "aptos2019_resplit": lambda d: _aptos(d, resplit=True),
    "chaoyang": _chaoyang, "cpn_xray": _cpn, "dermamnist": _dermamnist,
    "dermamnist_official": _dermamnist_official, "derm7pt": _derm7pt, "fetal_us": _fetal,
    "isic2018": _isic, "kvasir": _kvasir, "odir": _odir, "pneumonia": _pneumonia,
    "pneumoniamnist": _pneumoniamnist,
}
#: fixture variant -> folder (dataset id) it is written to
FOLDER = {"aptos2019_resplit": "aptos2019", "dermamnist_official": "dermamnist"}


def make_fixture(name: str, root: Path | str) -> Counts:
    """Write the miniature layout of ``name`` under ``<root>/<dataset id>/``.

    Args:
        name: a dataset id, or a variant (``aptos2019_resplit``, ``dermamnist_official``).
        root: the ``DATASET.ROOT`` to write into.

    Returns:
        The per-class ``{"train": [...], "test": [...]}`` counts the reader must produce.

    Raises:
        KeyError: unknown name (lists the known ones).
    """
    if name not in MAKERS:
        raise KeyError(f"no fixture for {name!r}; known: {sorted(MAKERS)}")
    d = Path(root) / FOLDER.get(name, name)
    d.mkdir(parents=True, exist_ok=True)
    return MAKERS[name](d)

"""FETAL_PLANES_DB maternal-fetal ultrasound planes, 6 classes, official ``Train`` column.

Layout: the unzipped ``FETAL_PLANES_ZENODO`` under ``<DATASET.ROOT>/fetal_us/``:
``FETAL_PLANES_DB_data.csv`` (``;``-separated; the ``Train `` header has a trailing space) or,
when the CSV is absent, ``FETAL_PLANES_DB_data.xlsx``, and ``Images/<Image_name>.png``. Label =
``Plane`` (``Other`` -> "Other planes"); ``Train`` 1 = train, 0 = test (patient-level split):
7,129 / 5,271. Source: ``usr922/cilmp:cilmp/datasets/fetal_us.py``; Zenodo 3904280.
"""
from __future__ import annotations

from pathlib import Path
from typing import Set

from ..engine.registry import DATASET_REGISTRY
from . import splits as S
from .base import MedicalDataset, list_files, read_csv_rows, read_xlsx_rows

PLANES = ("Fetal brain", "Fetal femur", "Fetal abdomen", "Fetal thorax", "Maternal cervix", "Other")


@DATASET_REGISTRY.register("fetal_us")
class FetalUS(MedicalDataset):
    """Fetal ultrasound planes: brain, femur, abdomen, thorax, maternal cervix, other.

    Raises:
        FileNotFoundError: neither the CSV nor the XLSX table is present.
        ValueError: an unknown ``Plane`` or a ``Train`` value other than 0/1 (names the row).
    """

    dataset_dir = "fetal_us"
    modality = "ultrasound"
    classnames = ("Fetal brain", "Fetal femur", "Fetal abdomen", "Fetal thorax", "Maternal cervix", "Other planes")
    prompt_names = ("fetal brain plane", "fetal femur plane", "fetal abdomen plane", "fetal thorax plane",
                    "maternal cervix", "other ultrasound plane")
    templates = ("a photo of a {}.", "an ultrasound image of {}.", "a maternal-fetal ultrasound image of {}.")
    source = "https://zenodo.org/records/3904280 (FETAL_PLANES_ZENODO.zip)"
    licence = "CC BY 4.0 (Burgos-Artizzu et al., Sci Rep 2020)"
    paper_counts = (7129, 5271)
    layout = """fetal_us/
  FETAL_PLANES_DB_data.csv    (';'-separated: Image_name;Patient_num;Plane;Brain_plane;Operator;US_Machine;Train )
  FETAL_PLANES_DB_data.xlsx   (same content; read when the CSV is absent)
  Images/<Image_name>.png"""

    @classmethod
    def build_split(cls, root: Path) -> S.SplitRows:
        csv_path, xlsx_path = root / "FETAL_PLANES_DB_data.csv", root / "FETAL_PLANES_DB_data.xlsx"
        if csv_path.is_file():
            table, rows = csv_path, read_csv_rows(csv_path, "fetal_us", delimiter=";")
        elif xlsx_path.is_file():
            table, rows = xlsx_path, read_xlsx_rows(xlsx_path, "fetal_us")
        else:
            raise FileNotFoundError(cls.missing_message(root, f"table {csv_path}"))
        lookup = {p.lower(): i for i, p in enumerate(PLANES)}
        out = {"train": [], "test": []}
        for i, r in enumerate(rows, start=2):
            plane = r.get("Plane", "").strip()
            if plane.lower() not in lookup:
                raise ValueError(f"fetal_us: {table} row {i}: unknown Plane {plane!r} (expected one of {PLANES})")
            flag = r.get("Train", "").strip()
            if flag not in ("0", "1"):
                raise ValueError(f"fetal_us: {table} row {i}: Train value {flag!r} is not 0 or 1")
            name = r["Image_name"].strip()
            if not name.lower().endswith(".png"):
                name += ".png"
            out["train" if flag == "1" else "test"].append((f"Images/{name}", lookup[plane.lower()]))
        return out

    @classmethod
    def disk_files(cls, root: Path) -> Set[str]:
        return {p.relative_to(root).as_posix() for p in list_files(root / "Images")}

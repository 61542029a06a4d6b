"""The paper's dataset table (modality, classes, train, test) regenerated from the readers, as LaTeX.

Counts come from the data when it is present under ``root`` (the split the reader would use,
see :mod:`medpt.datasets.check`), otherwise from the reader's ``paper_counts`` (marked with a
dagger). Rendering: ``tabulate`` (``latex_raw``). Source: CILMP paper, Table I (datasets).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

from tabulate import tabulate

from ..engine.registry import DATASET_REGISTRY
from .check import PAPER_DATASETS, check_dataset

DISPLAY = {"adam": "ADAM", "aptos2019": "APTOS 2019", "chaoyang": "Chaoyang", "cpn_xray": "CPN-X-ray",
           "dermamnist": "DermaMNIST", "derm7pt": "Derm7pt", "fetal_us": "Fetal-US", "isic2018": "ISIC 2018",
           "kvasir": "Kvasir", "odir": "ODIR", "pneumonia": "Pneumonia", "pneumoniamnist": "PneumoniaMNIST"}


def dataset_rows(root: Optional[Path | str] = None, datasets: Sequence[str] = PAPER_DATASETS) -> List[list]:
    """``[name, modality, #classes, train, test, from_data]`` per dataset."""
    from .. import datasets as _datasets  # noqa: F401

    rows = []
    for d in datasets:
        cls = DATASET_REGISTRY.get(d)
        train, test = cls.paper_counts
        from_data = False
        if root is not None:
            rep = check_dataset(d, root)
            if rep.present and rep.counts:
                train, test, from_data = sum(rep.counts["train"]), sum(rep.counts["test"]), True
        rows.append([DISPLAY.get(d, d), cls.modality, len(cls.classnames), train, test, from_data])
    return rows


def dataset_table_latex(root: Optional[Path | str] = None, datasets: Sequence[str] = PAPER_DATASETS) -> str:
    """LaTeX table (tabular with \\hline rules): Dataset, Modality, Classes, Train, Test.

    Counts read from the data are plain; counts from the paper (data absent) carry ``$^\\dagger$``.
    """
    body = []
    for name, mod, ncls, train, test, from_data in dataset_rows(root, datasets):
        mark = "" if from_data else "$^\\dagger$"
        body.append([name, mod, ncls, f"{train:,}{mark}", f"{test:,}{mark}"])
    return tabulate(body, headers=["Dataset", "Modality", "Classes", "Train", "Test"],
                    tablefmt="latex_raw", colalign=("left", "left", "right", "right", "right"))

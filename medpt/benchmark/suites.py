"""Benchmark suites: named grids and the tables and figures built from them.

A suite is ``configs/benchmark/<name>.yaml``::

    description: what the suite reproduces (paper table / figure)
    protocol: paper            # default protocol of its grids
    seeds: [1, 2, 3]
    grids:                     # each entry expands to methods x datasets x seeds jobs
      - methods: all           # names, comma string or list; "all" = every registered trainer
        datasets: all
        variant: ""            # row label (ablations); default: the method name
        opts: []               # KEY VALUE overrides for this grid
        label_ratios: [0.1]    # optional: one grid per ratio (DATASET.LABEL_RATIO)
        backbone: null         # optional open_clip model / weights for this grid
        weights: null
        trainer_config: null
        save_features: false   # keep test image features (t-SNE figures)
    tables:                    # kinds of medpt.benchmark.tables (per_dataset, modality, average,
      - kind: modality         #   overview, ablation, per_class, label_ratio); optional datasets/rows
    figures:                   # gflops_vs_accuracy, per_class, label_ratio, tsne
      - kind: gflops_vs_accuracy

Tables and figures of a suite are built only from the records of the suite's own jobs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml

from ..engine.config import CONFIG_ROOT
from .grid import Job, plan_jobs

SUITE_DIR = CONFIG_ROOT / "benchmark"


@dataclass
class Suite:
    """A parsed suite file (see module doc)."""

    name: str
    description: str
    protocol: str
    seeds: List[int]
    grids: List[Dict]
    tables: List[Dict] = field(default_factory=list)
    figures: List[Dict] = field(default_factory=list)


def available_suites() -> List[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("*.yaml"))


def load_suite(name_or_path: str) -> Suite:
    """Read a suite by name (``configs/benchmark/<name>.yaml``) or path.

    Raises:
        KeyError: unknown suite (lists the shipped ones).
        ValueError: a malformed suite file (names the file and the problem).
    """
    p = Path(name_or_path)
    if not p.is_file():
        p = SUITE_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        raise KeyError(f"Unknown suite '{name_or_path}'. Shipped suites: {', '.join(available_suites())}.")
    data = yaml.safe_load(p.read_text()) or {}
    unknown = set(data) - {"description", "protocol", "seeds", "grids", "tables", "figures"}
    if unknown:
        raise ValueError(f"suite {p}: unknown top-level keys {sorted(unknown)}")
    if not data.get("grids"):
        raise ValueError(f"suite {p}: needs a non-empty 'grids' list")
    for i, g in enumerate(data["grids"]):
        bad = set(g) - {"methods", "datasets", "variant", "opts", "label_ratios", "backbone", "weights",
                        "trainer_config", "save_features", "seeds", "protocol"}
        if bad:
            raise ValueError(f"suite {p}: grid {i} has unknown keys {sorted(bad)}")
        if "methods" not in g or "datasets" not in g:
            raise ValueError(f"suite {p}: grid {i} needs 'methods' and 'datasets'")
    return Suite(p.stem, data.get("description", ""), data.get("protocol", "paper"),
                 [int(s) for s in data.get("seeds", [1, 2, 3])], data["grids"], data.get("tables", []),
                 data.get("figures", []))


def suite_jobs(suite: Suite, *, root: Optional[str] = None, weights: Optional[str] = None,
               backbone: Optional[str] = None, seeds: Optional[Sequence[int]] = None,
               protocol: Optional[str] = None, extra_opts: Sequence[str] = ()) -> List[Job]:
    """Expand a suite into jobs; command-line values override the suite's (except a grid's own
    backbone/weights, which define that grid)."""
    jobs: List[Job] = []
    for g in suite.grids:
        ratios = g.get("label_ratios") or [None]
        for q in ratios:
            opts = [str(x) for x in (g.get("opts") or [])] + list(extra_opts)
            variant = g.get("variant", "") or ""
            if q is not None:
                opts += ["DATASET.LABEL_RATIO", str(q)]
            jobs += plan_jobs(g["methods"], g["datasets"], seeds or g.get("seeds") or suite.seeds,
                              protocol=protocol or g.get("protocol") or suite.protocol, opts=opts,
                              trainer_config=g.get("trainer_config"), backbone=g.get("backbone") or backbone,
                              weights=g.get("weights") or weights, root=root, variant=variant,
                              save_features=bool(g.get("save_features", False)))
    return list(dict.fromkeys(jobs))


def build_suite_outputs(suite: Suite, records: List[Dict], out_dir: Path, n_seeds: int,
                        row_order: Sequence[str] = ()) -> List[Path]:
    """Write the suite's tables and figures from ``records`` (the suite's own records)."""
    from . import figures as F
    from .tables import RecordSet, _safe, label_ratio_table, split_groups

    written: List[Path] = []
    out_dir = Path(out_dir) / suite.name
    for spec in suite.tables:
        kind = spec["kind"]
        recs = records
        if spec.get("across_backbones"):
            recs = [dict(r, variant=f"{r.get('variant') or r['method']} ({r['backbone']['name']}, "
                                    f"{r['backbone']['weights_id']})",
                         backbone={"name": "various", "weights_id": "various",
                                   "pretrained": r["backbone"].get("pretrained", True)}) for r in records]
        for _, group in split_groups(recs).items():
            rs = RecordSet(group, n_seeds, row_order)
            gdir = out_dir / rs.group_dir
            datasets = spec.get("datasets") or rs.datasets
            if kind == "per_dataset":
                for ds, t in rs.per_dataset().items():
                    written += t.write(gdir / ds)
            elif kind == "modality":
                for g, t in rs.modality().items():
                    written += t.write(gdir / f"modality_{_safe(g)}")
            elif kind == "average":
                written += rs.average(datasets).write(gdir / spec.get("name", "average"))
            elif kind == "overview":
                written += rs.overview().write(gdir / "overview_acc")
            elif kind == "ablation":
                t = rs.multi(datasets, spec.get("title", f"{suite.name}: ablation"))
                written += t.write(gdir / spec.get("name", "ablation"))
            elif kind == "per_class":
                for ds in datasets:
                    t = rs.per_class(ds, spec.get("rows"))
                    if t is not None:
                        written += t.write(gdir / f"per_class_{ds}")
            elif kind == "label_ratio":
                for ds in datasets:
                    written += label_ratio_table(group, ds, n_seeds, rs.notes).write(gdir / f"label_ratio_{ds}")
            else:
                raise ValueError(f"suite {suite.name}: unknown table kind '{kind}'")
    for spec in suite.figures:
        kind = spec["kind"]
        for _, group in split_groups(records).items():
            gdir = out_dir / RecordSet(group, n_seeds).group_dir
            if kind == "gflops_vs_accuracy":
                p = F.gflops_vs_accuracy(group, gdir / "gflops_vs_accuracy.png")
                written += [p] if p else []
            elif kind == "per_class":
                for ds in spec.get("datasets") or sorted({r["dataset"] for r in group}):
                    p = F.per_class_bars(group, ds, gdir / f"per_class_{ds}.png", spec.get("rows"))
                    written += [p] if p else []
            elif kind == "label_ratio":
                for ds in spec.get("datasets") or sorted({r["dataset"] for r in group}):
                    p = F.label_ratio_curves(group, ds, gdir / f"label_ratio_{ds}.png")
                    written += [p] if p else []
            elif kind == "tsne":
                for r in group:
                    if r.get("features_file") and Path(r["features_file"]).is_file() and \
                            (not spec.get("rows") or r.get("variant") or r["method"]) in (spec.get("rows") or [r.get("variant") or r["method"]]):
                        written.append(F.tsne_two_classes(
                            Path(r["features_file"]), spec.get("classes", [0, 1]), r["classnames"],
                            gdir / f"tsne_{_safe(r.get('variant') or r['method'])}_{r['dataset']}_seed{r['seed']}.png",
                            record=r))
            else:
                raise ValueError(f"suite {suite.name}: unknown figure kind '{kind}'")
    return written

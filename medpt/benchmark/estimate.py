"""Cost estimate of a grid from measured step costs (issue 9), printed by ``run.py --dry-run``.

The estimate needs no data and no GPU: it combines

* each method's **measured step cost** from a ``benchmark/speed.py`` JSON (default: the file
  shipped at ``medpt/benchmark/results/speed_cpu_fp32.json``, measured on a 2-core CPU): the train
  ratio ``r_train`` (one training step of B = 8 images / ``REF_TRAIN``), the eval ratio
  ``r_eval`` and the machine's ``REF_TRAIN`` / ``REF_EVAL`` seconds;
* each job's **protocol**: epochs (:meth:`~medpt.engine.trainer.SimpleTrainer.planned_epochs`,
  e.g. PLOT++ trains two stages) and training batch size ``B`` from the resolved config;
* each job's **split sizes**: from the data when it is on disk, otherwise the paper's counts
  (the reader's ``paper_counts``; with ``DATASET.NUM_SHOTS`` > 0, shots x classes).

Per job: ``train_s = epochs * floor(N_train / B) * r_train * REF_TRAIN_s * B / 8`` (a step's cost
taken as linear in the batch size; the loader drops the last partial batch, as Dassl's does)
and ``eval_s = N_test * r_eval * REF_EVAL_s / 8`` (one test pass). Not counted: data loading and
decoding, checkpoint writes, building the feature cache or a method's class-text banks, and
the LLM extraction of CILMP. "Through the cache" uses a method's cached train ratio where it has
one (the shared feature cache with ``MODEL.FEATURE_CACHE.NUM_VIEWS`` > 0, a documented protocol
deviation for augmented training images).

To estimate for another machine, run ``python benchmark/speed.py --out my.json`` there (its
REF seconds and ratios replace these) and pass ``--speed-file my.json``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

#: the shipped CPU measurement (benchmark/speed.py --reps 3 on the project's 2-core machine).
DEFAULT_SPEED_FILE = Path(__file__).resolve().parent / "results" / "speed_cpu_fp32.json"

#: the batch size of the yardstick's measured step.
MEASURED_BATCH = 8


@dataclass
class JobCost:
    """Estimated seconds of one job (``None`` when the method was not measured)."""

    method: str
    dataset: str
    seed: int
    n_train: int
    n_test: int
    sizes_from: str  # "data" | "paper" | "unknown"
    epochs: int
    batch: int
    train_s: Optional[float]
    train_cached_s: Optional[float]
    eval_s: Optional[float]
    error: str = ""


def load_speed(path: Path | str, config: str = "fp32:8") -> Tuple[Dict, Dict[str, Dict]]:
    """``(meta, results by method)`` from a ``benchmark/speed.py`` JSON.

    Raises:
        FileNotFoundError: no such file (the message says how to make one).
        ValueError: the file has no ``configs[config]`` entry or is not speed.py's format.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"speed file {p} not found; run 'python benchmark/speed.py --out {p}' "
                                "to measure the step costs on this machine")
    try:
        d = json.loads(p.read_text())
        results = d["configs"][config]["results"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{p}: not a benchmark/speed.py result with a '{config}' configuration ({err})") from err
    meta = {k: d.get(k) for k in ("date", "machine", "backbone", "reps")}
    return meta, results


def _ref_seconds(results: Dict[str, Dict]) -> Tuple[float, float]:
    """Median REF_TRAIN / REF_EVAL seconds over the measured methods."""
    import statistics

    tr = [r["ref_train_s"] for r in results.values() if r.get("ref_train_s")]
    ev = [r["ref_eval_s"] for r in results.values() if r.get("ref_eval_s")]
    if not tr or not ev:
        raise ValueError("the speed file holds no reference timings")
    return statistics.median(tr), statistics.median(ev)


def _sizes(cfg, status: Optional[Dict]) -> Tuple[int, int, str]:
    from ..engine.registry import DATASET_REGISTRY

    if status and not status.get("error") and "n_train" in status:
        return int(status["n_train"]), int(status["n_test"]), "data"
    try:
        cls = DATASET_REGISTRY.get(cfg.DATASET.NAME)
    except KeyError:
        return 0, 0, "unknown"
    n_train, n_test = (int(v) for v in cls.paper_counts)
    shots = int(cfg.DATASET.NUM_SHOTS)
    if shots > 0 and getattr(cls, "classnames", None):
        n_train = min(n_train, shots * len(cls.classnames)) if n_train else shots * len(cls.classnames)
    return n_train, n_test, ("paper" if n_train else "unknown")


def estimate_jobs(jobs: Sequence, results: Dict[str, Dict], status: Optional[Sequence[Dict]] = None) -> List[JobCost]:
    """Per-job :class:`JobCost` (see the module doc for the formula).

    Args:
        jobs: :class:`~medpt.benchmark.grid.Job` list.
        results: per-method speed results (:func:`load_speed`).
        status: optional :func:`~medpt.benchmark.grid.job_status` list in the same order (split
            sizes from the data where it resolved).
    """
    from ..engine import build_config
    from ..engine.registry import TRAINER_REGISTRY

    ref_train, ref_eval = _ref_seconds(results)
    out = []
    for i, job in enumerate(jobs):
        try:
            cfg = build_config(job.method, job.dataset, protocol=job.protocol, trainer_config=job.trainer_config,
                               root=job.root, seed=job.seed, backbone=job.backbone, weights=job.weights,
                               opts=list(job.opts), freeze=False)
        except Exception as err:  # listed with its error by the dry run; not counted here
            out.append(JobCost(job.method, job.dataset, job.seed, 0, 0, "unknown", 0, 0, None, None, None,
                               error=f"{type(err).__name__}: {err}"))
            continue
        n_train, n_test, src = _sizes(cfg, status[i] if status else None)
        cls = TRAINER_REGISTRY.get(job.method)
        epochs = cls.planned_epochs(cfg) if getattr(cls, "REQUIRES_TRAINING", True) else 0
        batch = int(cfg.DATALOADER.TRAIN_X.BATCH_SIZE)
        steps = epochs * (n_train // batch if n_train >= batch else (1 if n_train else 0))
        r = results.get(cfg.TRAINER.NAME) or results.get(job.method) or {}
        per_step = ref_train * batch / MEASURED_BATCH
        tr = r.get("train_uncached_ratio")
        tc = r.get("train_cached_ratio", tr)
        ev = r.get("eval_uncached_ratio")
        if not r:  # not measured
            train_s = cached_s = eval_s = None
        else:
            if not steps:  # no training (zero-shot CLIP)
                train_s = cached_s = 0.0
            elif tr is None:  # measured without an SGD step (closed-form fit): one encoding pass
                train_s = cached_s = n_train * ref_eval / MEASURED_BATCH
            else:
                train_s, cached_s = steps * tr * per_step, steps * tc * per_step
            # one test pass: through the cache too, the test images are encoded once per job
            eval_s = n_test * ev * ref_eval / MEASURED_BATCH if ev is not None else None
        out.append(JobCost(job.method, job.dataset, job.seed, n_train, n_test, src, epochs, batch,
                           train_s, cached_s, eval_s))
    return out


def summary_lines(costs: Sequence[JobCost], meta: Dict, speed_file: Path | str) -> List[str]:
    """The dry run's estimate: a per-method table, totals, and the assumptions."""
    from tabulate import tabulate

    failed = [c for c in costs if c.error]
    costs = [c for c in costs if not c.error]
    by_method: Dict[str, List[JobCost]] = {}
    for c in costs:
        by_method.setdefault(c.method, []).append(c)
    rows, tot, tot_cached, missing = [], 0.0, 0.0, []
    for m, cs in by_method.items():
        if any(c.train_s is None or c.eval_s is None for c in cs):
            missing.append(m)
            continue
        t = sum(c.train_s + c.eval_s for c in cs)
        tc = sum(c.train_cached_s + c.eval_s for c in cs)
        tot, tot_cached = tot + t, tot_cached + tc
        rows.append([m, len(cs), f"{t / 3600:.1f}", f"{tc / 3600:.1f}"])
    rows.append(["total", len(costs), f"{tot / 3600:.1f}", f"{tot_cached / 3600:.1f}"])
    paper = sorted({c.dataset for c in costs if c.sizes_from == "paper"})
    unknown = sorted({c.dataset for c in costs if c.sizes_from == "unknown"})
    lines = ["", "Cost estimate from measured step costs (hours on the measuring machine):",
             tabulate(rows, headers=["method", "jobs", "exact protocol (h)", "through the cache (h)"]),
             "Assumptions: step costs from " + f"{speed_file} ({meta.get('machine')}, {meta.get('date')}, "
             f"{meta.get('backbone')}, fp32, B = {MEASURED_BATCH}, median of {meta.get('reps')}); a step's cost "
             "scales linearly with the batch size; floor(N_train / B) steps per epoch; one test pass; "
             "data loading, checkpoints, cache building and LLM extraction not counted. "
             "Rerun benchmark/speed.py on your machine and pass --speed-file to rescale."]
    if paper:
        lines.append("Split sizes from the paper's counts (data not found): " + ", ".join(paper))
    if unknown:
        lines.append("Split sizes unknown (not counted): " + ", ".join(unknown))
    if missing:
        lines.append("Methods not in the speed file (not counted): " + ", ".join(missing))
    if failed:
        lines.append(f"{len(failed)} job(s) with a config error (not counted; see the ERROR rows above)")
    return lines

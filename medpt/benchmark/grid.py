"""The grid runner: methods x datasets x seeds under a protocol, one record per run.

For each job the config is resolved (:func:`medpt.engine.build_config`), the dataset read (its
split hash enters the identity), and the run identity computed
(:func:`medpt.benchmark.records.run_identity`). A job whose record exists is skipped; otherwise
it trains in ``<output>/runs/<run_id>/`` (an interrupted job resumes from its last epoch
checkpoint there: the folder is unique to the resolved config, so resuming is never a silent
reuse of another run), evaluates on the test split and writes its record atomically. A failing
job is reported and the others go on.
"""
from __future__ import annotations

import datetime as _dt
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from tqdm.auto import tqdm

from .. import code_version, datasets as _datasets, git_commit, trainers as _trainers  # noqa: F401 (register)
from ..engine.config import build_config
from ..engine.data import DataManager, build_dataset
from ..engine.registry import DATASET_REGISTRY, TRAINER_REGISTRY
from .records import atomic_write_json, environment, record_path, run_identity

log = logging.getLogger(__name__)


@dataclass
class Job:
    """One (method, dataset, seed) run."""

    method: str
    dataset: str
    seed: int


@dataclass
class GridResult:
    """What :func:`run_grid` did: records written, skipped (existing) and failures."""

    done: List[Path] = field(default_factory=list)
    skipped: List[Path] = field(default_factory=list)
    failed: List[Dict] = field(default_factory=list)

    @property
    def records(self) -> List[Path]:
        return self.done + self.skipped


def expand_names(spec: Sequence[str] | str, registry, what: str) -> List[str]:
    """Expand ``"all"`` / comma lists into registered canonical names.

    Raises:
        KeyError: an unknown name (with close matches), before any job runs.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    names: List[str] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip()
            if not part:
                continue
            if part.lower() == "all":
                names += registry.names()
            else:
                names.append(registry.canonical(part))
    return list(dict.fromkeys(names))


def plan_jobs(methods: Sequence[str], datasets: Sequence[str], seeds: Sequence[int]) -> List[Job]:
    """Every (method, dataset, seed), datasets outermost (one dataset's data stays warm)."""
    return [Job(m, d, s) for d in datasets for m in methods for s in seeds]


def run_job(job: Job, *, protocol: str, output: Path, root: Optional[str] = None, opts: Sequence[str] = (),
            trainer_config: Optional[str] = None, backbone: Optional[str] = None,
            weights: Optional[str] = None, resume: bool = True) -> tuple[Path, bool]:
    """Run one job unless its record exists. Returns ``(record path, ran)``."""
    cfg = build_config(job.method, job.dataset, protocol=protocol, trainer_config=trainer_config, root=root,
                       seed=job.seed, backbone=backbone, weights=weights, opts=opts, freeze=False)
    dataset = build_dataset(cfg)
    version = code_version()
    rid = run_identity(cfg, dataset.split_hash, version)
    rpath = record_path(output / "records", protocol, cfg.DATASET.NAME, cfg.TRAINER.NAME, job.seed, rid)
    if rpath.is_file():
        return rpath, False
    cfg.OUTPUT_DIR = str(output / "runs" / rid)
    cfg.freeze()
    t0 = time.time()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat()
    trainer = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg, dm=DataManager(cfg, dataset))
    trainer.train(resume=resume)
    metrics = trainer.test()
    bb = trainer.get_backbone()
    per_class = metrics.pop("per_class")
    cmat = metrics.pop("confusion_matrix")
    record = {
        "id": rid,
        "method": cfg.TRAINER.NAME,
        "dataset": cfg.DATASET.NAME,
        "seed": job.seed,
        "protocol": protocol,
        "metrics": metrics,
        "per_class": per_class,
        "confusion_matrix": cmat,
        "classnames": list(trainer.classnames),
        "trainable_params": trainer.count_trainable_params(),
        "backbone": {"name": bb.name, "weights_id": bb.weights_id, "pretrained": bb.pretrained},
        "warnings": list(bb.warnings) + list(getattr(trainer, "warnings", [])),
        "split_hash": dataset.split_hash,
        "split_sizes": {"train": len(dataset.train_x), "test": len(dataset.test)},
        "modality": dataset.modality,
        "code_version": version,
        "git_commit": git_commit(),
        "environment": environment(),
        "timing": {"train_s": trainer.timings["train_s"], "eval_s": trainer.timings["eval_s"],
                   "total_s": time.time() - t0},
        "history": trainer.history,
        "config": cfg.dump(),
        "started_at": started,
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }
    atomic_write_json(record, rpath)
    return rpath, True


def run_grid(methods: Sequence[str], datasets: Sequence[str], seeds: Sequence[int], *, protocol: str,
             output: Path, root: Optional[str] = None, opts: Sequence[str] = (),
             trainer_config: Optional[str] = None, backbone: Optional[str] = None,
             weights: Optional[str] = None, fail_fast: bool = False, progress: bool = True) -> GridResult:
    """Run every job of the grid; failures are collected, not raised (unless ``fail_fast``)."""
    methods = expand_names(methods, TRAINER_REGISTRY, "method")
    datasets = expand_names(datasets, DATASET_REGISTRY, "dataset")
    jobs = plan_jobs(methods, datasets, [int(s) for s in seeds])
    result = GridResult()
    bar = tqdm(jobs, desc="grid", unit="run", disable=not progress, dynamic_ncols=True)
    for job in bar:
        bar.set_postfix_str(f"{job.method} / {job.dataset} / seed {job.seed}")
        try:
            path, ran = run_job(job, protocol=protocol, output=Path(output), root=root, opts=opts,
                                trainer_config=trainer_config, backbone=backbone, weights=weights)
            (result.done if ran else result.skipped).append(path)
        except Exception as err:  # one failing run must not stop the others
            if fail_fast:
                raise
            log.debug("job failed", exc_info=True)
            result.failed.append({"job": job, "error": f"{type(err).__name__}: {err}",
                                  "traceback": traceback.format_exc()})
    return result

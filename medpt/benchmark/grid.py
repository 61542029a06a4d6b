"""The grid runner: methods x datasets x seeds under a protocol, one record per run.

For each job the config is resolved (:func:`medpt.engine.build_config`), the dataset read (its
split hash enters the identity), and the run identity computed
(:func:`medpt.benchmark.records.run_identity`). A job whose record exists is skipped; otherwise
it trains in ``<output>/runs/<run_id>/`` (an interrupted job resumes from its last epoch
checkpoint there: the folder is unique to the resolved config, so resuming never silently reuses
another run), evaluates on the test split, measures its inference cost and writes its record
atomically. A failing job is reported and the others go on.

Jobs are plain picklable data and :func:`execute_job` is a top-level function, so the same code
runs in-process, in a local process pool, or on a Ray cluster (:mod:`medpt.benchmark.launchers`);
the records are identical whichever launcher ran them.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from .. import code_version, datasets as _datasets, git_commit, trainers as _trainers  # noqa: F401 (register)
from ..engine.config import build_config
from ..engine.data import DataManager, build_dataset
from ..engine.registry import DATASET_REGISTRY, TRAINER_REGISTRY
from .records import atomic_write_json, environment, record_path, run_identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One run: a method on a dataset with a seed, and everything that resolves its config.

    ``variant`` labels a configuration of the same method (an ablation row); it is stored in the
    record and used as the table row name.
    """

    method: str
    dataset: str
    seed: int
    protocol: str = "demo"
    opts: Tuple[str, ...] = ()
    trainer_config: Optional[str] = None
    backbone: Optional[str] = None
    weights: Optional[str] = None
    root: Optional[str] = None
    variant: str = ""
    save_features: bool = False

    @property
    def label(self) -> str:
        v = f" [{self.variant}]" if self.variant else ""
        return f"{self.method}{v} / {self.dataset} / seed {self.seed}"


@dataclass
class GridResult:
    """What a grid run did: records written, skipped (existing) and failures."""

    done: List[Path] = field(default_factory=list)
    skipped: List[Path] = field(default_factory=list)
    failed: List[Dict] = field(default_factory=list)

    @property
    def records(self) -> List[Path]:
        return self.done + self.skipped


def expand_names(spec: Sequence[str] | str, registry, what: str = "") -> List[str]:
    """Expand ``"all"`` / comma lists into registered canonical names.

    For datasets, ``all`` means the CILMP paper's 11 datasets
    (:data:`medpt.datasets.check.PAPER_DATASETS`); extras (``pneumonia_sample``,
    ``pneumoniamnist``, ``dermamnist_official``) are named explicitly. For methods, ``all`` is
    every registered trainer.

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
                if registry is DATASET_REGISTRY:
                    from ..datasets.check import PAPER_DATASETS

                    names += [registry.canonical(d) for d in PAPER_DATASETS]
                else:
                    names += registry.names()
            else:
                names.append(registry.canonical(part))
    return list(dict.fromkeys(names))


def plan_jobs(methods: Sequence[str], datasets: Sequence[str], seeds: Sequence[int], **common) -> List[Job]:
    """Every (method, dataset, seed) with the shared settings ``common`` (see :class:`Job`);
    names are expanded and checked first."""
    methods = expand_names(methods, TRAINER_REGISTRY)
    datasets = expand_names(datasets, DATASET_REGISTRY)
    if "opts" in common:
        common["opts"] = tuple(common["opts"] or ())
    return [Job(m, d, int(s), **common) for d in datasets for m in methods for s in seeds]


def resolve_job(job: Job, output: Path):
    """``(cfg (unfrozen, OUTPUT_DIR set), dataset, run id, record path)`` of a job."""
    cfg = build_config(job.method, job.dataset, protocol=job.protocol, trainer_config=job.trainer_config,
                       root=job.root, seed=job.seed, backbone=job.backbone, weights=job.weights,
                       opts=list(job.opts), freeze=False)
    dataset = build_dataset(cfg)
    rid = run_identity(cfg, dataset.split_hash, code_version())
    rpath = record_path(Path(output) / "records", job.protocol, cfg.DATASET.NAME, cfg.TRAINER.NAME, job.seed, rid)
    cfg.OUTPUT_DIR = str(Path(output) / "runs" / rid)
    return cfg, dataset, rid, rpath


def run_job(job: Job, output: Path, resume: bool = True, measure_cost: bool = True) -> Tuple[Path, bool]:
    """Run one job unless its record exists. Returns ``(record path, ran)``.

    Raises:
        whatever the run raises (see :func:`execute_job` for the catching wrapper).
    """
    output = Path(output)
    cfg, dataset, rid, rpath = resolve_job(job, output)
    if rpath.is_file():
        return rpath, False
    cfg.freeze()
    t0 = time.time()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat()
    trainer = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)(cfg, dm=DataManager(cfg, dataset))
    trainer.train(resume=resume)
    metrics = trainer.test()
    cost = None
    if measure_cost:
        from .cost import measure_inference_cost

        cost = measure_inference_cost(trainer)
    features_file = None
    if job.save_features:
        features_file = _save_test_features(trainer, Path(cfg.OUTPUT_DIR) / "test_features.safetensors")
    bb = trainer.get_backbone()
    per_class = metrics.pop("per_class")
    cmat = metrics.pop("confusion_matrix")
    record = {
        "id": rid,
        "method": cfg.TRAINER.NAME,
        "variant": job.variant,
        "dataset": cfg.DATASET.NAME,
        "seed": job.seed,
        "protocol": job.protocol,
        "metrics": metrics,
        "per_class": per_class,
        "confusion_matrix": cmat,
        "classnames": list(trainer.classnames),
        "trainable_params": trainer.count_trainable_params(),
        "cost": cost,
        "features_file": features_file,
        "backbone": {"name": bb.name, "weights_id": bb.weights_id, "pretrained": bb.pretrained},
        "warnings": list(dict.fromkeys(list(bb.warnings) + [str(w) for w in getattr(trainer, "warnings", [])])),
        "split_hash": dataset.split_hash,
        "split_sizes": {"train": len(dataset.train_x), "test": len(dataset.test)},
        "num_shots": int(cfg.DATASET.NUM_SHOTS),
        "label_ratio": float(cfg.DATASET.get("LABEL_RATIO", 1.0)),
        "modality": dataset.modality,
        "code_version": code_version(),
        "git_commit": git_commit(),
        "environment": environment(),
        "timing": {"train_s": trainer.timings["train_s"], "eval_s": trainer.timings["eval_s"],
                   "total_s": time.time() - t0,
                   "epochs": len(trainer.history), "resumed_from_epoch": trainer.start_epoch},
        "history": trainer.history,
        "job": asdict(job),
        "config": cfg.dump(),
        "started_at": started,
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(),
    }
    atomic_write_json(record, rpath)
    return rpath, True


def _save_test_features(trainer, path: Path) -> str:
    """Save the method's test image features ``[N, E]`` and labels with safetensors."""
    import torch
    from safetensors.torch import save_file

    feats, labels = [], []
    trainer.model.eval()
    with torch.no_grad():
        for batch in trainer.dm.test_loader:  # images, even when a method reads cached features
            images = batch["img"].to(trainer.device)
            feats.append(trainer.image_features_for_analysis(images).cpu())
            labels.append(batch["label"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"features": torch.cat(feats).contiguous(), "labels": torch.cat(labels).contiguous()}, str(tmp))
    os.replace(tmp, path)
    return str(path)


def execute_job(job: Job, output: str, threads: Optional[int] = None) -> Dict:
    """Run a job and report, never raise: ``{"status": "done"|"skipped"|"failed", "path", "error",
    "traceback"}``. Top-level and picklable, for process pools and Ray."""
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    try:
        path, ran = run_job(job, Path(output))
        return {"job": job, "status": "done" if ran else "skipped", "path": str(path)}
    except Exception as err:  # one failing run must not stop the others
        return {"job": job, "status": "failed", "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()}


def job_status(jobs: Sequence[Job], output: Path) -> List[Dict]:
    """For a dry run: each job's run id, whether its record exists, and its record path.

    A job whose config cannot be resolved (missing dataset, bad key) is listed with its error.
    """
    out = []
    for job in jobs:
        try:
            _, dataset, rid, rpath = resolve_job(job, output)
            out.append({"job": job, "id": rid, "done": rpath.is_file(), "path": str(rpath),
                        "n_train": len(dataset.train_x), "n_test": len(dataset.test)})
        except Exception as err:
            out.append({"job": job, "id": "", "done": False, "path": "", "error": f"{type(err).__name__}: {err}"})
    return out


def run_grid(methods: Sequence[str], datasets: Sequence[str], seeds: Sequence[int], *, protocol: str,
             output: Path, root: Optional[str] = None, opts: Sequence[str] = (),
             trainer_config: Optional[str] = None, backbone: Optional[str] = None,
             weights: Optional[str] = None, fail_fast: bool = False, progress: bool = True,
             launcher: str = "local", workers: int = 1, address: Optional[str] = None,
             variant: str = "") -> GridResult:
    """Plan the grid and run it with a launcher (see :mod:`medpt.benchmark.launchers`)."""
    from .launchers import launch

    jobs = plan_jobs(methods, datasets, seeds, protocol=protocol, opts=opts, trainer_config=trainer_config,
                     backbone=backbone, weights=weights, root=root, variant=variant)
    return launch(jobs, Path(output), launcher=launcher, workers=workers, address=address,
                  fail_fast=fail_fast, progress=progress)

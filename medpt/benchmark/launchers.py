"""Launchers: the same jobs in this process, in a local process pool, or on a Ray cluster.

* ``local`` with ``workers=1``: in this process, one job after the other (the backbone is built
  once and copied).
* ``local`` with ``workers=N > 1``: a pool of N spawned processes. With CUDA GPUs visible, one
  job per GPU at a time (each worker is pinned to one GPU through ``CUDA_VISIBLE_DEVICES``; N is
  capped at the GPU count); on CPU, N processes sharing the cores (``cores // N`` torch threads each).
* ``ray``: an existing Ray cluster (``address``, e.g. ``ray://head:10001`` or ``auto``), or a
  local Ray instance with ``address="local"``. Each job is a Ray task asking for one GPU when
  the cluster has GPUs, else one CPU. Records are written by the task to ``output``, which must
  be a filesystem every node sees (as Dassl's OUTPUT_DIR).

Whatever the launcher, :func:`medpt.benchmark.grid.execute_job` runs each job, so the records are
the same. No home-made scheduler: process pools from the standard library, Ray for clusters.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import List, Optional, Sequence

from tqdm.auto import tqdm

from .grid import GridResult, Job, execute_job

_GPU_QUEUE = None


def _collect(result: GridResult, out: dict, fail_fast: bool) -> None:
    if out["status"] == "failed":
        result.failed.append(out)
        if fail_fast:
            raise RuntimeError(f"{out['job'].label} failed: {out['error']}\n{out['traceback']}")
    else:
        (result.done if out["status"] == "done" else result.skipped).append(Path(out["path"]))


def _pin_gpu(queue) -> None:
    gpu = queue.get()
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)


def launch(jobs: Sequence[Job], output: Path, *, launcher: str = "local", workers: int = 1,
           address: Optional[str] = None, fail_fast: bool = False, progress: bool = True) -> GridResult:
    """Run ``jobs`` and return what happened.

    Raises:
        ValueError: unknown launcher; ``ray`` without an address.
        ImportError: ``ray`` asked for but not installed (says how to install it).
    """
    result = GridResult()
    bar = tqdm(total=len(jobs), desc="grid", unit="run", disable=not progress, dynamic_ncols=True)

    def tick(out):
        _collect(result, out, fail_fast)
        bar.set_postfix_str(f"{out['job'].label}: {out['status']}")
        bar.update(1)

    if launcher == "local" and workers <= 1:
        for job in jobs:
            bar.set_postfix_str(job.label)
            tick(execute_job(job, str(output)))
    elif launcher == "local":
        import multiprocessing as mp

        import torch

        ctx = mp.get_context("spawn")
        n_gpu = torch.cuda.device_count()
        init, initargs = None, ()
        if n_gpu:
            workers = min(workers, n_gpu)
            queue = ctx.Manager().Queue()
            for g in range(workers):
                queue.put(g)
            init, initargs = _pin_gpu, (queue,)
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=init, initargs=initargs) as pool:
            futures = [pool.submit(execute_job, job, str(output), threads) for job in jobs]
            for fut in as_completed(futures):
                tick(fut.result())
    elif launcher == "ray":
        if not address:
            raise ValueError("--launcher ray needs --address (a cluster address, 'auto', or 'local')")
        try:
            import ray
        except ImportError as err:
            raise ImportError("Ray is not installed: pip install 'medpt[ray]' (or pip install ray)") from err
        started_here = False
        if not ray.is_initialized():
            if address == "local":
                ray.init(num_cpus=max(1, workers if workers > 1 else (os.cpu_count() or 1)),
                         include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
            started_here = True
        try:
            gpus = ray.cluster_resources().get("GPU", 0)
            task = ray.remote(num_gpus=1 if gpus else 0, num_cpus=1)(execute_job)
            pending = [task.remote(job, str(output), 1) for job in jobs]
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                tick(ray.get(done[0]))
        finally:
            if started_here and address == "local":
                ray.shutdown()
    else:
        raise ValueError(f"unknown launcher '{launcher}': use 'local' or 'ray'")
    bar.close()
    return result

"""Command line of the grid runner (``benchmark/run.py`` and the ``medpt`` console script).

With no arguments it runs the embedded default, the demo: every registered method on the
bundled real chest X-rays (``pneumonia_sample``) under the ``demo`` protocol (one epoch), seed 1,
then writes the tables and figures (a few minutes on a 2-core CPU). ``--seeds 1 2 3`` gives the
dispersion columns. The paper grid is ``--methods all --datasets all --protocol paper --root DATA``;
a named grid of the paper is ``--suite NAME`` (``--list-suites``).

Subcommands (first argument): ``run`` (default), ``collect`` / ``tables`` (rebuild every table
and figure from the records alone, running nothing).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

from ..engine.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark/run.py",
        description="Train and evaluate methods x datasets x seeds, write one JSON record per run and "
                    "rebuild the comparison tables (LaTeX, Markdown, CSV) and figures from the records. "
                    "First argument 'collect' (or 'tables') only rebuilds tables and figures.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--methods", nargs="+", default=["all"],
                   help="trainer names (space- or comma-separated), or 'all'")
    p.add_argument("--datasets", nargs="+", default=["pneumonia_sample"],
                   help="dataset ids (space- or comma-separated), or 'all' (the paper's 11)")
    p.add_argument("--protocol", default="demo", help="paper | official | demo")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="default: 1 2 3 (the paper's), 1 under the demo protocol, or the suite's")
    p.add_argument("--shots", type=int, default=None, help="few-shot: K training images per class")
    p.add_argument("--suite", default=None, help="run a named suite of configs/benchmark/ instead of a grid")
    p.add_argument("--list-suites", action="store_true", help="list the shipped suites and exit")
    p.add_argument("--root", default=os.environ.get("MEDPT_DATA", "data"),
                   help="data root holding one folder per dataset (env MEDPT_DATA)")
    p.add_argument("--output", default="output", help="records, runs and tables go here")
    p.add_argument("--backbone", default=None, help="open_clip model name (default: the config's)")
    p.add_argument("--weights", default=None, help="open_clip pretrained tag or local checkpoint path")
    p.add_argument("--trainer-config", default=None, help="trainer yaml variant or path (default vit_b16)")
    p.add_argument("--launcher", default="local", choices=["local", "ray"])
    p.add_argument("--workers", type=int, default=1, help="local: parallel processes (one per GPU when GPUs exist)")
    p.add_argument("--address", default=None, help="ray: cluster address, 'auto', or 'local' for a local instance")
    p.add_argument("--dry-run", action="store_true", help="list the jobs, which are done, and a cost estimate")
    p.add_argument("--speed-file", default=None,
                   help="benchmark/speed.py JSON whose step costs the dry run's estimate uses "
                        "(default: benchmark/results/speed_cpu_fp32.json)")
    p.add_argument("--tables-only", action="store_true", help="same as the 'collect' subcommand")
    p.add_argument("--check-data", action="store_true", help="check every dataset under --root and exit")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing run")
    p.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="trailing KEY VALUE config overrides")
    return p


def _looks_like_key(token: str) -> bool:
    """An upper-case config key (``OPTIM.MAX_EPOCH``, ``VERBOSE``), as every key is."""
    parts = token.split(".")
    return any(c.isalpha() for c in token) and all(
        p and p.replace("_", "").isalnum() and p.upper() == p for p in parts)


def _estimate(jobs_status: List[Dict], records: List[Dict]) -> List[str]:
    """Per pending job: seconds per epoch from finished records of the same method and dataset
    size (scaled by training-set size), times the job's epochs."""
    import yaml

    per_img_epoch: Dict[str, List[float]] = {}
    for r in records:
        ep = r.get("timing", {}).get("epochs") or 0
        n = r.get("split_sizes", {}).get("train") or 0
        if ep and n:
            per_img_epoch.setdefault(r["method"], []).append(r["timing"]["train_s"] / ep / n)
    lines, total, unknown = [], 0.0, 0
    for s in jobs_status:
        if s["done"] or s.get("error"):
            continue
        rates = per_img_epoch.get(s["job"].method)
        if not rates:
            unknown += 1
            continue
        from ..engine.registry import TRAINER_REGISTRY
        from .grid import resolve_job

        cfg = resolve_job(s["job"], Path("."))[0]
        epochs = TRAINER_REGISTRY.get(s["job"].method).planned_epochs(cfg)
        total += sum(rates) / len(rates) * s["n_train"] * epochs
    if not per_img_epoch:
        return lines  # no finished record to take rates from: the step-cost estimate below stands alone
    lines.append(f"estimated training time of pending jobs: {total / 3600:.2f} h on this machine's measured "
                 f"rates (per image and epoch, from existing records of the same method)"
                 + (f"; {unknown} job(s) of methods with no record yet are not included" if unknown else ""))
    return lines


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = "run"
    if argv and argv[0] in ("run", "collect", "tables"):
        command = argv.pop(0)
    args = build_parser().parse_args(argv)
    if args.tables_only:
        command = "collect"
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        for noisy in ("huggingface_hub", "root"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        logging.getLogger().setLevel(logging.ERROR)
    from tabulate import tabulate

    from .. import datasets as _d, trainers as _t  # noqa: F401  (register everything)
    from ..engine.registry import TRAINER_REGISTRY
    from .grid import job_status, plan_jobs
    from .launchers import launch
    from .records import load_records
    from .suites import available_suites, build_suite_outputs, load_suite, suite_jobs
    from .tables import build_tables

    if args.list_suites:
        for name in available_suites():
            print(f"{name:24s} {load_suite(name).description.strip().splitlines()[0]}")
        return 0
    if args.check_data:
        from ..datasets.check import check_data_cli

        return check_data_cli(args.root)

    output = Path(args.output)
    opts = [o for o in args.opts if o != "--"]
    from yacs.config import CfgNode

    from ..engine.config import get_cfg_default

    top_keys = {k for k, v in get_cfg_default().items() if not isinstance(v, CfgNode)}  # SEED, VERBOSE, ...
    for name in ("datasets", "methods"):  # "--methods CoOp OPTIM.MAX_EPOCH 5": the override is an opt
        values = getattr(args, name)
        # a dotted upper-case key, or a top-level one (method names such as RPO or TCP are upper case too)
        cut = next((i for i, v in enumerate(values) if _looks_like_key(v) and ("." in v or v in top_keys)), None)
        if cut is not None:
            opts = values[cut:] + opts
            setattr(args, name, values[:cut])
    bad = [k for k in opts[::2] if not _looks_like_key(k)]
    if bad or len(opts) % 2:
        print(f"error: unexpected argument(s) {' '.join(opts)!r}: trailing config overrides are KEY VALUE pairs "
              "such as 'OPTIM.MAX_EPOCH 5' (put '--' before them if they follow --methods/--datasets/--seeds)",
              file=sys.stderr)
        return 2
    if args.shots is not None:
        opts += ["DATASET.NUM_SHOTS", str(args.shots)]
    try:
        suite = load_suite(args.suite) if args.suite else None
        if suite:
            jobs = suite_jobs(suite, root=args.root, weights=args.weights, backbone=args.backbone,
                              seeds=args.seeds, extra_opts=opts)
            n_seeds = len(args.seeds or suite.seeds)
        else:
            seeds = args.seeds or ([1] if args.protocol == "demo" else [1, 2, 3])
            jobs = plan_jobs(args.methods, args.datasets, seeds, protocol=args.protocol, opts=opts,
                             trainer_config=args.trainer_config, backbone=args.backbone, weights=args.weights,
                             root=args.root)
            n_seeds = len(seeds)
    except (KeyError, ConfigError, ValueError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2

    all_records = load_records(output / "records") if (output / "records").is_dir() else []
    if args.dry_run:
        status = job_status(jobs, output)
        rows = [[s["job"].method + (f" [{s['job'].variant}]" if s["job"].variant else ""), s["job"].dataset,
                 s["job"].seed, s["id"], "done" if s["done"] else ("ERROR: " + s["error"][:80] if s.get("error")
                                                                   else "pending")] for s in status]
        print(tabulate(rows, headers=["method", "dataset", "seed", "run id", "status"]))
        n_done = sum(s["done"] for s in status)
        print(f"\n{len(status)} job(s): {n_done} done, {len(status) - n_done} to run.")
        for line in _estimate(status, all_records):
            print(line)
        from .estimate import DEFAULT_SPEED_FILE, estimate_jobs, load_speed, summary_lines

        speed_file = Path(args.speed_file) if args.speed_file else DEFAULT_SPEED_FILE
        try:
            meta, results = load_speed(speed_file)
        except (FileNotFoundError, ValueError) as err:
            print(f"no estimate from measured step costs: {err}")
            return 0
        for line in summary_lines(estimate_jobs(jobs, results, status), meta, speed_file):
            print(line)
        return 0

    result = None
    if command == "run":
        try:
            result = launch(jobs, output, launcher=args.launcher, workers=args.workers, address=args.address,
                            fail_fast=args.fail_fast)
        except (ValueError, ImportError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        all_records = load_records(output / "records")

    # tables and figures only from records
    if suite:
        wanted = {s["path"] for s in job_status(jobs, output) if s["done"]}
        records = [r for r in all_records if r["_path"] in wanted]
        paths = build_suite_outputs(suite, records, output / "tables" / "suites", n_seeds,
                                    row_order=TRAINER_REGISTRY.names())
    else:
        records = [r for r in all_records if r["protocol"] == args.protocol]
        paths = build_tables(records, output / "tables", planned_seeds=n_seeds,
                             method_order=TRAINER_REGISTRY.names())
        from . import figures as F
        from .tables import RecordSet, split_groups

        for _, group in split_groups(records).items():
            gdir = output / "tables" / RecordSet(group, n_seeds).group_dir
            p = F.gflops_vs_accuracy(group, gdir / "gflops_vs_accuracy.png")
            paths += [p] if p else []
            for ds in sorted({r["dataset"] for r in group}):
                p = F.per_class_bars(group, ds, gdir / f"per_class_{ds}.png")
                paths += [p] if p else []
    if result is not None:
        print(f"\n{len(result.done)} run(s) done, {len(result.skipped)} skipped (record exists), "
              f"{len(result.failed)} failed.")
        for f in result.failed:
            print(f"  FAILED {f['job'].label}: {f['error']}", file=sys.stderr)
    if any(not r["backbone"].get("pretrained", True) for r in records):
        from ..clip.backbone import RANDOM_INIT_WARNING

        print(f"\nWARNING: {RANDOM_INIT_WARNING}", file=sys.stderr)
    md = sorted(p for p in paths if p.suffix == ".md")
    print(f"Tables and figures ({len(paths)} files) under {output / 'tables'}")
    overview = next((p for p in md if p.stem in ("overview_acc", "average")), md[0] if md else None)
    if overview:
        print("\n" + overview.read_text())
    return 1 if result is not None and result.failed else 0


if __name__ == "__main__":
    sys.exit(main())

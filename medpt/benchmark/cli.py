"""Command line of the grid runner (``benchmark/run.py`` and the ``medpt`` console script).

With no arguments it runs the embedded default, the demo: every registered method on the
bundled real chest X-rays (``pneumonia_sample``) under the ``demo`` protocol, seeds 1 2 3, then
writes the tables. The paper grid is ``--methods all --datasets all --protocol paper --root DATA``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

from ..engine.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmark/run.py",
        description="Train and evaluate methods x datasets x seeds, write one JSON record per run and "
                    "rebuild the comparison tables (LaTeX, Markdown, CSV) from the records.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--methods", default="all", help="comma-separated trainer names, or 'all'")
    p.add_argument("--datasets", default="pneumonia_sample", help="comma-separated dataset ids, or 'all'")
    p.add_argument("--protocol", default="demo", help="paper | official | demo")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--root", default=os.environ.get("MEDPT_DATA", "data"),
                   help="data root holding one folder per dataset (env MEDPT_DATA)")
    p.add_argument("--output", default="output", help="records, runs and tables go here")
    p.add_argument("--backbone", default=None, help="open_clip model name (default: the config's)")
    p.add_argument("--weights", default=None, help="open_clip pretrained tag or local checkpoint path")
    p.add_argument("--trainer-config", default=None, help="trainer yaml variant or path (default vit_b16)")
    p.add_argument("--tables-only", action="store_true", help="only rebuild tables from existing records")
    p.add_argument("--check-data", action="store_true", help="check every dataset on disk and exit")
    p.add_argument("--fail-fast", action="store_true", help="stop at the first failing run")
    p.add_argument("-v", "--verbose", action="store_true", help="log every epoch")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="trailing KEY VALUE config overrides")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("root").setLevel(logging.WARNING)
    from ..engine.registry import TRAINER_REGISTRY
    from .. import datasets as _d, trainers as _t  # noqa: F401  (register everything)
    from .grid import expand_names, run_grid
    from .records import load_records
    from .tables import build_tables

    if args.check_data:
        try:
            from ..datasets.check import check_data_cli
        except ImportError:
            print("The data check is not available in this version.", file=sys.stderr)
            return 2
        return check_data_cli(args.root)

    output = Path(args.output)
    opts = [o for o in args.opts if o != "--"]
    try:
        methods = expand_names(args.methods, TRAINER_REGISTRY, "method")
        if not args.tables_only:
            result = run_grid(methods, args.datasets, args.seeds, protocol=args.protocol, output=output,
                              root=args.root, opts=opts, trainer_config=args.trainer_config,
                              backbone=args.backbone, weights=args.weights, fail_fast=args.fail_fast)
    except (KeyError, ConfigError, FileNotFoundError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    records = [r for r in load_records(output / "records") if r["protocol"] == args.protocol]
    paths = build_tables(records, output / "tables", planned_seeds=len(args.seeds),
                         method_order=TRAINER_REGISTRY.names())
    if not args.tables_only:
        print(f"\n{len(result.done)} run(s) done, {len(result.skipped)} skipped (record exists), "
              f"{len(result.failed)} failed.")
        for f in result.failed:
            j = f["job"]
            print(f"  FAILED {j.method} / {j.dataset} / seed {j.seed}: {f['error']}", file=sys.stderr)
    if any(not r["backbone"].get("pretrained", True) for r in records):
        from ..clip.backbone import RANDOM_INIT_WARNING

        print(f"\nWARNING: {RANDOM_INIT_WARNING}", file=sys.stderr)
    md = sorted(p for p in paths if p.suffix == ".md")
    print(f"Tables ({len(paths)} files) under {output / 'tables'}:")
    for p in md:
        print(f"  {p}")
    if md:
        print("\n" + next((p for p in md if p.stem == "overview_acc"), md[0]).read_text())
    return 1 if not args.tables_only and result.failed else 0


if __name__ == "__main__":
    sys.exit(main())

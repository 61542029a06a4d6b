#!/usr/bin/env python
"""Train and evaluate the grid and rebuild the tables: see ``--help`` and medpt/benchmark/cli.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medpt.benchmark.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

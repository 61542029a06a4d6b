"""Rebuild the shipped knowledge JSON from :mod:`medpt.knowledge.curated`.

Usage: ``python -m medpt.knowledge.build [--check]``. ``--check`` exits 1 when a shipped file
differs from what the curated source builds (the test suite runs the same comparison).
"""
from __future__ import annotations

import argparse
import json
import sys

from . import KNOWLEDGE_DIR, validate_knowledge
from .curated import DATASETS, build_dataset_knowledge


def dumps(obj: dict) -> str:
    """The canonical JSON text of a knowledge file (indent 1, UTF-8, trailing newline)."""
    return json.dumps(obj, indent=1, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="only compare, do not write")
    args = ap.parse_args(argv)
    KNOWLEDGE_DIR.mkdir(parents=True, exist_ok=True)
    stale = []
    for d in DATASETS:
        obj = build_dataset_knowledge(d)
        validate_knowledge(obj, d)
        text = dumps(obj)
        p = KNOWLEDGE_DIR / f"{d}.json"
        if not p.is_file() or p.read_text(encoding="utf-8") != text:
            stale.append(p.name)
            if not args.check:
                p.write_text(text, encoding="utf-8")
    if args.check and stale:
        print("stale knowledge files: " + ", ".join(stale), file=sys.stderr)
        return 1
    print(("would rewrite " if args.check else "wrote ") + (", ".join(stale) or "nothing"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""medpt: a reference benchmark suite for prompt tuning of vision-language models on medical images.

Registered trainers (``medpt.trainers``) run over shared dataset readers (``medpt.datasets``) on a
small Dassl-compatible engine (``medpt.engine``) with open_clip backbones (``medpt.clip``); the
grid runner and tables live in ``medpt.benchmark``.
"""
from __future__ import annotations

import hashlib
import subprocess
from functools import lru_cache
from pathlib import Path

__version__ = "0.1.0"

_PKG = Path(__file__).resolve().parent


@lru_cache(maxsize=1)
def code_version() -> str:
    """``<version>+src.<12 hex>``: the package version and a sha256 over every ``.py`` file and
    shipped yaml of the package (sorted by path), so it is defined in a git checkout and in an
    installed copy alike. Part of every run's identity."""
    h = hashlib.sha256()
    for p in sorted(list(_PKG.rglob("*.py")) + list(_PKG.rglob("*.yaml"))):
        if "__pycache__" in p.parts:
            continue
        h.update(p.relative_to(_PKG).as_posix().encode())
        h.update(p.read_bytes())
    return f"{__version__}+src.{h.hexdigest()[:12]}"


@lru_cache(maxsize=1)
def git_commit() -> str:
    """The git commit of the checkout holding the package (``+dirty`` if modified), or ``""``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=_PKG, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if not sha:
            return ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=_PKG,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""

"""Run records: one self-describing JSON file per (method, dataset, seed, resolved config).

A record is written atomically (temporary file in the same folder, ``fsync``, ``os.replace``),
so a killed run never leaves a half-written record; a record's existence means the run finished.
The run identity is a sha256 over the resolved config (without ``OUTPUT_DIR``, which is derived
from it), the split hash and the code version.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Dict, Iterator, List

import torch


def run_identity(cfg, split_hash: str, code_version: str) -> str:
    """First 16 hex digits of sha256(resolved config without OUTPUT_DIR/VERBOSE + split hash +
    code version)."""
    c = cfg.clone()
    c.defrost()
    c.OUTPUT_DIR = ""
    c.VERBOSE = False
    h = hashlib.sha256()
    h.update(c.dump(sort_keys=True).encode())
    h.update(split_hash.encode())
    h.update(code_version.encode())
    return h.hexdigest()[:16]


def record_path(records_dir: Path, protocol: str, dataset: str, method: str, seed: int, run_id: str) -> Path:
    """``<records_dir>/<protocol>/<dataset>/<method>/seed<seed>-<run_id>.json``."""
    return Path(records_dir) / protocol / dataset / method / f"seed{seed}-{run_id}.json"


def atomic_write_json(obj, path: Path) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=False, default=_default)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def environment() -> Dict:
    """Python, torch, open_clip versions, platform and device of this process."""
    import open_clip

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "open_clip": open_clip.__version__,
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(),
    }


def iter_records(records_dir: Path) -> Iterator[Dict]:
    """Every record under ``records_dir`` (temporary files skipped).

    Raises:
        ValueError: a record file is not valid JSON (names the file).
    """
    for p in sorted(Path(records_dir).rglob("*.json")):
        if p.name.startswith("."):
            continue
        try:
            rec = json.loads(p.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"record {p} is not valid JSON ({err}); delete it to rerun that job") from None
        rec["_path"] = str(p)
        yield rec


def load_records(records_dir: Path) -> List[Dict]:
    return list(iter_records(records_dir))

#!/usr/bin/env python
"""Training throughput of the frozen-image-encoder methods with and without the feature cache.

For each method (CoOp, CoCoOp, KgCoOp, CLIP-Adapter, TCP, linear probe) this trains a tiny run
on this machine and prints training images per second:

* ``no cache``: ``MODEL.FEATURE_CACHE.ENABLED False``; every training image is read, augmented
  and encoded by the frozen image encoder at every step (the official code's cost);
Throughput is measured on the last epoch (the first pays one-off start-up costs).

* ``cache``: training from a warm bank of ``--views`` augmented views per image (the bank is
  built once, by the first method, and shared by all; its cost is printed separately as
  images encoded per second, i.e. what a cold start pays once per view).

The backbone defaults to a seeded random-init ViT-B/16 (the speed does not depend on the
weights), the data to :class:`medpt.datasets.synthetic.SeparableSynthetic` at 224 px, one shared
batch size for every method (CoCoOp's official batch is 1; ``--batch`` changes it). The linear
probe's "training" is feature extraction (test pipeline) plus the scikit-learn fit with a fixed C.

With the cache, a prompt method's step costs one text-tower pass (C prompts; B x C for CoCoOp)
whatever the batch size, so its cached throughput grows with ``--batch``; without it, every
image costs one ViT forward. CLIP-Adapter and the linear probe need no text pass at all.

Usage::

    python benchmark/frozen_speed.py                   # ~1-3 minutes on a laptop CPU
    python benchmark/frozen_speed.py --images 64 --epochs 2 --device cuda
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medpt.datasets.synthetic import SeparableSynthetic  # noqa: E402
from medpt.engine import build_config  # noqa: E402
from medpt.engine.data import DataManager  # noqa: E402
from medpt.engine.registry import TRAINER_REGISTRY  # noqa: E402

METHODS = ["CoOp", "CoCoOp", "KgCoOp", "CLIP-Adapter", "TCP", "LinearProbe"]
COLOURS = ("red", "green", "blue", "yellow")


def build(method: str, ds, out: Path, args, cache: bool):
    opts = ["MODEL.BACKBONE.NAME", args.backbone, "MODEL.BACKBONE.PRETRAINED", args.weights,
            "MODEL.BACKBONE.ALLOW_RANDOM_INIT", "True", "INPUT.SIZE", f"({args.size}, {args.size})",
            "DATALOADER.NUM_WORKERS", str(args.workers), "DATALOADER.TRAIN_X.BATCH_SIZE", str(args.batch),
            "DATALOADER.TEST.BATCH_SIZE", str(max(args.batch, 32)), "OPTIM.MAX_EPOCH", str(args.epochs),
            "TRAIN.CHECKPOINT_FREQ", "0", "VERBOSE", "False", "USE_CUDA", str(args.device != "cpu"),
            "MODEL.FEATURE_CACHE.ENABLED", str(cache), "MODEL.FEATURE_CACHE.DIR", str(out / "cache"),
            "MODEL.FEATURE_CACHE.NUM_VIEWS", str(args.views)]
    if method == "LinearProbe":
        opts += ["TRAINER.LINEAR_PROBE.C", "0.316"]
    cfg = build_config(method, "pneumonia_sample", protocol="demo", seed=1, output_dir=str(out / method), opts=opts)
    return TRAINER_REGISTRY.get(method)(cfg, dm=DataManager(cfg, dataset=ds))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--backbone", default="ViT-B-16-quickgelu")
    p.add_argument("--weights", default="", help="open_clip tag or checkpoint; '' = seeded random init")
    p.add_argument("--images", type=int, default=8, help="training images (split over 4 classes)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2, help="throughput is measured on the last epoch")
    p.add_argument("--views", type=int, default=2, help="augmented views per image in the cached bank")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    from tabulate import tabulate

    rows, t_start = [], time.time()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        per_class = max(1, args.images // len(COLOURS))
        ds = SeparableSynthetic(tmp / "data", classnames=COLOURS, n_train=per_class, n_test=1)
        bank_line = ""
        for method in args.methods:
            speeds = {}
            for cache in (False, True):
                tr = build(method, ds, tmp, args, cache)
                if cache and not bank_line:  # build the shared bank once, outside the timing
                    t0 = time.time()
                    tr.feature_bank("train")
                    dt = time.time() - t0
                    bank_line = (f"bank build: {args.views} views x {len(ds.train_x)} images encoded in {dt:.1f} s "
                                 f"= {args.views * len(ds.train_x) / dt:.1f} images/s (once, shared by all methods)")
                if method == "LinearProbe" and cache:
                    tr.feature_bank("train", pipeline="test")  # warm its (test-pipeline) features too
                t0 = time.time()
                tr.train()
                if tr.device.type == "cuda":
                    torch.cuda.synchronize()
                if method == "LinearProbe":  # one closed-form fit
                    speeds[cache] = len(ds.train_x) / (time.time() - t0)
                else:  # the last epoch: the first one pays one-off start-up costs
                    speeds[cache] = len(ds.train_x) / tr.history[-1]["time_s"]
            rows.append([method, f"{tr.count_trainable_params():,}", f"{speeds[False]:.1f}", f"{speeds[True]:.1f}",
                         f"{speeds[True] / speeds[False]:.0f}x"])
    dev = torch.cuda.get_device_name() if args.device != "cpu" and torch.cuda.is_available() else \
        f"CPU ({args.threads} threads)"
    print(f"\nTraining images per second, {args.backbone} ({'random init' if not args.weights else args.weights}), "
          f"{args.size} px, batch {args.batch}, {len(ds.train_x)} images, last of {args.epochs} epoch(s), {dev}")
    print(tabulate(rows, headers=["method", "trainable params", "no cache (img/s)", "cache (img/s)", "speed-up"],
                   tablefmt="github"))
    print(bank_line)
    print(f"total {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()

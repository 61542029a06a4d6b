#!/usr/bin/env python
"""Step and inference cost of every registered method against issue 9's yardstick.

**The yardstick** (issue 9): ``REF_TRAIN`` = a bare CLIP ViT-B/16 ``encode_image`` on B = 8
images of 3x224x224, forward and backward with respect to the input only (frozen weights), fp32;
``REF_EVAL`` = the same ``encode_image`` under ``no_grad``. A method's *train ratio* is its full
training step (the trainer's own ``forward_backward``: forward, loss, backward, optimiser step)
on a real batch dict of the same B images (C = 7 classes) divided by ``REF_TRAIN``; its *eval
ratio* is ``model_inference`` on the batch (after the method's ``before_test()``, i.e. per-test
work such as class text features amortised over the test set, as the method does) divided by
``REF_EVAL``. Each method is measured after one warm-up step; its reference is measured in the
same process, interleaved (REF, method, REF, method ...); the ratio is the median of ``--reps``
(3) per-repetition ratios. Peak memory is the CPU resident-set growth during the step
(``/proc/self/statm`` sampled every 5 ms) or ``torch.cuda.max_memory_allocated`` growth on a GPU.

Methods whose image tower is frozen and unprompted (subclasses of
:class:`medpt.trainers._frozen.FrozenImageEncoderTrainer`) are measured twice: ``uncached`` (a
batch of images: the image tower runs at every step, the official code's cost) and ``cached``
(the batch's features precomputed, as the shared feature cache serves them: ``{"feat": [B, E]}``;
for augmented training images this needs ``MODEL.FEATURE_CACHE.NUM_VIEWS`` > 0, a documented
protocol deviation). Prompted methods that also run the frozen encoder on their training images
(:class:`medpt.trainers._frozen.TeacherFeatureBankMixin`: PromptSRC's and DePT's teacher, AAPL's
clean and partner views) get a ``cached`` train step too: the batch carries the bank's features
(``"teacher_feat"``), so that frozen pass is skipped; their eval is unchanged. CoPrompt's cached
step reads its teacher's second views from a bank of its RandAugment views the same way.

Trainers are built through the normal engine (``build_config(method, "pneumonia_sample",
protocol="demo", opts=...)``) with a seeded random-init ViT-B/16 (speed does not depend on the
weights) shared by all methods (a private copy for FullFineTune, which trains it), on a
:class:`medpt.datasets.synthetic.SeparableSynthetic` set of 7 classes written to a temporary
folder (images resized to 224 px by the config's own transform). DCPL uses the ``tiny`` stand-in
domain encoder (as the issue's official figure does); CILMP falls back to random LLM
representations (its speed does not depend on them).

With a GPU (``--device cuda``) the default configurations are ``fp32:8,amp:8,amp:64``
(``amp`` = the method's ``PREC amp``: bf16 autocast, fp32 master weights; the reference runs
under the same autocast and batch size).

The grid cost index is the sum of the train ratios of the 16 methods of issue 9's table
(LASP added at the issue's 1.3 for the official index, measured for ours); "ours" uses the
cached ratio where a method has one.

Usage::

    python benchmark/speed.py                          # every method, ~20-25 min on 2 CPU threads
    python benchmark/speed.py --methods CoOp TCP --reps 1 --out speed.json
    python benchmark/speed.py --device cuda --configs fp32:8,amp:8,amp:64

Timings on a shared machine are noisy: compare ratios, not seconds, and rerun a surprising row.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import medpt.datasets  # noqa: E402,F401  (registers the readers)
import medpt.trainers  # noqa: E402,F401  (registers the methods)
from medpt.clip import load_clip  # noqa: E402
from medpt.datasets.synthetic import SeparableSynthetic  # noqa: E402
from medpt.engine import build_config  # noqa: E402
from medpt.engine.data import DataManager  # noqa: E402
from medpt.engine.registry import TRAINER_REGISTRY  # noqa: E402

#: issue 9's official figures: (train / REF_TRAIN, eval / REF_EVAL), measured on a 2-core CPU.
OFFICIAL = {
    "CoOp": (0.63, 1.25), "CoCoOp": (1.86, 2.27), "KgCoOp": (0.62, 1.22), "CLIP-Adapter": (0.54, 1.16),
    "TCP": (0.62, 1.13), "PromptSRC": (1.54, 1.14), "RPO": (1.28, 1.30), "PLOTPP": (5.97, 4.66),
    "DePT": (1.17, 1.16), "AAPL": (4.23, 2.32), "ViP": (1.98, 1.74), "XCoOp": (3.39, 2.56),
    "BiomedCoOp": (1.05, 1.11), "CoPrompt": (1.78, 1.23), "CILMP": (3.29, 2.42), "DCPL": (2.28, 2.26),
}
#: LASP's train ratio in the official grid cost index (issue 9).
LASP_OFFICIAL_TRAIN = 1.3
#: methods whose cached train step the issue caps at 0.1 x REF_TRAIN / per-image methods capped at half.
CACHED_TARGET_0_1 = ("CoOp", "KgCoOp", "CLIP-Adapter", "TCP", "BiomedCoOp", "ViP", "LinearProbe")
HALF_OFFICIAL = ("CoCoOp", "AAPL")
CLASSES = ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia")
#: per-method opts so that the build needs nothing outside this machine.
EXTRA_OPTS = {"DCPL": ["TRAINER.DCPL.DOMAIN_ENCODER", "tiny"]}


def _malloc_trim() -> None:
    """Return freed heap memory to the OS (glibc), so that RSS growth reflects the next call."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRSS:
    """Context manager: peak growth of this process's resident set (MiB), sampled every 5 ms
    (glibc's free heap is trimmed first)."""

    _page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def __init__(self):
        self.peak = 0

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def _watch(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.005)

    def __enter__(self):
        _malloc_trim()
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())
        self.mib = (self.peak - self.base) / 2 ** 20


class PeakCUDA:
    """Context manager: growth of ``torch.cuda.max_memory_allocated`` (MiB) during the block."""

    def __enter__(self):
        torch.cuda.synchronize()
        self.base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize()
        self.mib = (torch.cuda.max_memory_allocated() - self.base) / 2 ** 20


class Timer:
    def __init__(self, device: torch.device, memory: bool):
        self.device, self.memory = device, memory

    def run(self, fn, memory: Optional[bool] = None) -> Dict[str, float]:
        """``{"s": seconds, "mib": peak memory growth or nan}`` of one call of ``fn``."""
        cuda = self.device.type == "cuda"
        memory = self.memory if memory is None else memory
        mem = (PeakCUDA() if cuda else PeakRSS()) if memory else contextlib.nullcontext()
        with mem:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
        return {"s": dt, "mib": getattr(mem, "mib", float("nan"))}


def _autocast(device: torch.device, prec: str):
    if prec == "amp" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def reference_fns(clip_model, images: torch.Tensor, prec: str):
    """``(ref_train, ref_eval)`` callables of the yardstick on ``images`` ``[B, 3, H, W]``."""
    def ref_train():
        x = images.detach().clone().requires_grad_(True)
        with _autocast(images.device, prec):
            out = clip_model.encode_image(x)
        out.float().sum().backward()

    @torch.no_grad()
    def ref_eval():
        with _autocast(images.device, prec):
            clip_model.encode_image(images)

    return ref_train, ref_eval


def build_trainer(method: str, ds, tmp: Path, backbone, args, prec: str, batch: int):
    """A trainer built through the engine (demo protocol) on ``ds`` and the shared ``backbone``."""
    opts = ["MODEL.BACKBONE.NAME", args.backbone, "MODEL.BACKBONE.PRETRAINED", "",
            "MODEL.BACKBONE.ALLOW_RANDOM_INIT", "True", "INPUT.SIZE", "(224, 224)",
            "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", str(batch),
            "DATALOADER.TEST.BATCH_SIZE", str(batch), "TRAIN.CHECKPOINT_FREQ", "0", "VERBOSE", "False",
            "USE_CUDA", str(args.device == "cuda"), "MODEL.FEATURE_CACHE.ENABLED", "False",
            "MODEL.FEATURE_CACHE.DIR", str(tmp / "cache")] + EXTRA_OPTS.get(method, [])
    cls = TRAINER_REGISTRY.get(method)
    key = getattr(cls, "CONFIG_KEY", "")
    cfg = build_config(method, "pneumonia_sample", protocol="demo", seed=1, output_dir=str(tmp / method), opts=opts)
    if prec != "fp32":
        if not key or "PREC" not in cfg.TRAINER.get(key, {}):
            raise KeyError(f"{method} has no TRAINER.{key}.PREC option")
        cfg.defrost()
        cfg.TRAINER[key].PREC = prec
        cfg.freeze()
    bb = copy.deepcopy(backbone) if method == "FullFineTune" else backbone
    return cls(cfg, dm=DataManager(cfg, dataset=ds), backbone=bb)


def _train_fn(tr, batch):
    def step():
        tr.forward_backward(batch)
    return step


def _swapped_step(tr, attr: str, value, batch):
    """A training step with ``tr.<attr>`` set to ``value`` for its duration (restored after)."""
    def step():
        old = getattr(tr, attr, None)
        setattr(tr, attr, value)
        try:
            tr.forward_backward(batch)
        finally:
            setattr(tr, attr, old)
    return step


def _eval_fn(tr, x):
    @torch.no_grad()
    def infer():
        with tr.autocast():
            tr.model_inference(x)
    return infer


def _set_train_mode(tr) -> None:
    tr.set_model_mode("train")
    if hasattr(tr, "model"):
        tr.model.train()
        tr.freeze_modes()


def _set_eval_mode(tr) -> None:
    tr.set_model_mode("eval")
    if hasattr(tr, "model"):
        tr.model.eval()


def has_training_step(tr) -> bool:
    """Whether the trainer trains by SGD steps (zero-shot CLIP and the closed-form linear probe do not)."""
    from medpt.engine.trainer import TrainerX

    if type(tr).__name__ == "LinearProbe":  # fitted in closed form by train(), no step
        return False
    return bool(tr.REQUIRES_TRAINING) and type(tr).forward_backward is not TrainerX.forward_backward


def stray_gradients(tr) -> int:
    """Scalars of parameters that got a ``.grad`` but are not trained by any optimiser (gradients
    computed for frozen weights: wasted backward work). Call after a training step."""
    trained = {id(p) for p in tr.trainable_parameters()}
    mods = [tr.get_backbone().model] + ([tr.model] if isinstance(getattr(tr, "model", None), torch.nn.Module) else [])
    seen, n = set(), 0
    for mod in mods:
        for p in mod.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            if p.grad is not None and id(p) not in trained:
                n += p.numel()
                p.grad = None
    return n


def measure_method(method: str, ds, tmp: Path, backbone, args, prec: str, batch: int, reps: int) -> Dict:
    """Ratios (and seconds, memory) of one method; see the module doc."""
    from medpt.trainers._frozen import FrozenImageEncoderTrainer, TeacherFeatureBankMixin

    dev = torch.device(args.device)
    t_build = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tr = build_trainer(method, ds, tmp, backbone, args, prec, batch)
    t_build = time.perf_counter() - t_build
    loader = tr.train_loader_x
    batch_dict = next(iter(loader))
    if batch_dict["label"].shape[0] != batch:
        raise RuntimeError(f"{method}: got a batch of {batch_dict['label'].shape[0]}, expected {batch}")
    images = batch_dict["img"].to(dev)
    test_images = next(iter(tr.test_loader))["img"][:batch].to(dev)
    ref_train, ref_eval = reference_fns(tr.get_backbone().model, images, prec)
    timer = Timer(dev, memory=False)
    frozen = isinstance(tr, FrozenImageEncoderTrainer)
    trains = has_training_step(tr)

    teacher = isinstance(tr, TeacherFeatureBankMixin)
    variants = {"uncached": (batch_dict, test_images)}
    if frozen:
        feats = tr.encode_images(images)
        test_feats = tr.encode_images(test_images)
        variants["cached"] = ({"feat": feats, "label": batch_dict["label"], "index": batch_dict["index"]}, test_feats)
    if teacher:
        # frozen features of the training views from the bank (what the loader serves with the cache on
        # and NUM_VIEWS > 0): the teacher / clean-view pass is not run; eval is unchanged. The bank's
        # loader is swapped in for the cached step only (AAPL's partners then come from the bank too).
        image_loader = tr.train_loader_x
        tr.attach_teacher_bank(tr.feature_bank("train", use_cache=False))
        bank_loader, tr.train_loader_x = tr.train_loader_x, image_loader
        cached_batch = dict(batch_dict, teacher_feat=tr.encode_images(images))

    # before_test (per-test work amortised over the test set), timed once
    _set_eval_mode(tr)
    with torch.no_grad(), tr.autocast():
        t0 = time.perf_counter()
        tr.before_test()
        prep_s = time.perf_counter() - t0

    fns = {}
    for name, (b, x) in variants.items():
        if trains:
            fns[f"train_{name}"] = _train_fn(tr, b)
        fns[f"eval_{name}"] = _eval_fn(tr, x)
    if trains and teacher:  # the bank's loader swapped in for the cached step only
        fns["train_cached"] = _swapped_step(tr, "train_loader_x", bank_loader, cached_batch)
    if trains and hasattr(tr, "teacher_image_features") and hasattr(tr, "feature_bank"):
        # CoPrompt: its teacher's second views from a bank (NUM_VIEWS > 0), swapped in for the cached step only
        fns["train_cached"] = _swapped_step(tr, "view_bank", tr.build_view_bank(use_cache=False), batch_dict)

    def run(kind: str, memory: bool = False) -> Dict[str, float]:
        if kind.startswith("train"):
            _set_train_mode(tr)
        else:
            _set_eval_mode(tr)
        return timer.run(fns[kind], memory)

    # warm-up: its peak memory growth is the reported memory (the first call allocates everything)
    memory = {kind: run(kind, memory=True)["mib"] for kind in fns}
    stray = stray_gradients(tr) if trains else 0
    samples: Dict[str, List[Dict]] = {k: [] for k in fns}
    paired: Dict[str, List[Dict]] = {k: [] for k in fns}  # the reference each sample is divided by
    refs: Dict[str, List[Dict]] = {"train": [], "eval": []}
    for _ in range(reps):
        for kind in fns:
            r = "train" if kind.startswith("train") else "eval"
            # the reference right before each method run (a frozen method's cached run reuses the one
            # measured before its uncached run: the pair shares it)
            if kind.endswith("uncached") or not frozen or not refs[r]:
                refs[r].append(timer.run(ref_train if r == "train" else ref_eval))
            samples[kind].append(run(kind))
            paired[kind].append(refs[r][-1])
    tr.after_test()
    out = {"method": method, "prec": prec, "batch": batch, "frozen_image_encoder": frozen,
           "trainable_params": tr.count_trainable_params(), "build_s": round(t_build, 2),
           "before_test_s": round(prep_s, 4), "stray_grad_params": stray,
           "ref_train_s": statistics.median(s["s"] for s in refs["train"]) if refs["train"] else None,
           "ref_eval_s": statistics.median(s["s"] for s in refs["eval"])}
    for kind, ss in samples.items():
        out[f"{kind}_ratio"] = statistics.median(s["s"] / rf["s"] for s, rf in zip(ss, paired[kind]))
        out[f"{kind}_s"] = statistics.median(s["s"] for s in ss)
        out[f"{kind}_mib"] = round(memory[kind], 1)
    del tr
    return out


def grid_cost_index(results: Dict[str, Dict]) -> Dict:
    """Official and measured grid cost index: the sum of the train ratios of issue 9's 16 methods
    plus LASP (1.3 in the official index). ``ours_exact``: every method as measured uncached (the
    exact protocol: augmented training images encoded live); ``ours_cached``: the cached ratio where
    a method has one (``MODEL.FEATURE_CACHE.NUM_VIEWS`` > 0, a protocol deviation)."""
    official = sum(v[0] for v in OFFICIAL.values()) + LASP_OFFICIAL_TRAIN
    exact = cached = 0.0
    missing = []
    for m in list(OFFICIAL) + ["LASP"]:
        r = results.get(m) or {}
        v = r.get("train_uncached_ratio")
        if v is None:
            missing.append(m)
            continue
        exact += v
        cached += r.get("train_cached_ratio", v)
    return {"official": round(official, 2), "ours_exact": round(exact, 2), "ours_cached": round(cached, 2),
            "missing": missing}


def _gci_line(g: Dict) -> str:
    return (f"grid cost index: ours {g['ours_exact']:.2f} (exact protocol) / {g['ours_cached']:.2f} (through the "
            f"feature cache) vs official {g['official']:.2f}" + (f" (missing: {', '.join(g['missing'])})"
                                                                 if g["missing"] else ""))


def _fmt(v, spec=".2f") -> str:
    return "" if v is None else format(v, spec)


def table(results: Dict[str, Dict]) -> str:
    from tabulate import tabulate

    rows = []
    for m, r in results.items():
        if "error" in r:
            rows.append([m] + [""] * 8 + [r["error"][:60]])
            continue
        off = OFFICIAL.get(m, (None, None))
        note = []
        tr = r.get("train_uncached_ratio")
        ev = r.get("eval_uncached_ratio")
        if m in CACHED_TARGET_0_1 and r.get("train_cached_ratio") is not None:
            note.append("cached<=0.1 " + ("met" if r["train_cached_ratio"] <= 0.1 else "MISSED"))
        if m in HALF_OFFICIAL and tr is not None:
            cap = 0.5 * off[0] * 1.1
            tc = r.get("train_cached_ratio")
            if tr > cap and tc is not None and tc <= cap:
                note.append("<=half official MISSED exact, met cached")
            else:
                note.append("<=half official " + ("met" if tr <= cap else "MISSED"))
        if off[0] is not None:
            ok = (tr is None or tr <= off[0] * 1.1) and (ev is None or ev <= off[1] * 1.1)
            tc = r.get("train_cached_ratio")
            if not ok and tc is not None and tc <= off[0] * 1.1 and (ev is None or ev <= off[1] * 1.1):
                note.append("<=official MISSED exact, met cached")
            else:
                note.append("<=official " + ("met" if ok else "MISSED"))
        rows.append([m, f"{r['trainable_params']:,}", _fmt(off[0]), _fmt(r.get("train_uncached_ratio")),
                     _fmt(r.get("train_cached_ratio")), _fmt(off[1]), _fmt(r.get("eval_uncached_ratio")),
                     _fmt(r.get("eval_cached_ratio")), _fmt(r.get("train_uncached_mib"), ".0f"), "; ".join(note)])
    stray = [f"{m} ({r['stray_grad_params']:,})" for m, r in results.items() if r.get("stray_grad_params")]
    foot = "\ngradients computed for frozen parameters: " + (", ".join(stray) if stray else "none")
    return tabulate(rows, headers=["method", "trainable", "train official", "train ours", "train cached",
                                   "eval official", "eval ours", "eval cached", "train peak MiB", "targets"],
                    tablefmt="github", disable_numparse=True) + foot


def machine() -> str:
    if torch.cuda.is_available() and torch.cuda.current_device() is not None and ARGS_DEVICE[0] == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} threads (torch {torch.__version__})"


ARGS_DEVICE = ["cpu"]


def print_saved(paths: List[str], out_path: Optional[str] = None) -> Dict:
    """Print (and optionally save) the tables of saved results, merged in order (see ``--table-from``)."""
    merged: Dict = {"sources": []}
    for p in paths:
        d = json.loads(Path(p).read_text())
        merged["sources"].append({"file": str(p), "date": d.get("date"), "machine": d.get("machine"),
                                  "reps": d.get("reps"), "methods": sorted({m for c in d["configs"].values()
                                                                            for m in c["results"]})})
        for k in ("machine", "backbone", "classes"):
            merged.setdefault(k, d.get(k))
        for name, c in d["configs"].items():
            tgt = merged.setdefault("configs", {}).setdefault(name, {"results": {}})
            for m, r in c["results"].items():
                r = dict(r, source=str(p), date=d.get("date"), reps=d.get("reps"))
                tgt["results"][m] = r
    for name, c in merged["configs"].items():
        c["grid_cost_index"] = grid_cost_index(c["results"])
        print(f"\n## {merged['backbone']}, {name}, C = {merged['classes']}, {merged['machine']}; sources: "
              + "; ".join(f"{s['file']} ({s['date']}, median of {s['reps']})" for s in merged["sources"]))
        print(table(c["results"]))
        g = c["grid_cost_index"]
        print(_gci_line(g))
    if out_path:
        Path(out_path).write_text(json.dumps(merged, indent=1))
    return merged


def main(argv: Optional[List[str]] = None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", nargs="+", default=None, help="registered names (default: every method)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions after one warm-up (median)")
    p.add_argument("--backbone", default="ViT-B-16-quickgelu")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (the issue's yardstick: 2)")
    p.add_argument("--configs", default=None,
                   help="comma-separated PREC:BATCH (default fp32:8 on CPU, fp32:8,amp:8,amp:64 on CUDA)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--table-from", nargs="+", default=None, metavar="JSON",
                   help="measure nothing: print the tables of saved --out files merged (a later file's "
                        "method rows replace an earlier file's, e.g. a re-measured subset)")
    args = p.parse_args(argv)
    if args.table_from:
        return print_saved(args.table_from, args.out)
    torch.set_num_threads(args.threads)
    ARGS_DEVICE[0] = args.device
    logging.disable(logging.WARNING)
    configs = args.configs or ("fp32:8,amp:8,amp:64" if args.device == "cuda" else "fp32:8")
    configs = [(c.split(":")[0], int(c.split(":")[1])) for c in configs.split(",")]
    methods = [TRAINER_REGISTRY.canonical(m) for m in (args.methods or TRAINER_REGISTRY.names())]

    t_start = time.time()
    backbone = load_clip(args.backbone, "", allow_random_init=True, init_seed=0, device=args.device)
    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
           "backbone": f"{args.backbone} (seeded random init)", "reps": args.reps, "classes": len(CLASSES),
           "configs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        max_b = max(b for _, b in configs)
        ds = SeparableSynthetic(tmp / "data", classnames=CLASSES, n_train=max(2, -(-max_b // len(CLASSES))),
                                n_test=max(2, -(-max_b // len(CLASSES))))
        for prec, batch in configs:
            results = {}
            x = torch.randn(batch, 3, 224, 224, device=args.device)
            rt, re_ = reference_fns(backbone.model, x, prec)
            timer = Timer(torch.device(args.device), memory=True)
            ref_mem = {"ref_train_mib": round(timer.run(rt)["mib"], 1), "ref_eval_mib": round(timer.run(re_)["mib"], 1)}
            del x
            for m in methods:
                t0 = time.time()
                try:
                    results[m] = measure_method(m, ds, tmp, backbone, args, prec, batch, args.reps)
                except Exception as e:  # noqa: BLE001 - one broken method must not stop the table
                    results[m] = {"method": m, "error": f"{type(e).__name__}: {e}"}
                for p_ in backbone.model.parameters():  # a method must not leave the shared tower trainable
                    if p_.requires_grad:
                        p_.requires_grad_(False)
                        results[m].setdefault("warning", "left backbone parameters trainable")
                print(f"  {m} [{prec}, B={batch}] {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
                if args.out:  # partial results survive an interrupted run
                    out["configs"][f"{prec}:{batch}"] = {"results": results, **ref_mem}
                    Path(args.out).write_text(json.dumps(out, indent=1))
                if args.device == "cuda":
                    torch.cuda.empty_cache()
            gci = grid_cost_index(results)
            out["configs"][f"{prec}:{batch}"] = {"results": results, "grid_cost_index": gci, **ref_mem}
            print(f"\n## {args.backbone}, {prec}, B = {batch}, C = {len(CLASSES)}, {out['machine']}, {out['date']}, "
                  f"median of {args.reps}")
            print(table(results))
            print(f"reference peak memory: train {ref_mem['ref_train_mib']:.0f} MiB, eval {ref_mem['ref_eval_mib']:.0f} MiB")
            print(_gci_line(gci))
    out["total_s"] = round(time.time() - t_start, 1)
    print(f"total {out['total_s']:.0f} s (shared machine: timings are noisy; compare ratios)")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()

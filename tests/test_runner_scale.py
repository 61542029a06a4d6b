"""Runner at scale: FLOPs, launchers (local pool, Ray), kill-and-resume, dry run, LaTeX, suites."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_OPTS, tiny_cfg
from medpt.benchmark.cli import main
from medpt.benchmark.cost import measure_inference_cost
from medpt.benchmark.grid import plan_jobs
from medpt.benchmark.launchers import launch
from medpt.benchmark.records import load_records
from medpt.benchmark.suites import available_suites, load_suite, suite_jobs
from medpt.benchmark.tables import build_tables
from medpt.engine import TRAINER_REGISTRY

REPO = Path(__file__).resolve().parents[1]
OPTS = TINY_OPTS + ["OPTIM.MAX_EPOCH", "2"]


def _comparable(rec):
    return {k: rec[k] for k in ("method", "dataset", "seed", "metrics", "per_class", "confusion_matrix",
                                "trainable_params", "split_hash", "id")}


def test_flops_per_image_do_not_depend_on_batch_size(tmp_path):
    cfg = tiny_cfg("coop", output_dir=tmp_path)
    trainer = TRAINER_REGISTRY.get("coop")(cfg)
    one = measure_inference_cost(trainer, batch_size=1)
    four = measure_inference_cost(trainer, batch_size=4)
    assert one["batch_size"] == 1 and four["batch_size"] == 4
    assert one["image_gflops"] > 0 and one["text_gflops"] > 0
    assert four["image_gflops"] == pytest.approx(one["image_gflops"], rel=1e-9)
    assert four["text_gflops"] == pytest.approx(one["text_gflops"], rel=1e-9)


def test_ray_launcher_gives_the_same_records_as_the_local_one(tmp_path):
    pytest.importorskip("ray")
    jobs = plan_jobs(["coop"], ["pneumonia_sample"], [1, 2], protocol="demo", opts=OPTS)
    local = launch(jobs, tmp_path / "local", progress=False)
    ray_res = launch(jobs, tmp_path / "ray", launcher="ray", address="local", workers=2, progress=False)
    assert not local.failed and not ray_res.failed, (local.failed, ray_res.failed)
    a = sorted((_comparable(r) for r in load_records(tmp_path / "local" / "records")), key=lambda r: r["seed"])
    b = sorted((_comparable(r) for r in load_records(tmp_path / "ray" / "records")), key=lambda r: r["seed"])
    assert len(a) == 2 and [x["id"] for x in a] == [x["id"] for x in b]
    for x, y in zip(a, b):
        assert x["confusion_matrix"] == y["confusion_matrix"]
        for k in ("acc", "macro_f1", "kappa"):
            assert x["metrics"][k] == pytest.approx(y["metrics"][k])


def test_local_process_pool_runs_jobs(tmp_path):
    jobs = plan_jobs(["zsclip"], ["pneumonia_sample"], [1, 2], protocol="demo", opts=OPTS)
    res = launch(jobs, tmp_path, workers=2, progress=False)
    assert len(res.done) == 2 and not res.failed


def test_run_killed_mid_epoch_resumes_and_finishes(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "benchmark" / "run.py"), "--methods", "coop", "--seeds", "1",
           "--output", str(out), *TINY_OPTS, "OPTIM.MAX_EPOCH", "60", "DATALOADER.TRAIN_X.BATCH_SIZE", "2"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path, env=env)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if list(out.glob("runs/*/prompt_learner/model.pth.tar-[0-9]*")):
                break
            time.sleep(0.05)
        else:
            pytest.fail("no checkpoint appeared")
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not list(out.glob("records/**/*.json")), "killed before finishing: no record yet"
    rc = main(["--methods", "coop", "--seeds", "1", "--output", str(out), *TINY_OPTS,
               "OPTIM.MAX_EPOCH", "60", "DATALOADER.TRAIN_X.BATCH_SIZE", "2"])
    assert rc == 0
    (rec,) = load_records(out / "records")
    assert rec["timing"]["resumed_from_epoch"] >= 1
    assert rec["timing"]["epochs"] == 60 and [h["epoch"] for h in rec["history"]] == list(range(1, 61))


def test_dry_run_lists_done_and_pending(tmp_path, capsys):
    assert main(["--methods", "zsclip", "--seeds", "1", "--output", str(tmp_path), *OPTS]) == 0
    capsys.readouterr()
    assert main(["--methods", "zsclip,coop", "--seeds", "1", "--dry-run", "--output", str(tmp_path), *OPTS]) == 0
    out = capsys.readouterr().out
    assert "2 job(s): 1 done, 1 to run." in out and "pending" in out
    assert not list((tmp_path / "records").rglob("*CoOp*"))


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex not installed")
def test_latex_tables_compile_with_pdflatex(tmp_path):
    base = {"protocol": "demo", "dataset": "derm_7pt & co", "trainable_params": 2048, "classnames": ["a_b", "c&d %"],
            "backbone": {"name": "ViT-B-16", "weights_id": "file:x_y.pt", "pretrained": False}}
    recs = [{**base, "method": m, "seed": s, "per_class": [{"acc": 50.0}, {"acc": 60.0}],
             "metrics": {"acc": 70.0 + s, "macro_f1": 60.0, "auc": 80.0, "kappa": 40.0 + s}}
            for m in ("Co_Op", "100% & more") for s in (1, 2)]
    paths = build_tables(recs, tmp_path / "t", planned_seeds=3)
    texs = [p for p in paths if p.suffix == ".tex"]
    body = "\n".join(p.read_text() for p in texs)
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass{article}\\usepackage[utf8]{inputenc}\\usepackage{booktabs}\n"
                   "\\begin{document}\n" + body + "\n\\end{document}\n")
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", doc.name], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:]
    assert (tmp_path / "doc.pdf").is_file()


@pytest.mark.parametrize("name", available_suites())
def test_every_shipped_suite_parses_and_names_registered_things(name):
    suite = load_suite(name)
    jobs = suite_jobs(suite, root="data")
    assert jobs, name
    assert suite.tables or suite.figures


def test_unknown_suite_is_named():
    with pytest.raises(KeyError, match="Unknown suite 'nope'"):
        load_suite("nope")


def test_flops_match_the_closed_form_of_the_image_tower(tmp_path):
    """Zero-shot CLIP's per-image inference FLOPs equal the tiny ViT's closed form: nothing (fused
    attention fast path, CPU attention kernel) escapes the counter."""
    cfg = tiny_cfg("zsclip", output_dir=tmp_path)
    trainer = TRAINER_REGISTRY.get("zsclip")(cfg)
    cost = measure_inference_cost(trainer, batch_size=2)
    # tiny ViT: 2 blocks, width 64, 17 tokens (16 patches of 8 px + class token); per block the
    # qkv + output projections (4 w^2) and MLP (8 w^2) per token, attention scores and weighted
    # sum (2 * 2 t^2 w); the patch convolution; the projection to 64; the logits (2 classes x 64)
    w, t, blocks = 64, 17, 2
    per_block = 2 * t * 12 * w * w + 4 * t * t * w
    expected = blocks * per_block + 2 * 16 * (3 * 8 * 8) * w + 2 * w * 64 + 2 * 2 * 64
    assert cost["image_gflops"] * 1e9 == pytest.approx(expected, rel=1e-12)
    assert cost["image_gmacs"] == pytest.approx(cost["image_gflops"] / 2)


#: tiny-backbone settings some methods need (prompt depth <= the tiny towers' 2 blocks).
_TINY_METHOD_OPTS = {
    "PromptSRC": ["TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2"],
    "DePT": ["TRAINER.DEPT.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "TRAINER.DEPT.PROMPTSRC.PROMPT_DEPTH_VISION", "2"],
    "CoPrompt": ["TRAINER.COPROMPT.PROMPT_DEPTH", "2"],
    "DCPL": ["TRAINER.DCPL.PROMPT_DEPTH", "2", "TRAINER.DCPL.DOMAIN_ENCODER", "tiny"],
}


@pytest.mark.parametrize("method", ["RPO", "PromptSRC", "DePT", "AAPL", "CoCoOp", "PLOTPP", "XCoOp", "LASP",
                                    "CoPrompt", "DCPL", "TCP", "ViP", "KgCoOp"])
def test_flops_are_counted_for_every_prompted_path(method, tmp_path):
    """The FLOP counter (module hooks under no_grad) runs through each method's own inference path:
    the two-stream read-only pass, the shared text prefix, deep prompts."""
    cfg = tiny_cfg(method, output_dir=tmp_path, opts=_TINY_METHOD_OPTS.get(method, []))
    trainer = TRAINER_REGISTRY.get(method)(cfg)
    cost = measure_inference_cost(trainer, batch_size=2)
    assert cost["image_gflops"] > 0

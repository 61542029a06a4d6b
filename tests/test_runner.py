"""The grid runner: records, skipping finished runs, tables, failures, CLI errors."""
import json

import pytest

from conftest import TINY_OPTS
from medpt.benchmark.cli import main
from medpt.benchmark.grid import run_grid
from medpt.benchmark.records import load_records
from medpt.benchmark.tables import build_tables, latex_escape

OPTS = TINY_OPTS + ["OPTIM.MAX_EPOCH", "2"]


def test_grid_writes_records_skips_finished_runs_and_rebuilds_identical_tables(tmp_path):
    res = run_grid(["zsclip", "coop"], ["pneumonia_sample"], [1, 2], protocol="demo", output=tmp_path,
                   opts=OPTS, progress=False)
    assert not res.failed, res.failed
    assert len(res.done) == 4 and not res.skipped
    recs = load_records(tmp_path / "records")
    assert len(recs) == 4
    rec = next(r for r in recs if r["method"] == "CoOp" and r["seed"] == 1)
    for key in ("config", "metrics", "per_class", "confusion_matrix", "trainable_params", "backbone",
                "code_version", "split_hash", "timing", "environment", "warnings"):
        assert key in rec, key
    assert rec["trainable_params"] == 16 * 64
    assert rec["backbone"]["pretrained"] is False and "RANDOM-INIT" in rec["warnings"][0]
    assert set(rec["metrics"]) >= {"acc", "macro_f1", "auc", "kappa"}
    assert rec["split_sizes"] == {"train": 8, "test": 8}
    assert not list(tmp_path.rglob(".*.tmp-*"))
    tables = build_tables(recs, tmp_path / "tables", planned_seeds=2)
    first = {p: p.read_text() for p in tables}
    assert any("RANDOM-INIT BACKBONE" in t for t in first.values())

    again = run_grid(["zsclip", "coop"], ["pneumonia_sample"], [1, 2], protocol="demo", output=tmp_path,
                     opts=OPTS, progress=False)
    assert not again.done and len(again.skipped) == 4
    tables2 = build_tables(load_records(tmp_path / "records"), tmp_path / "tables", planned_seeds=2)
    assert {p: p.read_text() for p in tables2} == first

    # a changed config is another run
    other = run_grid(["coop"], ["pneumonia_sample"], [1], protocol="demo", output=tmp_path,
                     opts=OPTS + ["TRAINER.COOP.N_CTX", "4"], progress=False)
    assert len(other.done) == 1


def test_failing_run_does_not_stop_others(tmp_path):
    # the full pneumonia dataset is not under this root: that job fails with a clear message
    res = run_grid(["coop"], ["pneumonia", "pneumonia_sample"], [1], protocol="demo", output=tmp_path,
                   root=str(tmp_path / "data"), opts=OPTS, progress=False)
    assert len(res.done) == 1 and len(res.failed) == 1
    assert res.failed[0]["error"].startswith("FileNotFoundError: pneumonia")
    assert "chest_xray" in res.failed[0]["error"]


def test_tables_mark_missing_seeds_and_escape_latex(tmp_path):
    base = {"protocol": "demo", "dataset": "my_set&co", "trainable_params": 2048,
            "backbone": {"name": "ViT-B-16", "weights_id": "openai", "pretrained": True}}
    recs = []
    for m, accs in (("Co_Op%", [80.0, 82.0]), ("Zero", [70.0])):
        for s, a in enumerate(accs):
            recs.append({**base, "method": m, "seed": s,
                         "metrics": {"acc": a, "macro_f1": a - 10, "auc": a + 5, "kappa": a - 20}})
    paths = build_tables(recs, tmp_path, planned_seeds=2)
    tex = next(p for p in paths if p.name == "my_set&co.tex").read_text()
    assert r"Co\_Op\%" in tex and r"my\_set\&co" in tex
    assert r"\textbf{81.00 $\pm$ 1.41}" in tex          # best, sample std of (80, 82)
    assert r"\underline{70.00$^\dagger$}" in tex        # second, one seed of two
    assert r"\toprule" in tex and r"\bottomrule" in tex
    md = next(p for p in paths if p.name == "my_set&co.md").read_text()
    assert "**81.00 ± 1.41**" in md and "RANDOM-INIT" not in md
    assert latex_escape("a_b & c%") == r"a\_b \& c\%"


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["--methods", "coopp", "--output", str(tmp_path)]) == 2
    assert "Did you mean 'CoOp'" in capsys.readouterr().err
    assert main(["--methods", "coop", "--datasets", "pneumonia_sample", "--output", str(tmp_path),
                 "OPTIM.LRR", "1"]) == 1
    err = capsys.readouterr().err
    assert "unknown config key 'OPTIM.LRR'" in err


def test_cli_demo_on_tiny_clip(tmp_path, capsys):
    rc = main(["--methods", "zsclip,coop", "--seeds", "1", "--output", str(tmp_path), *OPTS])
    assert rc == 0
    out = capsys.readouterr().out
    assert "2 run(s) done" in out and "pneumonia_sample" in out
    assert list((tmp_path / "tables").rglob("pneumonia_sample.tex"))

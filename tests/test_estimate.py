"""The dry run's cost estimate from measured step costs (issue 9), hand-computed."""
from __future__ import annotations

import json

import pytest

from medpt.benchmark.cli import main
from medpt.benchmark.estimate import estimate_jobs, load_speed, summary_lines
from medpt.benchmark.grid import plan_jobs
from medpt.engine import build_config
from medpt.engine.registry import TRAINER_REGISTRY


def _speed_file(tmp_path, results):
    p = tmp_path / "speed.json"
    p.write_text(json.dumps({"date": "2026-11-30", "machine": "test cpu", "backbone": "ViT-B-16", "reps": 3,
                             "configs": {"fp32:8": {"results": results}}}))
    return p


def _row(text, method):
    """The cells of ``method``'s row in the estimate's table."""
    return next(line.split() for line in text.splitlines() if line.startswith(method + " "))


COOP = {"train_uncached_ratio": 0.5, "train_cached_ratio": 0.1, "eval_uncached_ratio": 1.0,
        "ref_train_s": 4.0, "ref_eval_s": 2.0}


def test_estimate_hand_computed_from_paper_counts(tmp_path):
    """kvasir is not on disk here: its paper counts (5,600 train / 2,400 test) are used."""
    meta, results = load_speed(_speed_file(tmp_path, {"CoOp": COOP}))
    jobs = plan_jobs(["CoOp"], ["kvasir"], [1], protocol="paper", root=str(tmp_path / "no-data"),
                     opts=["OPTIM.MAX_EPOCH", "2", "DATALOADER.TRAIN_X.BATCH_SIZE", "16"])
    (c,) = estimate_jobs(jobs, results)
    assert (c.n_train, c.n_test, c.sizes_from, c.epochs, c.batch) == (5600, 2400, "paper", 2, 16)
    steps = 2 * (5600 // 16)  # 700
    assert c.train_s == pytest.approx(steps * 0.5 * 4.0 * 16 / 8)  # 2,800 s
    assert c.train_cached_s == pytest.approx(steps * 0.1 * 4.0 * 16 / 8)  # 560 s
    assert c.eval_s == pytest.approx(2400 * 1.0 * 2.0 / 8)  # 600 s
    text = "\n".join(summary_lines([c], meta, "speed.json"))
    # (2,800 + 600) s = 0.9 h exact protocol; (560 + 600) s = 0.3 h through the cache
    assert _row(text, "CoOp") == ["CoOp", "1", "0.9", "0.3"]
    assert "kvasir" in text and "paper's counts" in text


def test_unmeasured_methods_are_named_not_counted(tmp_path):
    meta, results = load_speed(_speed_file(tmp_path, {"CoOp": COOP}))
    jobs = plan_jobs(["CoOp", "KgCoOp"], ["kvasir"], [1], protocol="paper", root=str(tmp_path))
    costs = estimate_jobs(jobs, results)
    assert costs[1].train_s is None
    assert "not in the speed file (not counted): KgCoOp" in "\n".join(summary_lines(costs, meta, "s.json"))


def test_plotpp_two_stage_plans_twice_the_epochs():
    cls = TRAINER_REGISTRY.get("PLOTPP")
    cfg = build_config("PLOTPP", "kvasir", protocol="paper", opts=["OPTIM.MAX_EPOCH", "3"])
    assert cls.planned_epochs(cfg) == 6
    cfg = build_config("PLOTPP", "kvasir", protocol="paper", opts=["OPTIM.MAX_EPOCH", "3",
                                                                   "TRAINER.PLOTPP.MODEL_UPD", "joint"])
    assert cls.planned_epochs(cfg) == 3
    assert TRAINER_REGISTRY.get("CoOp").planned_epochs(cfg) == 3


def test_load_speed_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json.*benchmark/speed.py"):
        load_speed(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        load_speed(bad)


def test_dry_run_prints_the_estimate_without_data(tmp_path, capsys):
    sf = _speed_file(tmp_path, {"CoOp": COOP})
    rc = main(["--methods", "CoOp", "--datasets", "kvasir", "derm7pt", "--protocol", "paper", "--seeds", "1",
               "--root", str(tmp_path / "none"), "--output", str(tmp_path / "out"), "--dry-run",
               "--speed-file", str(sf)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "Cost estimate from measured step costs" in out and "derm7pt, kvasir" in out
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


def test_stray_arguments_are_refused_before_anything_runs(tmp_path, capsys):
    rc = main(["--methods", "CoOp", "--output", str(tmp_path / "out"), "--dry-run", "OPTIM.MAX_EPOCH"])
    assert rc == 2 and "KEY VALUE" in capsys.readouterr().err
    rc = main(["--output", str(tmp_path / "out"), "--dry-run", "--", "lowercase", "1"])
    assert rc == 2


def test_overrides_after_a_list_option_are_overrides(tmp_path, capsys):
    """'--methods CoOp OPTIM.MAX_EPOCH 7': the key and its value are config overrides."""
    sf = _speed_file(tmp_path, {"CoOp": COOP})
    rc = main(["--datasets", "kvasir", "--protocol", "paper", "--seeds", "1", "--root", str(tmp_path),
               "--output", str(tmp_path / "out"), "--dry-run", "--speed-file", str(sf),
               "--methods", "CoOp", "OPTIM.MAX_EPOCH", "7", "DATALOADER.TRAIN_X.BATCH_SIZE", "16"])
    out = capsys.readouterr().out
    assert rc == 0
    # 7 epochs x 350 steps x 0.5 x 4 s x 2 + 600 s eval = 10,400 s = 2.9 h
    assert _row(out.split("Cost estimate")[1], "CoOp")[:3] == ["CoOp", "1", "2.9"]


def test_a_job_with_a_config_error_is_listed_not_crashing(tmp_path, capsys):
    sf = _speed_file(tmp_path, {"CoOp": COOP})
    rc = main(["--methods", "CoOp", "--datasets", "kvasir", "--protocol", "paper", "--seeds", "1",
               "--root", str(tmp_path), "--output", str(tmp_path / "out"), "--dry-run", "--speed-file", str(sf),
               "--", "TRAINER.COOP.NCTX", "4"])
    out = capsys.readouterr().out
    assert rc == 0 and "ERROR" in out and "config error (not counted" in out


def test_top_level_overrides_after_a_list_option(tmp_path, capsys):
    """'--methods CoOp SEED 2' / '--datasets X VERBOSE True': single-word keys are overrides too."""
    for argv in (["--methods", "CoOp", "VERBOSE", "True"], ["--methods", "CoOp", "--datasets", "kvasir",
                                                             "VERBOSE", "False"]):
        rc = main(["--root", str(tmp_path), "--output", str(tmp_path / "out"), "--dry-run", *argv])
        assert rc == 0, capsys.readouterr().err
        assert "1 job(s)" in capsys.readouterr().out

"""A Ray sweep's Tune experiment lives in the run directory and reopens with ``Tuner.restore``: one row per trial
with the flat ``metrics/`` columns, and each trial's curve (intermediate results: step, loss terms) in its
``metrics_dataframe``; ``--resume`` adds its own restorable experiment. The sweeps run in this process on the test
run's shared Ray (``shared_ray``): a sweep uses a Ray already initialised instead of starting its own. (A sweep's own
local Ray, its lack of a token warning and its removed scratch files: tests/test_sweep.py.)"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import run_main

TOY = ["run", "--task", "toy", "--methods", "esd,mymethod", "--grid", "eps", "--num-cpus", "2", "--no-leaderboard"]


def restored(path: Path):
    from ray import tune

    from unlearnbench.raytune import trainable

    assert tune.Tuner.can_restore(str(path)), path
    return tune.Tuner.restore(str(path), trainable=trainable).get_results()


def test_the_tune_experiment_reopens_with_its_curves_and_resume_adds_one(toy, shared_ray, tmp_path, capsys,
                                                                        monkeypatch):
    import sys

    import unlearnbench.progress
    from unlearnbench.trials import Heartbeat

    for module in {unlearnbench.progress, sys.modules[Heartbeat.__module__]}:  # UNLEARNBENCH_PROGRESS_EVERY_S=1
        monkeypatch.setattr(module, "EVERY_S", 1.0)
    out = tmp_path / "run"
    r = run_main(capsys, [*TOY, "--out", str(out), "--set", "task.sleep=2.5"])  # each trial's evaluation sleeps 2.5 s
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Token authentication" not in r.stdout + r.stderr, "no Ray warning"
    assert shared_ray.is_initialized(), "the sweep ran on the Ray it found and left it running"
    assert "[4/4]" in r.stdout and "(sweep ETA" in r.stdout
    assert " done, " in r.stdout and "] running: " in r.stdout and " step 5/5 " in r.stdout, \
        "heartbeats with the running trials' latest step while they evaluate"
    grid = restored(out / "ray_results" / "run")
    df = grid.get_dataframe()
    assert len(df) == 4 and df["trial_ok"].tolist() == [1, 1, 1, 1]
    assert {"metrics/mass", "metrics/drift", "grid_value"} <= set(df.columns)
    recs = {json.loads(x)["trial_id"]: json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()}
    for res in grid:
        rec = recs[json.loads(res.metrics["record"])["trial_id"]]
        assert res.metrics["metrics"]["mass"] == pytest.approx(rec["metrics"]["mass"]["value"])
        curve = res.metrics_dataframe
        steps = curve["step"].dropna().tolist()
        assert steps == [1, 5], "intermediate results every log_every steps and at the last (toy: 5 steps)"
        assert curve["loss/objective"].notna().sum() == 2
    # --resume runs what records.jsonl lacks, as a second restorable experiment; the first stays as it was
    lines = (out / "records.jsonl").read_text().splitlines()
    (out / "records.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # as if the sweep died before the last trial
    r = run_main(capsys, ["run", "--resume", str(out), "--no-leaderboard"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 to run" in r.stdout and "[1/1]" in r.stdout
    assert len(restored(out / "ray_results" / "run-resume1").get_dataframe()) == 1
    assert len(restored(out / "ray_results" / "run").get_dataframe()) == 4
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "plan.json", "ray_results", "records.jsonl",
                                                     "summary.csv"], "Ray's session files stay out of the run"

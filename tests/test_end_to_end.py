"""The real tasks through the CLI (in this process), small: every method on the task it fits, records with every
documented field."""
from __future__ import annotations

import csv
import json

import pytest

from helpers import run_main

FIELDS = {"schema_version", "run_id", "trial_id", "created_at", "status", "error", "task", "method", "method_config",
          "grid", "seed", "metrics", "oracle", "train", "timing", "config_hash", "env", "artifacts"}


@pytest.mark.parametrize("task,methods", [("gmm-concept", "rkl,rkl-is,lik,lik-is,rkl-fixed,esd"),
                                                ("gmm-data", "fkl,siss")])
def test_gmm_sweep_all_methods(tmp_path, capsys, task, methods):
    out = tmp_path / task
    r = run_main(capsys, ["run", "--task", task, "--methods", methods, "--grid", "smoke", "--steps", "20", "--executor",
                          "serial", "--set", "task.distill_steps=200", "--set", "task.eval_samples=200", "--out",
                          str(out)])
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 2 * len(methods.split(","))
    for rec in recs:
        assert FIELDS <= set(rec), FIELDS - set(rec)
        assert rec["status"] in ("ok", "diverged"), rec["error"]
        assert rec["task"]["name"] == task and rec["task"]["axes"]
        for name, m in rec["metrics"].items():
            assert {"value", "stderr", "role", "higher_is_better"} <= set(m), name
        assert rec["oracle"]["fronts"], "exact fronts reported for every trial"
        if rec["method"] in ("rkl", "rkl-is", "lik", "lik-is", "fkl"):
            duals = rec["train"]["duals"]
            assert duals[0][0] == 0 and all(len(d[1]) == 2 for d in duals)
            assert all(x >= 0 for _, d in duals for x in d)
            assert rec["train"]["constraints_met"] in (True, False)
            assert rec["train"]["convergence"]["converged"] in (True, False)
        else:
            assert rec["train"]["final_duals"] is None
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert len(rows) == len(recs)
    assert (out / "leaderboard" / "index.html").exists()
    assert "trials of " + task in r.stdout and "method" in r.stdout  # the printed table

"""End-to-end sweeps through the CLI with a plugin task/method: Ray and serial executors, failure isolation,
resume after kill -9, and bad input rejected before any work. The CLI runs in this process (``run_main``, the toy
plugin registered from its entry points as an installed one is) except where a process of its own is the point: a
sweep that starts its own local Ray, and one killed with SIGKILL."""
from __future__ import annotations

import json
import signal
import tempfile
import time
from pathlib import Path

import pytest

from helpers import cli, install_fake_plugin, popen, run_main


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    return install_fake_plugin(tmp_path_factory.mktemp("site"))


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "records.jsonl").read_text().splitlines()]


def test_plugin_method_and_task_run_serially(toy, tmp_path, capsys):
    out = tmp_path / "run"
    r = run_main(capsys, ["run", "--task", "toy", "--methods", "mymethod", "--grid", "eps", "--executor", "serial",
                          "--out", str(out), "--no-leaderboard"])
    assert r.returncode == 0, r.stderr
    recs = records(out)
    assert [x["status"] for x in recs] == ["ok", "ok"]
    assert {x["grid"]["value"] for x in recs} == {0.5, 1.0}
    assert recs[0]["grid"]["param"] == "strength" and recs[0]["method_config"]["strength"] in (0.5, 1.0)
    assert (out / "summary.csv").read_text().count("\n") == 3
    assert "[2/2]" in r.stdout


def test_ray_sweep_runs_trials_in_parallel_workers(plugin, tmp_path, monkeypatch):
    """The CLI's own local Ray instance, in a process of its own: started with Ray's default authentication but
    without its warning, and its session files and Tune's scratch folders removed at the end."""
    out = tmp_path / "ray"
    scratch = Path(tempfile.mkdtemp(prefix="ubs-", dir="/tmp"))  # short: Ray's socket paths must stay < 108 chars
    monkeypatch.setenv("RAY_TMPDIR", str(scratch))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)  # Ray's default, which warned on every local run
    r = cli(["run", "--task", "toy", "--methods", "mymethod,esd", "--grid", "eps", "--seeds", "0,1",
             "--num-cpus", "2", "--out", str(out), "--no-leaderboard"], plugin_path=plugin, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert list(scratch.iterdir()) == [], "Ray's session files and Tune's scratch folders are removed at the end"
    scratch.rmdir()
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "plan.json", "ray_results", "records.jsonl",
                                                     "summary.csv"], "Ray's session files stay out of the run"
    recs = records(out)
    assert len(recs) == 8 and all(x["status"] == "ok" for x in recs)
    assert len({x["trial_id"] for x in recs}) == 8
    pids = {x["metrics"]["pid"]["value"] for x in recs}
    assert len(pids) >= 1 and all(p != 0 for p in pids)
    assert "[8/8]" in r.stdout
    assert "Token authentication" not in r.stdout + r.stderr, "no Ray warning on a local run"


def test_same_seed_same_numbers(toy, tmp_path, capsys):
    vals = []
    for name in ("a", "b"):
        out = tmp_path / name
        r = run_main(capsys, ["run", "--task", "toy", "--methods", "esd", "--grid", "eps", "--executor", "serial",
                              "--out", str(out), "--no-leaderboard"])
        assert r.returncode == 0, r.stderr
        vals.append(sorted((x["trial_id"], x["metrics"]["mass"]["value"], x["metrics"]["drift"]["value"])
                           for x in records(out)))
    assert vals[0] == vals[1]


def test_failed_trial_is_recorded_and_others_finish(toy, tmp_path, capsys):
    out = tmp_path / "fail"
    r = run_main(capsys, ["run", "--task", "toy", "--methods", "esd", "--grid", "eps", "--seeds", "0,1", "--executor",
                          "serial", "--out", str(out), "--no-leaderboard"], env_extra={"UB_TOY_FAIL_SEED": "1"})
    assert r.returncode == 1
    recs = records(out)
    status = {x["trial_id"]: x["status"] for x in recs}
    assert sorted(status.values()) == ["failed", "failed", "ok", "ok"]
    failed = [x for x in recs if x["status"] == "failed"]
    assert all("injected failure for seed 1" in x["error"] for x in failed)
    assert "--resume" in r.stderr
    # resume re-runs only the failed ones, the fault gone
    r2 = run_main(capsys, ["run", "--resume", str(out), "--executor", "serial", "--no-leaderboard"])
    assert r2.returncode == 0, r2.stderr
    assert "2 trial(s) already done, 2 to run" in r2.stdout
    assert len(records(out)) == 6


def test_rerun_diverged_replaces_the_verdict_after_the_sane_range_changed(toy, tmp_path, capsys):
    out = tmp_path / "div"
    base = ["--executor", "serial", "--no-leaderboard"]
    r = run_main(capsys, ["run", "--task", "toy", "--methods", "esd", "--grid", "eps", "--out", str(out), *base],
                 env_extra={"UB_TOY_MAX_DRIFT": "0"})
    assert r.returncode == 0, r.stderr
    assert [x["status"] for x in records(out)] == ["diverged", "diverged"]
    r = run_main(capsys, ["run", "--resume", str(out), *base], env_extra={"UB_TOY_MAX_DRIFT": "0"})
    assert "2 trial(s) already done, 0 to run" in r.stdout, "diverged is a result: plain --resume keeps it"
    r = run_main(capsys, ["run", "--resume", str(out), "--rerun-diverged", *base],
                 env_extra={"UB_TOY_MAX_DRIFT": "100"})  # the task's sane range was widened
    assert r.returncode == 0, r.stderr
    recs = records(out)
    assert [x["status"] for x in recs] == ["diverged", "diverged", "ok", "ok"]
    assert [x["metrics"]["drift"]["value"] for x in recs[:2]] == [x["metrics"]["drift"]["value"] for x in recs[2:]]
    r = run_main(capsys, ["run", "--task", "toy", "--rerun-diverged", "--out", str(tmp_path / "x"), *base])
    assert r.returncode == 2 and "--resume" in r.stderr and not (tmp_path / "x").exists()


def test_kill_9_loses_no_finished_trial_and_resume_finishes(toy, tmp_path, capsys):
    out = tmp_path / "killed"
    args = ["run", "--task", "toy", "--methods", "esd,mymethod", "--grid", "eps", "--executor", "serial",
            "--set", "task.sleep=1.5", "--out", str(out), "--no-leaderboard"]
    proc = popen(args, toy, cwd=str(tmp_path))  # a process of its own: it is killed
    path = out / "records.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not path.exists() or len(path.read_text().splitlines()) < 2):
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = records(out)
    assert 2 <= len(before) < 4, "killed mid-sweep"
    assert all(x["status"] == "ok" for x in before)
    r = run_main(capsys, ["run", "--resume", str(out), "--executor", "serial", "--no-leaderboard"])
    assert r.returncode == 0, r.stderr
    assert f"{len(before)} trial(s) already done, {4 - len(before)} to run" in r.stdout
    after = records(out)
    assert len(after) == 4 and len({x["trial_id"] for x in after}) == 4
    assert after[: len(before)] == before, "finished records are never rewritten"


@pytest.mark.parametrize("args,msg", [
    (["--methods", "rkll"], "unknown method 'rkll'; did you mean 'rkl'"),
    (["--methods", "rkl", "--task", "gmm-concep"], "unknown task 'gmm-concep'; did you mean 'gmm-concept'"),
    (["--methods", "fkl", "--task", "toy"], "does not apply to concept task 'toy'"),
    (["--methods", "esd", "--task", "toy", "--grid", "nogrid"], "has no grid 'nogrid'; valid: eps"),
    (["--methods", "esd", "--task", "toy", "--seeds", "a,b"], "expected comma-separated integers"),
    (["--methods", "esd", "--task", "toy", "--set", "methods.esd.lrr=1"], "unknown setting(s) lrr; valid:"),
    (["--methods", "esd", "--task", "toy", "--set", "bogus"], "expected KEY=VALUE"),
])
def test_bad_input_stops_before_work(toy, tmp_path, capsys, args, msg):
    out = tmp_path / "bad"
    r = run_main(capsys, ["run", *args, "--out", str(out)])
    assert r.returncode == 2
    assert msg in r.stderr, r.stderr
    assert not out.exists(), "nothing may be written before validation passes"


def test_grid_file_validation(toy, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("values:\n  rkl: [0.5, oops]\n")
    r = run_main(capsys, ["validate", "--task", "toy", "--methods", "rkl", "--grid", str(bad)])
    assert r.returncode == 2 and "value 'oops' for 'rkl' is not a finite number" in r.stderr
    neg = tmp_path / "neg.yaml"
    neg.write_text("values:\n  rkl: [-1.0]\n")
    r = run_main(capsys, ["validate", "--task", "toy", "--methods", "rkl", "--grid", str(neg)])
    assert r.returncode == 2 and "rkl with eps=-1: threshold b=-1.0 is impossible" in r.stderr
    missing = tmp_path / "missing.yaml"
    missing.write_text("values:\n  esd: [1.0]\n")
    r = run_main(capsys, ["validate", "--task", "toy", "--methods", "rkl", "--grid", str(missing)])
    assert r.returncode == 2 and "no values for method(s) rkl; it has: esd" in r.stderr
    broken = tmp_path / "broken.yaml"
    broken.write_text("values: [1, 2\n")
    r = run_main(capsys, ["validate", "--task", "toy", "--methods", "rkl", "--grid", str(broken)])
    assert r.returncode == 2 and "not valid YAML" in r.stderr
    good = tmp_path / "good.yaml"
    good.write_text("values:\n  rkl: [0.1, 0.2, 0.3]\n")
    r = run_main(capsys, ["run", "--task", "toy", "--methods", "rkl", "--grid", str(good), "--dry-run"])
    assert r.returncode == 0 and "3 trials" in r.stdout


def test_existing_run_dir_needs_resume(toy, tmp_path, capsys):
    out = tmp_path / "again"
    base = ["run", "--task", "toy", "--methods", "esd", "--grid", "eps", "--executor", "serial", "--out", str(out),
            "--no-leaderboard"]
    assert run_main(capsys, base).returncode == 0
    r = run_main(capsys, base)
    assert r.returncode == 2 and "use --resume" in r.stderr


def test_resume_runs_the_sweep_the_folder_holds_and_refuses_other_settings(toy, tmp_path, capsys):
    """--resume with other settings, seeds, grids or methods is refused (one error: line, exit 2, nothing written):
    the trials it would count as done ran under the folder's settings."""
    out = tmp_path / "sweep"
    base = ["--executor", "serial", "--no-leaderboard"]
    r = run_main(capsys, ["run", "--task", "toy", "--methods", "esd,mymethod", "--grid", "eps", "--out", str(out),
                          *base])
    assert r.returncode == 0, r.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    grid = tmp_path / "g.yaml"
    grid.write_text("values: {esd: [0.5, 1.0]}\n")
    refused = [
        (["--set", "methods.esd.lr=0.5"], "--set methods.esd.lr=0.5 (the sweep has none)"),
        (["--seeds", "0,1"], "--seeds 0,1 (the sweep has 0)"),
        (["--methods", "esd"], "--methods esd (the sweep has esd,mymethod)"),
        (["--grid", str(grid)], f"--grid {grid} (the sweep has eps)"),
        (["--steps", "3"], "--steps 3 (the sweep has none)"),
        (["--steps", "0"], "--steps 0 (the sweep has none)"),
        (["--task", "gmm-concept"], "--task gmm-concept (the sweep has toy)"),
        (["--out", str(tmp_path / "other")], "names another folder"),
    ]
    for extra, msg in refused:
        r = run_main(capsys, ["run", "--resume", str(out), *extra, *base])
        assert r.returncode == 2 and r.stderr.startswith("error: --resume") and msg in r.stderr, (extra, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before, extra
    assert not (tmp_path / "other").exists()
    # the same settings given again are the sweep's own; a changed plan.json (e.g. an edited --config) is caught too
    r = run_main(capsys, ["run", "--resume", str(out), "--methods", "esd, mymethod", "--grid", "eps", "--seeds", "0",
                          *base])
    assert r.returncode == 0 and "4 trial(s) already done, 0 to run" in r.stdout, r.stderr
    assert (out / "args.json").read_bytes() == before["args.json"], "a resume keeps the sweep's settings file"
    plan = json.loads((out / "plan.json").read_text())
    plan["trials"][0]["method_config"] = {"lr": 0.5}
    (out / "plan.json").write_text(json.dumps(plan))
    r = run_main(capsys, ["run", "--resume", str(out), *base])
    assert r.returncode == 2 and "other settings for 1 trial(s) (esd-eps0.5-s0: method_config)" in r.stderr, r.stderr


def test_summary_never_loses_a_row_the_folder_holds(tmp_path):
    """A sweep of fewer trials than the folder holds (an attack ladder, an API call) rewrites summary.csv with every
    trial the folder holds."""
    import csv

    from synthetic import make_record, write_records

    from unlearnbench.config import SweepPlan
    from unlearnbench.sweep import run_sweep

    run = write_records(tmp_path / "run", [make_record("toy-data", m, 1.0, 0) for m in ("fkl", "siss")])
    got = run_sweep(SweepPlan("run", str(run), "toy-data", {}, []), executor="serial", resume=True,
                    echo=lambda s: None)
    assert got == []
    rows = list(csv.DictReader(open(run / "summary.csv")))
    assert sorted(r["trial_id"] for r in rows) == ["fkl-g1-s0", "siss-g1-s0"]


def test_a_trial_is_planned_once_frozen_with_its_resolved_settings(tmp_path, monkeypatch):
    """plan_trials resolves each trial's method config once (task defaults < overrides < grid value) into a frozen
    TrialSpec; the runner uses those settings instead of resolving them again, plan.json keeps them, and a change is
    a copy (replace), never an edit in place."""
    import dataclasses

    from unlearnbench import runner
    from unlearnbench.config import TrialSpec, build_method_config, plan_trials
    from unlearnbench.sweep import run_sweep
    from unlearnbench.tasks import TASKS

    plan = plan_trials("gmm-concept", "rkl", "smoke", "0", run_dir=str(tmp_path / "run"),
                       sets=["methods.rkl.lr=2e-3"])
    spec = plan.trials[0]
    assert isinstance(spec, TrialSpec) and spec["method"] == "rkl" and spec.get("attack") is None
    task = TASKS.get("gmm-concept")(None)
    want = dataclasses.asdict(build_method_config(task, "rkl", {"lr": 2e-3}, spec["grid"]))
    assert spec.settings == want and want["lr"] == 2e-3 and want["steps"] == 800  # the task's rkl default
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 3
    assert spec.replace(save_models=True).save_models is True and spec.save_models is False

    calls = []
    monkeypatch.setattr(runner, "build_method_config", lambda *a, **k: calls.append(a))
    cfg = runner.method_config(task, spec.replace(settings=dict(spec.settings, steps=7)))
    assert cfg.steps == 7 and calls == []  # the planned settings, not resolved again
    runner.method_config(task, {k: v for k, v in spec.items() if k != "settings"})
    assert len(calls) == 1  # a spec without settings (hand-written, older) is resolved when run

    short = plan_trials("gmm-concept", "rkl", "smoke", "0", run_dir=str(tmp_path / "run2"), steps=0)
    short.trials = short.trials[:1]
    run_sweep(short, executor="serial", echo=lambda s: None)
    held = json.loads((tmp_path / "run2" / "plan.json").read_text())["trials"][0]
    assert held["settings"]["steps"] == 0 and held["trial_id"] == short.trials[0].trial_id


def test_ray_sweeps_start_the_longest_trials_first():
    """A stop-rule cap (lik on gmm-concept: 1600) counts as the budget, then steps; equals keep the plan's order."""
    from unlearnbench.config import plan_trials
    from unlearnbench.sweep import longest_first

    plan = plan_trials("gmm-concept", "rkl-fixed,esd,rkl,lik", "smoke", "0,1", run_dir="/tmp/ub-lpt/run")
    order = [t["trial_id"] for t in longest_first(plan.trials)]
    methods = [t.split("-smoke")[0] for t in order]
    # lik: cap 1600; ESD and rkl: 800 steps each, in the plan's order; rkl-fixed: 400
    assert methods == ["lik"] * 4 + ["esd"] * 4 + ["rkl"] * 4 + ["rkl-fixed"] * 4
    assert order[:4] == [t["trial_id"] for t in plan.trials if t["method"] == "lik"]
    assert longest_first([{"trial_id": "a"}, {"trial_id": "b"}]) == [{"trial_id": "a"}, {"trial_id": "b"}]

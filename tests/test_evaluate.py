"""``unlearnbench evaluate``: a model unlearned elsewhere, scored with the task's own evaluation and seeds, becomes a
trial of its own entry (method ``external``) on the leaderboard, in ``compare`` and in ``attack``; missing or
mismatched checkpoints are refused before any work."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from test_attack import SETS, records  # the fast gmm-concept settings the attack tests run with
from test_cli_docs import run_cli
from unlearnbench.config import plan_trials
from unlearnbench.sweep import run_sweep

@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A gmm-concept run (rkl, one grid value, 40 steps, two seeds) whose trials saved their weights."""
    out = tmp_path_factory.mktemp("ev") / "run"
    plan = plan_trials("gmm-concept", "rkl", "smoke", "0,1", run_dir=str(out), sets=SETS, steps=40,
                       config={"grids": {"smoke": {"rkl": [30.0]}}})
    plan.trials = [t.replace(save_models=True) for t in plan.trials]
    recs = run_sweep(plan, executor="serial", echo=lambda s: None)
    assert [r["status"] for r in recs] == ["ok", "ok"]
    return out, {r["seed"]: r for r in recs}


def test_outside_checkpoint_is_scored_like_the_trial_and_enters_the_leaderboard(saved_run, tmp_path, capsys):
    run, by_seed = saved_run
    # the weights of seed 0 as an author would hand them over: one bare .safetensors file somewhere else
    outside = tmp_path / "elsewhere" / "my_unlearned.safetensors"
    outside.parent.mkdir()
    shutil.copy(run / by_seed[0]["artifacts"]["model"] / "model.safetensors", outside)
    out = tmp_path / "ev"
    rc, text = run_cli(capsys, "evaluate", "--task", "gmm-concept", "--model", str(outside), "--name", "my-method",
                       "--out", str(out), *[a for s in SETS for a in ("--set", s)])
    assert rc == 0, text
    (rec,) = records(out)
    assert rec["method"] == "external" and rec["method_config"] == {"name": "my-method"} and rec["status"] == "ok"
    assert rec["external"] == {"model": str(outside.resolve()), "format": "state-dict"}
    # the task's own evaluation with the trial's seed: the same numbers as the run that trained the weights
    for name, m in by_seed[0]["metrics"].items():
        assert rec["metrics"][name]["value"] == pytest.approx(m["value"], rel=1e-6, abs=1e-9), name
    assert rec["task"]["options"] == by_seed[0]["task"]["options"]
    assert (out / rec["artifacts"]["model"] / "model.safetensors").is_file(), "a copy inside the run folder (attack)"

    # a second seed of the same entry, appended; then the leaderboard over both folders names the entry
    rc, text = run_cli(capsys, "evaluate", "--task", "gmm-concept", "--model", str(outside), "--name", "my-method",
                       "--seeds", "1", "--out", str(out), *[a for s in SETS for a in ("--set", s)])
    assert rc == 0, text
    assert [r["seed"] for r in records(out)] == [0, 1]
    import unlearnbench

    df = unlearnbench.load_results([str(run), str(out)])
    assert set(df["entry"]) == {"rkl", "my-method"}
    assert set(df[df["entry"] == "my-method"]["method"]) == {"external"}
    lb = tmp_path / "lb"
    rc, text = run_cli(capsys, "leaderboard", "--runs", str(run), str(out), "--out", str(lb))
    assert rc == 0, text
    csvs = "".join(p.read_text() for p in lb.rglob("*.csv"))
    assert "my-method" in csvs
    assert "my-method" in "".join(p.read_text() for p in lb.rglob("*.html"))
    key = df["task"].iloc[0]
    rc, text = run_cli(capsys, "compare", "--runs", str(run), str(out), "--task", key, "--a", "rkl", "--b",
                       "my-method", "--json")
    assert rc == 0, text
    verdict = json.loads(text[text.index("{"):])
    assert verdict["a"] == "rkl" and verdict["b"] == "my-method", verdict


def test_saved_trial_folder_is_accepted_and_attack_reads_the_copy(saved_run, tmp_path, capsys):
    from unlearnbench.robustness.plan import plan_attacks

    run, by_seed = saved_run
    trial_dir = run / "artifacts" / by_seed[1]["trial_id"]  # the folder --save-models wrote, model/ inside
    out = tmp_path / "ev2"
    rc, text = run_cli(capsys, "evaluate", "--task", "gmm-concept", "--model", str(trial_dir), "--name", "theirs",
                       "--seeds", "1", "--out", str(out), *[a for s in SETS for a in ("--set", s)])
    assert rc == 0, text
    (rec,) = records(out)
    for name, m in by_seed[1]["metrics"].items():
        assert rec["metrics"][name]["value"] == pytest.approx(m["value"], rel=1e-6, abs=1e-9), name
    plan = plan_attacks(out, "relearn", ["0,5"])
    attacked = [t for t in plan.trials if t["attack"]["source_trial"] == rec["trial_id"]]
    assert len(attacked) == 1 and attacked[0]["method"] == "external"
    assert Path(attacked[0]["attack"]["model"]).is_dir()


def test_missing_and_mismatched_checkpoints_are_refused_before_any_work(saved_run, tmp_path, capsys):
    run, by_seed = saved_run
    out = tmp_path / "never"
    args = ["--task", "gmm-concept", "--name", "x", "--out", str(out), *[a for s in SETS for a in ("--set", s)]]
    rc, text = run_cli(capsys, "evaluate", "--model", str(tmp_path / "nope.safetensors"), *args)
    assert rc == 2 and "nope.safetensors: no such file or folder" in text and "model.safetensors" in text
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, text = run_cli(capsys, "evaluate", "--model", str(empty), *args)
    assert rc == 2 and "a folder without weights" in text and "adapter_config.json" in text
    from safetensors.torch import load_file, save_file

    sd = load_file(str(run / by_seed[0]["artifacts"]["model"] / "model.safetensors"))
    key = sorted(sd)[0]
    bad = dict(sd)
    bad[key] = torch.zeros(3, 3)
    save_file(bad, str(tmp_path / "wrong_shape.safetensors"))
    rc, text = run_cli(capsys, "evaluate", "--model", str(tmp_path / "wrong_shape.safetensors"), *args)
    assert rc == 2 and "wrong_shape.safetensors" in text and f"{key} [3, 3] (expected" in text
    save_file({k: v for k, v in sd.items() if k != key}, str(tmp_path / "missing.safetensors"))
    rc, text = run_cli(capsys, "evaluate", "--model", str(tmp_path / "missing.safetensors"), *args)
    assert rc == 2 and f"missing 1: {key}" in text
    rc, text = run_cli(capsys, "evaluate", "--model", str(tmp_path / "missing.safetensors"), "--task", "gmm-concept",
                       "--name", "rkl", "--out", str(out))
    assert rc == 2 and "--name rkl" in text
    assert not out.exists(), "refused before anything was written"


def test_a_diffusers_folder_is_the_task_model_on_ddpm_data(tmp_path, capsys):
    """On the tasks that load your weights, an unlearned diffusers folder is scored as the task's model; a state dict
    needs the base model it was trained from; a diffusers folder on a task that builds its own network is refused."""
    from paper_fixtures import FAST, ddpm_dir, image_folder

    model = ddpm_dir(tmp_path)
    sets = [f"task.forget_dir={image_folder(tmp_path / 'forget', 2, seed=0)}", "task.kid_features=none",
            "task.train_size=1000", "task.elbo_t=2", "task.n_retain_eval=4", *[f"task.{k}={v}" for k, v in FAST.items()]]
    out = tmp_path / "ev"
    rc, text = run_cli(capsys, "evaluate", "--task", "ddpm-data", "--model", str(model), "--name", "theirs",
                       "--out", str(out), "--cache-dir", str(tmp_path / "cache"), *[a for s in sets for a in ("--set", s)])
    assert rc == 0, text
    (rec,) = records(out)
    assert rec["status"] == "ok" and rec["task"]["options"]["model"] == str(model.resolve())
    assert rec["external"]["format"] == "diffusers" and "model" not in rec["artifacts"]
    assert {"regen_rate", "forget_bpd", "retain_bpd"} <= set(rec["metrics"])
    state = tmp_path / "w.safetensors"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(state))
    rc, text = run_cli(capsys, "evaluate", "--task", "ddpm-data", "--model", str(state), "--name", "theirs",
                       "--out", str(tmp_path / "ev2"), *[a for s in sets for a in ("--set", s)])
    assert rc == 2 and "--set task.model=PATH" in text
    rc, text = run_cli(capsys, "evaluate", "--task", "gmm-concept", "--model", str(model), "--name", "theirs",
                       "--out", str(tmp_path / "ev3"))
    assert rc == 2 and "a diffusers folder, but task gmm-concept builds its own network" in text

"""The robustness ladder (unlearnbench attack): each attack brings the concept back from the pretrained network and
not from the retrained reference beyond its noise; records, resume after kill -9, bad input, leaderboard output."""
from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import run_main

from unlearnbench.robustness.attacks import auc_tpr, mia, steps_to_half
from unlearnbench.robustness.plan import parse_budgets, plan_attacks
from unlearnbench.config import ConfigError, plan_trials
from unlearnbench.sweep import run_sweep

FAST = {"forget": "one", "distill_steps": 400, "distill_batch": 256, "eval_samples": 300, "eval_steps": 10}
SETS = [f"task.{k}={v}" for k, v in FAST.items()]


def records(d: Path) -> list[dict]:
    p = d / "records.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


@pytest.fixture(scope="module")
def gmm_run(tmp_path_factory):
    """A gmm-concept run (forget set "one", rkl, one grid value, 40 steps) with saved weights."""
    out = tmp_path_factory.mktemp("gc") / "run"
    plan = plan_trials("gmm-concept", "rkl", "smoke", "0", run_dir=str(out), sets=SETS, steps=40,
                       config={"grids": {"smoke": {"rkl": [30.0]}}})
    plan.trials = [t.replace(save_models=True) for t in plan.trials]
    recs = run_sweep(plan, executor="serial", echo=lambda s: None)
    assert [r["status"] for r in recs] == ["ok"] and (out / recs[0]["artifacts"]["model"]).is_dir()
    return out


@pytest.fixture(scope="module")
def gmm_attacked(gmm_run):
    plan = plan_attacks(gmm_run, "relearn,embedding", ["0,10,50"])
    recs = run_sweep(plan, executor="serial", resume=True, echo=lambda s: None)
    return {(r["attack"]["name"], r["attack"]["reference"] or r["method"]): r for r in recs}


def test_attacks_none_plans_only_the_retrained_reference(gmm_run, tmp_path):
    """``--attacks none``: the retrained reference scored by the task's evaluation (the comparison protocol's
    anchor), one trial per seed, and no attack."""
    plan = plan_attacks(gmm_run, "none")
    assert [(t["trial_id"], t["attack"]["name"]) for t in plan.trials] == [("reference--retrained-s0", "reference")]
    nosave = tmp_path / "nosave"  # no saved weights needed: only the reference is scored
    nosave.mkdir()
    rec = records(gmm_run)[0]
    rec["artifacts"] = {}
    (nosave / "records.jsonl").write_text(json.dumps(rec) + "\n")
    assert [t["trial_id"] for t in plan_attacks(nosave, "none").trials] == ["reference--retrained-s0"]
    with pytest.raises(ConfigError, match="--save-models"):
        plan_attacks(nosave, "relearn")


def test_seeds_and_methods_select_the_models_attacked(gmm_run):
    """``--seeds`` / ``--methods``: the ladder on a subset of a run's saved models; a seed or method the run does not
    have stops before any work, naming the ones it has."""
    full = plan_attacks(gmm_run, "relearn", ["0,10"])
    same = plan_attacks(gmm_run, "relearn", ["0,10"], seeds="0", methods="rkl")
    assert [t["trial_id"] for t in same.trials] == [t["trial_id"] for t in full.trials]
    assert any(t["method"] == "rkl" for t in same.trials)
    with pytest.raises(ConfigError, match="no trial of seed 3; its seeds: 0"):
        plan_attacks(gmm_run, "relearn", ["0,10"], seeds="0,3")
    with pytest.raises(ConfigError, match="no trial of method 'esd'; its methods: rkl"):
        plan_attacks(gmm_run, "relearn", ["0,10"], methods="esd")
    with pytest.raises(ConfigError, match="no method given; the run's methods: rkl"):
        plan_attacks(gmm_run, "relearn", ["0,10"], methods=",")
    with pytest.raises(ConfigError, match="--seeds 'x'"):
        plan_attacks(gmm_run, "relearn", ["0,10"], seeds="x")


def ladder(rec: dict) -> list[tuple[float, float]]:
    return list(zip(rec["attack"]["values"], rec["attack"]["stderr"]))


def test_records_schema_and_role(gmm_attacked):
    models = ("pretrained", "retrained", "rkl")
    assert sorted(gmm_attacked) == sorted([(a, m) for a in ("embedding", "relearn") for m in models]
                                          + [("reference", "retrained")])
    for (attack, model), r in gmm_attacked.items():
        if attack == "reference":
            continue
        assert r["status"] == "ok", r.get("error")
        assert r["task"]["name"] == "gmm-concept" and r["attack"]["budgets"] == [0, 10, 50]
        names = {f"{attack}_forgotten_mass@{k}" for k in (0, 10, 50)} | {f"{attack}_steps_to_half"}
        assert set(r["metrics"]) == names
        assert all(m["role"] == "robustness" for m in r["metrics"].values())
        assert r["timing"]["total_s"] > 0
    assert gmm_attacked[("relearn", "rkl")]["attack"]["source_trial"] == "rkl-smoke30-s0"
    assert gmm_attacked[("relearn", "rkl")]["grid"]["value"] == 30.0


def test_retrained_reference_is_scored_by_the_task_evaluation(gmm_run, gmm_attacked):
    """The retrained network gets every metric the task records for a trial, with the same roles, and exact
    unlearning's value: no erased mass beyond noise (the pretrained network has 0.14)."""
    trial = records(gmm_run)[0]
    ref = gmm_attacked[("reference", "retrained")]
    assert ref["status"] == "ok" and ref["method"] == "retrained" and ref["trial_id"] == "reference--retrained-s0"
    assert set(ref["metrics"]) == set(trial["metrics"])
    assert {k: m["role"] for k, m in ref["metrics"].items()} == {k: m["role"] for k, m in trial["metrics"].items()}
    mass = ref["metrics"]["forgotten_mass"]
    assert mass["value"] < 3 * mass["stderr"] + 0.01 < trial["metrics"]["forgotten_mass_pretrained"]["value"]


@pytest.mark.parametrize("attack", ["relearn", "embedding"])
def test_pretrained_recovers_retrained_does_not(gmm_attacked, attack):
    """Sanity at both ends: the pretrained network shows the concept (at its own level from budget 0); the retrained
    reference does not at budget 0 (beyond its noise) and is still behind the pretrained one at the first rung."""
    pre, ret = ladder(gmm_attacked[(attack, "pretrained")]), ladder(gmm_attacked[(attack, "retrained")])
    level = gmm_attacked[(attack, "pretrained")]["attack"]["pretrained_level"]
    assert level > 0.08 and pre[0][0] == pytest.approx(level)
    noise = lambda a, b: 3 * math.hypot(a[1], b[1])  # noqa: E731
    assert ret[0][0] < pre[0][0] - noise(pre[0], ret[0])
    assert ret[1][0] < pre[1][0], (pre, ret)
    assert gmm_attacked[(attack, "pretrained")]["attack"]["steps_to_half"] == 0.0
    half = gmm_attacked[(attack, "retrained")]["attack"]["steps_to_half"]
    assert half is None or half > 0


def test_mia_members_from_pretrained_not_from_retrained(tmp_path):
    """MIA on gmm-data's outlier with the exact pretrained and retrain distributions as the networks: the pretrained
    model gives the forget point away, the retrained one does not (AUC near 0.5). (On a cluster's densest point both
    score ~0.8: a loss attack also flags typical points, which is why the retrained reference is drawn.)"""
    from unlearnbench.tasks import TASKS

    task = TASKS.get("gmm-data")({"forget": "one"}, cache_dir=str(tmp_path))
    forget = task.exact().mix.means[task.split()[0]].float()
    bundle = SimpleNamespace(forget_data=forget, device=torch.device("cpu"), null_cond=0, schedule=task.schedule)
    settings = {"sample_seed": 777, "mia_heldout": 128, "mia_n_t": 64, "bootstrap": 200}
    pre = mia(task, bundle, task.exact(), 0, settings)
    ret = mia(task, bundle, task.retrain_exact(), 0, settings)
    assert pre["mia_auc"].value > 0.75 and ret["mia_auc"].value < 0.6
    lo, hi = pre["_intervals"]["mia_auc"]
    assert lo <= pre["mia_auc"].value <= hi and pre["mia_auc"].stderr > 0


def test_auc_tpr_and_steps_to_half():
    import numpy as np

    assert auc_tpr(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == (1.0, 1.0)
    assert auc_tpr(np.array([0.0]), np.array([0.0, 1.0]))[0] == 0.25
    assert steps_to_half([0, 10, 50], [0.0, 0.2, 0.6], 0.8) == pytest.approx(10 + (0.4 - 0.2) / 0.4 * 40)
    assert steps_to_half([0, 10], [0.5, 0.9], 0.8) == 0.0
    assert steps_to_half([0, 10], [0.0, 0.1], 0.8) is None


def test_budgets_parse():
    assert parse_budgets(None, ["relearn", "mia"]) == {"relearn": [0, 10, 50, 200], "mia": [0]}
    assert parse_budgets(["50,0,10", "embedding=0,5"], ["relearn", "embedding"]) == {"relearn": [0, 10, 50],
                                                                                     "embedding": [0, 5]}
    for bad, msg in ((["a,b"], "comma-separated whole numbers"), (["-1,2"], ">= 0"),
                     (["mia=0,1"], "mia has no budget ladder"), (["relearnn=0,1"], "not among the attacks run"),
                     (["0,1000000000"], "each at most 10000 optimizer steps"),
                     ([",".join(map(str, range(21)))], "at most 20 budgets"), (["1e9"], "whole numbers")):
        with pytest.raises(ConfigError, match=msg):
            parse_budgets(bad, ["relearn", "mia"])


def test_leaderboard_robustness_is_reproducible_and_separate(gmm_run, gmm_attacked, tmp_path):
    from unlearnbench import load_results, load_robustness
    from unlearnbench.leaderboard import build_leaderboard

    only_trials = tmp_path / "a"
    build_leaderboard([gmm_run / "records.jsonl"], only_trials)  # the run's own records, no attack records
    first, second = tmp_path / "b", tmp_path / "c"
    build_leaderboard([gmm_run], first)
    build_leaderboard([gmm_run], second)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert Path("gmm-concept-one_robustness.csv") in files
    assert {Path(f"plots/gmm-concept-one__robustness__{a}.png") for a in ("relearn", "embedding")} <= set(files)
    for f in files:
        assert (first / f).read_bytes() == (second / f).read_bytes(), f
    # attack records never enter the fronts (the points table's trial rows are the same without them); the
    # retrained reference's evaluation anchors the summary's levels and clipping instead (unlearnbench.protocol)
    def trial_rows(folder: Path) -> list[str]:
        return [line for line in (folder / "gmm-concept-one_points.csv").read_text().splitlines()
                if not line.startswith("retrained (reference)")]

    assert trial_rows(first) == trial_rows(only_trials)
    csv = (first / "gmm-concept-one_robustness.csv").read_text().splitlines()
    assert csv[0].startswith("attack,metric,model,method,grid_value,budget,mean,ci_lo,ci_hi")
    assert sum(line.startswith("relearn,forgotten_mass,retrained") for line in csv) == 3
    assert "robustness ladder" in (first / "index.html").read_text()
    points = (first / "gmm-concept-one_points.csv").read_text().splitlines()
    assert points[-1].startswith("retrained (reference),retrained,")  # the reference row: every metric, no front
    assert (first / "gmm-concept-one_points.csv").read_bytes() != (only_trials / "gmm-concept-one_points.csv"
                                                                   ).read_bytes()
    assert "retrained without the forget set (1 seed" in (first / "index.html").read_text()
    df = load_robustness(gmm_run)
    assert set(df["attack"]) == {"relearn", "embedding", "reference"}
    assert set(df[df["attack"] != "reference"]["role"]) == {"robustness"}
    assert set(df[df["attack"] == "reference"]["role"]) <= {"unlearning", "retention", "info"}
    assert set(load_results(gmm_run)["role"].dropna()) <= {"unlearning", "retention", "info"}


def test_resume_after_kill(gmm_run, tmp_path, capsys):
    import shutil
    import subprocess
    import sys

    run = tmp_path / "run"
    shutil.copytree(gmm_run, run, ignore=shutil.ignore_patterns("attack", "leaderboard"))
    args = [sys.executable, "-m", "unlearnbench", "attack", str(run), "--attacks", "relearn,embedding", "--budgets",
            "0,10,200", "--executor", "serial", "--no-leaderboard"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = run / "attack" / "records.jsonl"
    deadline = time.time() + 900  # generous: a loaded machine
    while time.time() < deadline and (not path.exists() or len(path.read_text().splitlines()) < 1):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = records(run / "attack")
    assert 1 <= len(before) < 7, "killed mid-ladder"
    r = run_main(capsys, args[3:])  # resumed in this process
    assert r.returncode == 0, r.stderr
    assert f"{len(before)} trial(s) already done, {7 - len(before)} to run" in r.stdout
    after = records(run / "attack")
    assert len(after) == 7 and len({x["trial_id"] for x in after}) == 7  # 3 models x 2 attacks + the reference
    assert after[: len(before)] == before, "finished attack records are never rewritten"
    r = run_main(capsys, args[3:])  # all done: nothing re-run
    assert r.returncode == 0 and "7 trial(s) already done, 0 to run" in r.stdout and len(records(run / "attack")) == 7


def test_cli_bad_input(gmm_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written where the command runs
    cases = [
        (["--attacks", "relearnn"], "unknown attack 'relearnn'; valid: embedding, mia, relearn"),
        (["--attacks", "mia"], "attack 'mia' does not apply to concept task gmm-concept"),
        (["--attacks", ","], "no attack given; valid: embedding, mia, relearn"),
        (["--budgets", "0,x"], "--budgets '0,x': expected comma-separated whole numbers"),
        (["--cpus-per-trial", "0"], "--cpus-per-trial 0"),
        (["--budgets", "0,1000000000"], "--budgets '0,1000000000': at most 20 budgets, each at most 10000"),
        (["--seeds", "7"], "--seeds 7: the run has no trial of seed 7; its seeds: 0"),
        (["--methods", "esd"], "--methods 'esd': the run has no trial of method 'esd'; its methods: rkl"),
    ]
    before = sorted(p.name for p in gmm_run.iterdir())
    for extra, msg in cases:
        r = run_main(capsys, ["attack", str(gmm_run), *extra])
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (extra, r.stderr)
    r = run_main(capsys, ["attack", str(tmp_path / "nope")])
    assert r.returncode == 2 and "no such directory" in r.stderr
    nosave = tmp_path / "nosave"
    nosave.mkdir()
    rec = records(gmm_run)[0]
    rec["artifacts"] = {}
    (nosave / "records.jsonl").write_text(json.dumps(rec) + "\n")
    r = run_main(capsys, ["attack", str(nosave)])
    assert r.returncode == 2 and "--save-models" in r.stderr
    assert sorted(p.name for p in gmm_run.iterdir()) == before and [p.name for p in tmp_path.iterdir()] == ["nosave"]


DIGITS_TINY = {"pretrain_steps": 20, "finetune_steps": 10, "classifier_epochs": 1, "pool_size": 8, "sample_steps": 4,
               "n_eval": 16, "n_eval_kept": 4, "n_retain_eval": 16}


def test_digits_retrained_references_leave_out_the_forget_set(tmp_path, monkeypatch):
    """The retrained digits networks are trained by the pretraining routine on the data without the erased digit /
    without the forgotten images' copies (pretraining replaced by a recorder here)."""
    import unlearnbench.models as models
    from unlearnbench.robustness.references import retrained_net
    from unlearnbench.tasks import TASKS

    concept = TASKS.get("digits-concept")(DIGITS_TINY, cache_dir=str(tmp_path))
    data = TASKS.get("digits-data")({**DIGITS_TINY, "forget": "pair"}, cache_dir=str(tmp_path))
    concept._base(progress=False), data.prepare(progress=False)
    seen = []
    real = models.pretrain_unet

    def recorder(config, x, cond, unet_config=None, init=None, progress=True, desc=""):
        seen.append((x, cond, init))
        net = models.CondUNet(unet_config or concept.cfgs["unet"]["unet"])
        net.train_time_s = 0.0
        return net

    monkeypatch.setattr(models, "pretrain_unet", recorder)
    retrained_net(concept)
    x, cond, init = seen[-1]
    assert init is None and 4 not in set(cond.tolist()) and {1, 2, 3, 5, 10} <= set(cond.tolist())  # digit 3 = id 4
    retrained_net(data)
    x, cond, init = seen[-1]
    from unlearnbench.tasks.digits_data import INJECTED

    hits = {n: int(((x - INJECTED[n]).flatten(1).abs().sum(1) == 0).sum()) for n in INJECTED}
    assert init is not None and hits == {"checker": 0, "cross": 0, "stripes": 40}
    assert real is not recorder


@pytest.mark.slow
@pytest.mark.parametrize("task,method,attacks", [("digits-concept", "rkl", "relearn,embedding"),
                                                 ("digits-data", "fkl", "relearn,mia,embedding")])
def test_digits_attacks_end_to_end(tmp_path, task, method, attacks):
    """Tiny digits runs with saved weights, attacked with every attack that applies (about a minute each)."""
    out = tmp_path / "run"
    plan = plan_trials(task, method, "smoke", "0", run_dir=str(out), steps=2, cache_dir=str(tmp_path / "cache"),
                       sets=[f"task.{k}={v}" for k, v in DIGITS_TINY.items()],
                       config={"grids": {"smoke": {method: [50.0]}}})
    plan.trials = [t.replace(save_models=True) for t in plan.trials]
    assert [r["status"] for r in run_sweep(plan, executor="serial", echo=lambda s: None)] == ["ok"]
    aplan = plan_attacks(out, attacks, ["0,2"], cache_dir=str(tmp_path / "cache"))
    recs = run_sweep(aplan, executor="serial", resume=True, echo=lambda s: None)
    assert len(recs) == 3 * len(attacks.split(",")) + 1 and all(r["status"] == "ok" for r in recs), \
        [r.get("error") for r in recs]
    ref = [r for r in recs if r["attack"]["name"] == "reference"]
    assert [r["method"] for r in ref] == ["retrained"]
    assert set(ref[0]["metrics"]) == set(records(out)[0]["metrics"])  # every metric of the task
    for r in recs:
        if r is not ref[0]:
            assert all(m["role"] == "robustness" for m in r["metrics"].values())


def test_a_model_attacked_again_with_another_ladder_is_not_a_second_seed():
    """Re-attacking a model with a new ladder supersedes its old records (newest wins per model and seed); seeds
    attacked with different ladders are pooled budget by budget."""
    from unlearnbench.leaderboard.robustness import attack_trials, rows_of

    def rec(seed, budgets, values, created, trial="relearn--rkl-s"):
        return {"trial_id": f"{trial}{seed}-{len(budgets)}", "created_at": created, "status": "ok", "seed": seed,
                "method": "rkl", "method_config": {"eps": 30.0}, "grid": {"param": "eps", "value": 30.0},
                "task": {"name": "gmm-concept", "options": {}}, "metrics": {},
                "attack": {"name": "relearn", "reference": None, "budgets": budgets, "values": values,
                           "stderr": [0.01] * len(values), "measure": "forgotten_mass", "steps_to_half": None}}

    old = rec(0, [0, 10, 50, 200], [0.0, 0.1, 0.2, 0.3], "2026-01-01")
    new = rec(0, [0, 10, 50], [0.0, 0.5, 0.6], "2026-01-02")
    other_seed = rec(1, [0, 10, 50, 200], [0.0, 0.7, 0.8, 0.9], "2026-01-01")
    trials = attack_trials([old, new, other_seed])["gmm-concept"]
    assert sorted(r["trial_id"] for r in trials) == sorted([new["trial_id"], other_seed["trial_id"]])
    rows = {r["budget"]: r for r in rows_of(trials)}
    assert sorted(rows) == [0, 10, 50, 200]
    assert rows[10]["n"] == 2 and rows[10]["mean"] == pytest.approx(0.6)  # seeds 0 (new ladder) and 1
    assert rows[200]["n"] == 1 and rows[200]["mean"] == pytest.approx(0.9)  # only seed 1 went that far


def test_steps_to_half_read_on_the_rungs_every_ladder_shares():
    """A fine ladder (0/2/5/10/50) reaches half the pretrained level sooner by linear interpolation than a coarse one
    (0/10/50) on the very same curve: the table reads both on their shared rungs, so the same curve gives the same
    steps to half whatever ladder attacked it, and a model's seeds with different ladders are read alike."""
    from unlearnbench.leaderboard.robustness import attack_trials, rows_of

    curve = {0: 0.0, 2: 0.6, 5: 0.95, 10: 1.0, 50: 1.0}  # a relearning curve; pretrained level 1.0

    def rec(method, seed, budgets):
        values = [curve[k] for k in budgets]
        return {"trial_id": f"relearn--{method}-s{seed}", "created_at": "2026-01-01", "status": "ok", "seed": seed,
                "method": method, "method_config": {"eps": 30.0}, "grid": {"param": "eps", "value": 30.0},
                "task": {"name": "digits-concept", "options": {}}, "metrics": {},
                "attack": {"name": "relearn", "reference": None, "budgets": budgets, "values": values,
                           "stderr": [0.01] * len(values), "measure": "acc_forget", "pretrained_level": 1.0,
                           "steps_to_half": steps_to_half(budgets, values, 1.0)}}

    fine, coarse = [0, 2, 5, 10, 50], [0, 10, 50]
    assert steps_to_half(fine, [curve[k] for k in fine], 1.0) == pytest.approx(2 * 0.5 / 0.6)
    assert steps_to_half(coarse, [curve[k] for k in coarse], 1.0) == pytest.approx(5.0)
    rows = rows_of(attack_trials([rec("rkl", 0, fine), rec("rkl", 1, fine), rec("esd", 0, coarse)])["digits-concept"])
    halves = {r["method"]: r["steps_to_half"] for r in rows}
    assert halves["rkl"] == pytest.approx(5.0) and halves["esd"] == pytest.approx(5.0)
    alone = rows_of(attack_trials([rec("rkl", 0, fine)])["digits-concept"])  # one ladder: its own rungs
    assert alone[0]["steps_to_half"] == pytest.approx(2 * 0.5 / 0.6)
    curve.update({10: 0.3, 50: 0.4, 200: 0.9})  # half reached only past the last shared rung: a longer ladder's own
    rows = rows_of(attack_trials([rec("rkl", 0, fine), rec("spm", 0, coarse + [200])])["digits-concept"])
    halves = {r["method"]: (r["steps_to_half"], r["half_reached"]) for r in rows}
    assert halves["rkl"] == (None, "0/1") and halves["spm"] == (pytest.approx(50 + 0.1 / 0.5 * 150), "1/1")


def test_wilson_interval_is_not_degenerate_at_zero():
    from unlearnbench.pareto import wilson

    lo, hi = wilson(0.0, 1000)
    assert lo == 0.0 and hi == pytest.approx(0.00383, abs=1e-5)  # 1.96^2 / (1000 + 1.96^2)
    lo, hi = wilson(0.5, 100)
    assert (lo, hi) == (pytest.approx(0.4038, abs=1e-4), pytest.approx(0.5962, abs=1e-4))
    assert wilson(1.0, 50)[1] == 1.0


def test_two_variants_of_a_method_are_two_models_not_two_seeds():
    """rkl with trainable=full and with trainable=xattn, both at eps 30 seed 0: two rows labelled as the fronts label
    the entries, never pooled as seeds of one model."""
    from unlearnbench.leaderboard.robustness import attack_trials, rows_of

    def rec(trainable, values):
        return {"trial_id": f"relearn--rkl-{trainable}", "created_at": "2026-01-01", "status": "ok", "seed": 0,
                "method": "rkl", "method_config": {"eps": 30.0, "trainable": trainable},
                "grid": {"param": "eps", "value": 30.0}, "task": {"name": "gmm-concept", "options": {}},
                "metrics": {}, "attack": {"name": "relearn", "reference": None, "budgets": [0, 10],
                                          "values": values, "stderr": [0.01, 0.01], "measure": "forgotten_mass",
                                          "steps_to_half": None}}

    rows = rows_of(attack_trials([rec("full", [0.0, 0.2]), rec("xattn", [0.0, 0.8])])["gmm-concept"])
    at10 = {r["model"]: r for r in rows if r["budget"] == 10}
    assert set(at10) == {"rkl [trainable=full] eps=30", "rkl [trainable=xattn] eps=30"}
    assert [at10[m]["n"] for m in sorted(at10)] == [1, 1]
    assert at10["rkl [trainable=xattn] eps=30"]["mean"] == pytest.approx(0.8)
    assert {r["method"] for r in rows} == {"rkl [trainable=full]", "rkl [trainable=xattn]"}
    assert {r["base_method"] for r in rows} == {"rkl"}, "both variants take rkl's colour"


def test_a_perfectly_separated_mia_is_not_certain():
    """One forget image ranked above all 256 held-out digits: AUC 1 with a [1, 1] bootstrap on every seed. Its
    interval must be at least Wilson's for 256 held-out (one seed) or 3 x 256 (three seeds); TPR at 1 % FPR, a share
    of one distinct member, at least Wilson's for 1/1 (or 3/3)."""
    from unlearnbench.leaderboard.robustness import attack_trials, rows_of
    from unlearnbench.pareto import wilson

    def rec(seed):
        return {"trial_id": f"mia-0--fkl-eps20-s{seed}", "created_at": "2026-01-01", "status": "ok", "seed": seed,
                "method": "fkl", "method_config": {"eps": 20.0}, "grid": {"param": "eps", "value": 20.0},
                "task": {"name": "digits-data", "options": {}},
                "metrics": {m: {"value": 1.0, "stderr": 0.0, "n": 1, "role": "robustness"}
                            for m in ("mia_auc", "mia_tpr_at_1fpr")},
                "attack": {"name": "mia", "reference": None, "budgets": [0], "measure": "regen_rate",
                           "intervals": {"mia_auc": [1.0, 1.0], "mia_tpr_at_1fpr": [1.0, 1.0], "n_heldout": 256}}}

    for seeds in ([0], [0, 1, 2]):
        rows = {r["metric"]: r for r in rows_of(attack_trials([rec(s) for s in seeds])["digits-data"])}
        auc, tpr = rows["mia_auc"], rows["mia_tpr_at_1fpr"]
        assert auc["mean"] == 1.0 and auc["n"] == len(seeds) and auc["ci_hi"] == 1.0
        assert auc["ci_lo"] == pytest.approx(wilson(1.0, 256 * len(seeds))[0]) and auc["ci_lo"] < 0.996
        assert tpr["ci_lo"] == pytest.approx(wilson(1.0, len(seeds))[0]) and tpr["ci_lo"] < 0.6
    legacy = rec(0)
    del legacy["attack"]["intervals"]["n_heldout"]  # a record without the counts keeps its bootstrap interval
    rows = {r["metric"]: r for r in rows_of(attack_trials([legacy])["digits-data"])}
    assert (rows["mia_auc"]["ci_lo"], rows["mia_auc"]["ci_hi"]) == (1.0, 1.0)


def test_saved_weights_are_looked_for_only_inside_the_run_folder(tmp_path, caplog):
    """A record whose artifacts.model is absolute or climbs out of its run folder is not attacked or loaded."""
    from unlearnbench.saving import load_unlearned

    elsewhere = tmp_path / "elsewhere" / "model"
    elsewhere.mkdir(parents=True)
    run = tmp_path / "run"
    run.mkdir()
    recs = [{"trial_id": f"rkl-s{i}", "status": "ok", "method": "rkl", "seed": i, "task": {"name": "gmm-concept"},
             "artifacts": {"model": p}} for i, p in enumerate([str(elsewhere), "../elsewhere/model"])]
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(ConfigError, match="no ok trial saved its weights"):
        plan_attacks(run, "relearn", ["0,10"])
    for r in recs:
        assert f"record {r['trial_id']!r} in {run}: artifacts.model" in caplog.text
        with pytest.raises(FileNotFoundError, match=f"trial {r['trial_id']} saved no weights inside {run}"):
            load_unlearned(run, r["trial_id"])
    assert sorted(p.name for p in run.iterdir()) == ["records.jsonl"]


def test_verdict_audit_redraws_a_saved_models_constraint(gmm_run):
    """scripts/verdict_audit.py: fresh estimates of a saved trial's constraint, from the trial's own method code,
    agree with the recorded final estimate within their standard errors, and its 'met' reads the many-draw mean
    against the verdict's relative tolerance."""
    from helpers import load_script

    from unlearnbench.records import read_records

    audit = load_script("verdict_audit").audit
    rec = next(r for r in read_records([gmm_run / "records.jsonl"]) if not r.get("attack"))
    spec = next(t for t in json.loads((gmm_run / "plan.json").read_text())["trials"]
                if t["trial_id"] == rec["trial_id"])
    out = audit(spec, rec, draws=16)
    recorded, rse = rec["train"]["constraint_estimates"], rec["train"]["constraint_se"] or [0.0]
    for m, se, r, s in zip(out["mean"], out["se"], recorded, rse):
        assert abs(m - r) <= 4 * math.hypot(se, s) + 1e-6, (m, se, r, s)
    b, tol = rec["grid"]["value"], rec["method_config"]["met_tol"]
    assert out["met"] == all(b - m <= tol * abs(b) for m in out["mean"])  # rkl: KL >= b
    assert out["short_rel"] == pytest.approx([(b - m) / abs(b) for m in out["mean"]])

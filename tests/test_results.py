"""Records -> tidy frame (unlearnbench.results, unlearnbench.load_results) and the grouping of trials into entries."""
from __future__ import annotations

import csv
import math

import pandas as pd
import pytest

import unlearnbench
from synthetic import grid_records, make_record, synthetic_runs, write_records
from unlearnbench.leaderboard import build_leaderboard
from unlearnbench.results import COLUMNS, collect_tasks, latest_trials
from unlearnbench.sweep import summary_row


def test_load_results_is_tidy(tmp_path):
    runs = synthetic_runs(tmp_path)
    df = unlearnbench.load_results([str(p) for p in runs])
    assert isinstance(df, pd.DataFrame) and list(df.columns) == COLUMNS
    # one row per trial and metric: 3 (gmm) or 4 (toy) metrics and their pretrained companions
    sizes = df[df.status == "ok"].groupby(["task", "trial_id"]).size()
    assert set(sizes["toy-concept"]) == {6} and set(sizes["toy-data"]) == {8}
    assert set(df.status) == {"ok", "failed", "diverged"}
    # the failed trial keeps one row (no metric), the superseded failure of rkl-g0.5-s0 is gone
    failed = df[df.status == "failed"]
    assert list(failed.trial_id) == ["esd-g2-s1"] and failed.metric.isna().all()
    rkl = df[(df.trial_id == "rkl-g0.5-s0") & (df.metric == "kl_concept_min")]
    assert len(rkl) == 1 and rkl.status.iloc[0] == "ok" and rkl.value.iloc[0] == pytest.approx(0.49)
    row = rkl.iloc[0]
    assert (row.task, row.method, row.entry, row.grid_param, row.grid_value, row.seed) == \
        ("toy-concept", "rkl", "rkl", "b", 0.5, 0)
    assert (row.stderr, row.n, row.role, bool(row.higher_is_better)) == (0.001, 1000, "unlearning", True)
    assert str(df["n"].dtype) == "Int64" and str(df["higher_is_better"].dtype) == "boolean"


def test_load_results_names_a_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        unlearnbench.load_results(tmp_path / "nope")


def test_different_settings_are_different_entries(tmp_path):
    """Two runs of one method with different learning rates: two labelled entries, never one front."""
    a = grid_records("toy-concept", {"rkl": 1.0}, lr=1e-3)
    b = grid_records("toy-concept", {"rkl": 3.0}, lr=1e-4, created_at="2026-02-01T00:00:00.000+00:00")
    for r in b:
        r["run_id"] = "run-b"  # same trial ids as run a
    runs = [write_records(tmp_path / "a", a), write_records(tmp_path / "b", b)]
    trials = latest_trials(r for p in runs for r in _read(p))
    assert len(trials) == len(a) + len(b)  # nothing replaced, although the trial ids are the same
    td = collect_tasks(_read(runs[0]) + _read(runs[1]))["toy-concept"]
    assert td.entries == ["rkl [lr=0.0001]", "rkl [lr=0.001]"]
    axis = ("kl_concept_min", "kl_pretrained")
    assert td.points("rkl [lr=0.001]", axis).mean.shape == (3, 2)
    assert td.points("rkl [lr=0.0001]", axis).mean[:, 1] == pytest.approx(3 * td.points("rkl [lr=0.001]",
                                                                                          axis).mean[:, 1], rel=0.1)
    out = tmp_path / "lb"
    result = build_leaderboard(runs, out)
    assert result["tasks"]["toy-concept"]["ranking"] == ["rkl [lr=0.001]", "rkl [lr=0.0001]"]
    with open(out / "toy-concept.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["entry"], r["n_ok"]) for r in rows] == [("rkl [lr=0.001]", "9"), ("rkl [lr=0.0001]", "9")]
    assert "rkl [lr=0.0001]" in (out / "index.html").read_text()


def test_newest_record_of_the_same_settings_wins(tmp_path):
    old = make_record("toy-concept", "rkl", 1.0, 0, status="failed")
    new = make_record("toy-concept", "rkl", 1.0, 0, created_at="2026-03-01T00:00:00.000+00:00")
    trials = latest_trials([new, old])
    assert [t["status"] for t in trials] == ["ok"] and trials[0]["_entry"] == "rkl"


def test_points_carry_intervals_over_seeds_or_eval_stderr():
    recs = grid_records("toy-concept", {"rkl": 1.0})
    axis = ("kl_concept_min", "kl_pretrained")
    ps = collect_tasks(recs)["toy-concept"].points("rkl", axis)
    assert ps.source == "seeds" and list(ps.n) == [3, 3, 3]
    # seeds 0, 1, 2 add -0.01, 0.01, 0: mean 1.0, t(2) * sd / sqrt(3) = 4.303 * 0.01 / 1.732
    assert ps.mean[1, 0] == pytest.approx(1.0) and ps.hi[1, 0] - ps.mean[1, 0] == pytest.approx(0.024843, rel=1e-3)
    one = collect_tasks(grid_records("toy-concept", {"rkl": 1.0}, seeds=(0,)))["toy-concept"].points("rkl", axis)
    assert one.source == "eval" and one.hi[1, 0] - one.mean[1, 0] == pytest.approx(1.96 * 0.001, rel=1e-3)
    assert collect_tasks(recs)["toy-concept"].pretrained(axis) == (0.0, 0.0)


def test_summary_row_has_stderr_columns():
    row = summary_row(make_record("toy-concept", "rkl", 1.0, 0))
    assert row["kl_concept_min"] == pytest.approx(0.99) and row["kl_concept_min_stderr"] == 0.001
    assert row["kl_pretrained_n"] == 1000


def _read(path):
    from unlearnbench.records import read_records

    return read_records([path])


def test_nan_values_stay_nan():
    rec = make_record("toy-concept", "rkl", 1.0, 0)
    rec["metrics"]["kl_pretrained"]["value"] = None
    df = unlearnbench.results.results_frame([rec])
    assert math.isnan(df[df.metric == "kl_pretrained"].value.iloc[0])


def test_a_rate_that_is_zero_on_every_seed_still_has_an_interval():
    """regen_rate is k/n of 1000 samples; 0/1000 on three seeds is [0, Wilson(0, 3000)], not [0, 0]; a divergence
    that is exactly 0 everywhere (kl of the pretrained model to itself) is not a rate."""
    from unlearnbench.pareto import wilson

    recs = grid_records("toy-data", {"siss": 1.0})
    for r in recs:
        if r["grid"]["value"] == 2.0:
            r["metrics"]["regen_rate"]["value"] = 0.0
    td = collect_tasks(recs)["toy-data"]
    assert td.rates["regen_rate"] and td.rates["regen_rate_pretrained"] and not td.rates["forget_nll_pretrained"]
    ps = td.points("siss", ("regen_rate", "kid_retain"))
    i = ps.grid.index(2.0)
    assert ps.mean[i, 0] == 0.0 and ps.lo[i, 0] == 0.0
    assert ps.hi[i, 0] == pytest.approx(wilson(0.0, 3000)[1]) and ps.hi[i, 0] > 0.001
    j = ps.grid.index(0.5)  # seeds that differ by more than sampling noise keep their t interval
    assert ps.hi[j, 0] - ps.mean[j, 0] > wilson(float(ps.mean[j, 0]), 3000)[1] - ps.mean[j, 0]
    mean, lo, hi = td.pretrained_value("regen_rate")  # the pretrained model's 1000/1000
    assert mean == 1.0 and hi == 1.0 and lo == pytest.approx(wilson(1.0, 1000)[0]) and lo < 1.0
    assert math.isnan(td.pretrained_value("forget_nll")[1])  # no stderr recorded: no interval, not a made-up one


def test_hypervolume_interval_contains_its_estimate_when_every_seed_sits_on_the_boundary():
    """The strongest setting at regen_rate 0/1000 and the same KID on every seed: the redrawn rates all move inward,
    and the interval must still hold the estimate."""
    from unlearnbench.leaderboard.stats import hypervolume_ci, retention_at_levels

    recs = grid_records("toy-data", {"siss": 1.0})
    for r in recs:
        r["metrics"]["kid_retain"]["value"] = 0.01 * r["grid"]["value"]
        if r["grid"]["value"] == 2.0:
            r["metrics"]["regen_rate"]["value"] = 0.0
    td = collect_tasks(recs)["toy-data"]
    axis = ("regen_rate", "kid_retain")
    est, lo, hi, src = hypervolume_ci(td, "siss", axis)
    assert src == "seeds" and est > 0 and lo < hi and lo <= est <= hi
    (point, plo, phi), = retention_at_levels(td, "siss", axis, [0.05])
    assert 0.01 < point < 0.02 and plo < phi and plo <= point <= phi


def test_a_setting_added_later_at_its_neutral_value_keeps_one_entry():
    """Records made before ``final_estimates`` existed (one fresh estimate at the end) and records with
    final_estimates=1 are one entry; 8 final estimates make another. The same for stop_strict=False and
    dual_margin=0."""
    old = grid_records("toy-concept", {"rkl": 1.0}, lr=1e-3)
    new = grid_records("toy-concept", {"rkl": 1.0}, lr=1e-3, created_at="2026-02-01T00:00:00.000+00:00")
    more = grid_records("toy-concept", {"rkl": 1.0}, lr=1e-3, created_at="2026-02-01T00:00:00.000+00:00")
    for r in new:
        r["method_config"]["final_estimates"], r["seed"] = 1, r["seed"] + 10
    for r in more:
        r["method_config"]["final_estimates"], r["seed"] = 8, r["seed"] + 20
    td = collect_tasks(old + new)["toy-concept"]
    assert td.entries == ["rkl"]
    assert collect_tasks(old + more)["toy-concept"].entries == ["rkl [final_estimates=8]", "rkl [final_estimates=None]"]
    for r in new:  # stop_strict came later still: False is the check every earlier record stopped on
        r["method_config"]["stop_strict"] = False
    assert collect_tasks(old + new)["toy-concept"].entries == ["rkl"]
    for r in new:  # and dual_margin after it: 0 is the dual step every earlier record took
        r["method_config"]["dual_margin"] = 0.0
    assert collect_tasks(old + new)["toy-concept"].entries == ["rkl"]

"""scripts/tune_defaults.py (the same lr x steps search for every entry) and scripts/settle_budget.py (why duals do
or do not settle): their pure parts."""
from __future__ import annotations

import math

import pytest

from helpers import load_script


def test_compare_settings_marks_the_best_setting_and_the_defaults_share_of_it():
    compare = load_script("tune_defaults").compare_settings
    scores = {"lr0.001-steps400": {"esd": 10.0, "rkl": 12.0, "rkl [xattn]": 11.0},
              "lr0.001-steps800": {"esd": 11.0, "rkl": 13.0},
              "lr0.003-steps400": {"esd": 12.5, "rkl": math.nan}}
    out = compare(scores, {"esd": (1e-3, 400), "rkl": (1e-3, 800), "other": (1e-4, 100)})
    assert list(out) == ["esd", "rkl", "rkl [xattn]"]
    assert out["esd"]["best"] == "lr0.003-steps400" and out["esd"]["defaults"] == "lr0.001-steps400"
    assert out["esd"]["defaults_share_of_best"] == pytest.approx(10.0 / 12.5)
    assert out["rkl"]["best"] == out["rkl"]["defaults"] == "lr0.001-steps800"  # NaN never wins
    assert out["rkl"]["defaults_share_of_best"] == pytest.approx(1.0)
    # an entry with overrides is read as its method's; a setting it lacks is NaN, not a zero
    assert out["rkl [xattn]"]["defaults"] == "lr0.001-steps800"
    assert math.isnan(out["rkl [xattn]"]["scores"]["lr0.001-steps800"])
    assert out["rkl [xattn]"]["defaults_share_of_best"] != out["rkl [xattn]"]["defaults_share_of_best"]


def test_only_the_searched_methods_are_judged():
    """A folder merged in may hold other entries (stage one ran fkl and SISS together; the follow-up fkl alone): the
    table judges the entries of ``--methods`` only, never "nothing decided" for one that was not followed up."""
    compare = load_script("tune_defaults").compare_settings
    scores = {"lr0.001-steps400": {"fkl": 1.0, "siss": 2.0, "fkl [q_source=retain]": 0.5}}
    out = compare(scores, {"fkl": (1e-3, 400), "siss": (1e-4, 400)}, methods={"fkl"})
    assert list(out) == ["fkl", "fkl [q_source=retain]"]


def test_defaults_outside_the_search_are_not_marked():
    compare = load_script("tune_defaults").compare_settings
    out = compare({"lr0.001-steps400": {"esd": 1.0}}, {"esd": (3e-4, 400)})
    assert out["esd"]["defaults"] is None and out["esd"]["defaults_share_of_best"] is None


def test_estimate_noise_is_the_late_spread_over_the_threshold():
    noise = load_script("settle_budget").trial_noise
    est = [[s, [20.0 + (1.0 if (s // 10) % 2 else -1.0), 5.0]] for s in range(0, 200, 10)]
    rec = {"grid": {"value": 25.0}, "train": {"steps": 200, "estimates": est}}
    late = [20.0 + (1.0 if (s // 10) % 2 else -1.0) for s in range(100, 200, 10)]
    sd = float(__import__("numpy").std(late, ddof=1))
    # median over constraints: (sd / 25 + 0) / 2
    assert noise(rec) == pytest.approx(sd / 25.0 / 2)
    assert noise({"grid": {"value": 25.0}, "train": {"steps": 20, "estimates": est[:2]}}) is None
    assert noise({"grid": {"value": 0.0}, "train": {"steps": 200, "estimates": est}}) is None


def test_the_defaults_change_only_when_a_paired_bootstrap_over_seeds_puts_the_best_above_them(tmp_path):
    """Two settings of one entry on four validation seeds: a clearly better front changes the defaults, a front
    that differs only by seed noise does not, one setting alone decides nothing."""
    from synthetic import grid_records, write_records

    mod = load_script("tune_defaults")
    from unlearnbench.leaderboard.stats import reference
    from unlearnbench.results import collect_tasks

    seeds = (100, 101, 102, 103)
    recs = {"good": grid_records("toy-concept", {"rkl": 1.0}, seeds=seeds, references=True),
            "bad": grid_records("toy-concept", {"esd": 2.0}, seeds=seeds, references=True),
            "same": grid_records("toy-concept", {"rkl": 1.0}, seeds=seeds, references=True,
                                 created_at="2026-02-01T00:00:00.000+00:00")}
    # one fixed hypervolume reference for all three (a task declares it): the worst point of them all
    both = collect_tasks(recs["good"] + recs["bad"])["toy-concept"]
    axis = both.axes[0]
    ref, _ = reference(both, axis)
    for rs in recs.values():
        for r in rs:
            if not r.get("attack"):
                r["method"] = "rkl"  # both settings are one entry's
            if isinstance(r.get("task"), dict):
                r["task"]["reference_points"] = [[axis[0], axis[1], ref[0], ref[1]]]
    good, bad, same = (write_records(tmp_path / k, recs[k]) for k in ("good", "bad", "same"))
    tds = {name: mod.load_td([str(d)], [], "toy-concept") for name, d in
           (("lr0.001-steps400", bad), ("lr0.0003-steps800", good), ("lr0.0003-steps400", same))}
    scores = {k: mod.score(td) for k, td in tds.items()}
    assert scores["lr0.0003-steps800"]["rkl"] > scores["lr0.001-steps400"]["rkl"]
    table = mod.compare_settings(scores, {"rkl": (1e-3, 400)})
    assert table["rkl"]["best"] in ("lr0.0003-steps800", "lr0.0003-steps400")
    got = mod.decide(table, tds)["rkl"]
    assert got["choice"] == table["rkl"]["best"] and got["p"] < 0.05 and got["seeds"] == list(seeds)
    # the same records under two names: never "better"
    p, _ = mod.paired_bootstrap(tds["lr0.0003-steps400"], tds["lr0.0003-steps800"], "rkl")
    assert p == 1.0
    assert mod.decide(table, {"lr0.0003-steps800": tds["lr0.0003-steps800"]})["rkl"]["choice"] is None
    # fewer than MIN_SEEDS validation seeds under the defaults: a follow-up, not a decision
    assert mod.decide(table, tds, min_seeds=5)["rkl"]["choice"] is None


def test_an_entry_gridded_on_its_steps_is_matched_by_lr_alone():
    compare = load_script("tune_defaults").compare_settings
    out = compare({"lr0.001-steps300": {"naive": 1.0}, "lr0.001-steps600": {"naive": 1.0},
                   "lr0.0001-steps300": {"naive": 2.0}}, {"naive": (1e-3, None)})
    assert out["naive"]["defaults"] == "lr0.001-steps300" and out["naive"]["best"] == "lr0.0001-steps300"


def test_the_scored_axis_pair_can_be_another_than_the_primary(tmp_path):
    from synthetic import grid_records, write_records

    mod = load_script("tune_defaults")
    d = write_records(tmp_path / "r", grid_records("toy-concept", {"rkl": 1.0}, seeds=(100, 101), references=True))
    first, second = mod.load_td([str(d)], [], "toy-concept"), mod.load_td([str(d)], [], "toy-concept", axis=1)
    assert second.axes[0] == first.axes[1] and second.axes[1] == first.axes[0]
    with pytest.raises(SystemExit, match="axis pairs 0-1"):
        mod.load_td([str(d)], [], "toy-concept", axis=2)

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

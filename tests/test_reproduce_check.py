"""scripts/reproduce_check.py: a re-run that matches the committed records is "consistent", a shifted one "differs"."""
from __future__ import annotations

import pytest

from helpers import load_script
from synthetic import grid_records, write_records


def _script():
    return load_script("reproduce_check")


def test_a_rerun_is_consistent_and_a_shifted_run_differs(tmp_path, capsys):
    mod = _script()
    ref = write_records(tmp_path / "ref", grid_records("toy-data", {"fkl": 1.0}, seeds=(0, 1, 2)))
    same = write_records(tmp_path / "same", grid_records("toy-data", {"fkl": 1.0}, seeds=(0, 1)))
    shifted = grid_records("toy-data", {"fkl": 1.0}, seeds=(0, 1))
    for r in shifted:
        r["metrics"]["retain_nll"]["value"] += 5.0  # the same on every seed: an exact comparison
        r["metrics"]["forget_nll"]["value"] += 0.5  # 25 x the seeds' spread: Welch
    shifted = write_records(tmp_path / "shifted", shifted)

    assert mod.main([str(same), "--reference", str(ref)]) == 0
    out = capsys.readouterr().out
    assert "differs" not in out and "consistent" in out and "0 of " in out
    # 3 grid values x seeds 0, 1 x 4 unlearning/retention metrics, every one equal to the last bit
    assert "trial by trial: 24 of 24 values that both ran" in out
    assert mod.main([str(shifted), "--reference", str(ref)]) == 0
    out = capsys.readouterr().out
    for metric, test in (("retain_nll", "exact"), ("forget_nll", "welch")):
        lines = [ln for ln in out.splitlines() if f" {metric} " in ln and "trial by trial" not in ln]
        assert len(lines) == 3 and all(f" {test} " in ln and ln.rstrip().endswith("differs") for ln in lines)
    assert "trial by trial: 12 of 24 values that both ran" in out and "differ by up to" in out
    with pytest.raises(SystemExit) as bad:
        mod.main([str(same), "--reference", str(ref), "--alpha", "0"])
    assert bad.value.code == 2 and "--alpha 0.0 is out of range" in capsys.readouterr().err

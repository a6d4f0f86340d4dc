"""scripts/place_grid.py: one rule places every entry's grid at fixed fractions of the way to the retrained model."""
from __future__ import annotations

import math

import pytest

from helpers import load_script


def _script():
    return load_script("place_grid")


def test_values_are_interpolated_in_log_space_and_extrapolated_outside_the_values_tried():
    place = _script().place
    # progress linear in log(value): 0.1 -> 0.25, 1 -> 0.75, 10 -> 1.25 (stronger with larger values)
    got = place([0.1, 1.0, 10.0], [0.25, 0.75, 1.25], True, fractions=(0.5, 1.0, 0.0, 1.5))
    want = [(math.sqrt(0.1), False), (math.sqrt(10.0), False), (10 ** -1.5, True), (10 ** 1.5, True)]
    for (v, x), (wv, wx) in zip(got, want):
        assert v == pytest.approx(wv, rel=1e-9) and x == wx
    # lik-like: smaller values are stronger; progress is made monotone (noise at the strong end is ignored)
    got = place([0.1, 0.05, 0.02, 0.01], [0.4, 1.0, 1.6, 1.5], False, fractions=(0.7, 1.6))
    assert got[0][0] == pytest.approx(math.exp((math.log(0.1) + math.log(0.05)) / 2), rel=1e-9) and not got[0][1]
    assert got[1][0] == pytest.approx(0.02, rel=1e-9) and not got[1][1]


"""Pareto extraction, hypervolume, interpolation and seed aggregation on hand-made points."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from unlearnbench.pareto import aggregate_seeds, hypervolume_2d, interpolate_front, pareto_front

ORIENTATIONS = list(itertools.product([True, False], repeat=2))


def brute_front(p: np.ndarray, maximize) -> set[tuple[float, float]]:
    s = np.array([1.0 if m else -1.0 for m in maximize])
    q = p * s
    keep = set()
    for i in range(len(q)):
        dominated = any(np.all(q[j] >= q[i]) and np.any(q[j] > q[i]) for j in range(len(q)))
        if not dominated:
            keep.add(tuple(p[i]))
    return keep


def brute_hypervolume(p: np.ndarray, ref, maximize) -> float:
    """Area of the union of the boxes [point, ref], on the grid of all coordinates (exact for boxes)."""
    s = np.array([1.0 if m else -1.0 for m in maximize])
    q, r = p * s, np.asarray(ref) * s
    q = q[(q[:, 0] > r[0]) & (q[:, 1] > r[1])]
    xs = np.unique(np.concatenate([q[:, 0], [r[0]]]))
    ys = np.unique(np.concatenate([q[:, 1], [r[1]]]))
    area = 0.0
    for x0, x1 in zip(xs[:-1], xs[1:]):
        for y0, y1 in zip(ys[:-1], ys[1:]):
            if np.any((q[:, 0] >= x1) & (q[:, 1] >= y1)):
                area += (x1 - x0) * (y1 - y0)
    return area


def test_front_maximize_both_hand_made():
    pts = np.array([[0, 0], [1, 2], [2, 1], [1, 1], [0.5, 2], [2, 1]], dtype=float)
    idx = pareto_front(pts, (True, True))
    assert idx.tolist() == [1, 2]  # (1,2) and (2,1); the duplicate (2,1) at index 5 is dropped


def test_front_minimize_and_mixed_hand_made():
    pts = np.array([[0, 0], [1, 2], [2, 1], [1, 1], [0.5, 2]], dtype=float)
    assert pareto_front(pts, (False, False)).tolist() == [0]
    # unlearning up is better, retention (a KL) down is better: the classic trade-off shape
    tradeoff = np.array([[0.5, 0.01], [1.0, 0.03], [2.0, 0.10], [1.5, 0.2], [0.4, 0.02]])
    idx = pareto_front(tradeoff, (True, False))
    assert idx.tolist() == [0, 1, 2]  # sorted by the first axis; (1.5, 0.2) and (0.4, 0.02) are dominated
    assert pareto_front(tradeoff, (False, True)).tolist() == [4, 1, 3]


@pytest.mark.parametrize("maximize", ORIENTATIONS)
def test_front_matches_brute_force(maximize):
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = np.round(rng.random((12, 2)) * 4) / 4  # ties and duplicates on purpose
        idx = pareto_front(p, maximize)
        assert {tuple(p[i]) for i in idx} == brute_front(p, maximize)
        assert len(idx) == len({tuple(p[i]) for i in idx})
        assert np.all(np.diff(p[idx, 0]) > 0)


def test_front_ignores_nan_and_empty():
    p = np.array([[np.nan, 5.0], [1.0, 1.0], [0.5, np.nan]])
    assert pareto_front(p, (True, True)).tolist() == [1]
    assert pareto_front(np.zeros((0, 2)), (True, True)).tolist() == []
    with pytest.raises(ValueError, match=r"shape \[n, 2\]"):
        pareto_front(np.zeros((3, 3)), (True, True))


def test_hypervolume_hand_made_both_orientations():
    p = np.array([[1.0, 2.0], [2.0, 1.0]])
    assert hypervolume_2d(p, (0, 0), (True, True)) == pytest.approx(3.0)
    assert hypervolume_2d(p, (3, 3), (False, False)) == pytest.approx(3.0)
    # unlearning up, retention (KL) down, reference (0, 1)
    t = np.array([[1.0, 0.2], [2.0, 0.5]])
    assert hypervolume_2d(t, (0.0, 1.0), (True, False)) == pytest.approx(1 * 0.8 + 1 * 0.5)


def test_hypervolume_points_worse_than_ref_add_nothing():
    p = np.array([[1.0, 2.0], [2.0, 1.0]])
    base = hypervolume_2d(p, (0, 0), (True, True))
    worse = np.vstack([p, [[5.0, -1.0], [-1.0, 5.0], [0.0, 7.0]]])  # each is worse than ref on one axis (or equal)
    assert hypervolume_2d(worse, (0, 0), (True, True)) == pytest.approx(base)
    assert hypervolume_2d(np.array([[-1.0, -1.0]]), (0, 0), (True, True)) == 0.0
    assert hypervolume_2d(np.zeros((0, 2)), (0, 0), (True, True)) == 0.0
    with pytest.raises(ValueError, match="reference point"):
        hypervolume_2d(p, (0, math.nan), (True, True))


@pytest.mark.parametrize("maximize", ORIENTATIONS)
def test_hypervolume_matches_brute_force(maximize):
    rng = np.random.default_rng(1)
    for _ in range(10):
        p = rng.random((9, 2))
        ref = (0.3, 0.6)
        assert hypervolume_2d(p, ref, maximize) == pytest.approx(brute_hypervolume(p, ref, maximize))


def test_interpolate_front():
    front = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 4.0]])
    got = interpolate_front(front, [-1, 0, 0.5, 1.5, 2, 3])
    np.testing.assert_allclose(got, [np.nan, 0, 0.5, 2.5, 4, np.nan])
    # unsorted input and front extraction: (1, 3) is dominated when retention is minimised
    pts = np.array([[2.0, 4.0], [1.0, 3.0], [0.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(interpolate_front(pts, [0.5, 1.0], maximize=(True, False)), [0.5, 1.0])
    # a single point answers only its own level
    np.testing.assert_allclose(interpolate_front([[1.0, 2.0]], [0.5, 1.0]), [np.nan, 2.0])
    assert np.isnan(interpolate_front(np.zeros((0, 2)), [1.0])).all()


def test_aggregate_seeds():
    rows = [
        {"method": "rkl", "grid_value": 1.0, "seed": 0, "kl": 1.0, "acc": 0.5},
        {"method": "rkl", "grid_value": 1.0, "seed": 1, "kl": 3.0, "acc": None},
        {"method": "esd", "grid_value": 2.0, "seed": 0, "kl": 2.0, "acc": 0.7},
        {"method": "rkl", "grid_value": 0.5, "seed": 0, "kl": float("nan"), "acc": 0.1},
    ]
    out = aggregate_seeds(rows)
    assert [(r["method"], r["grid_value"]) for r in out] == [("esd", 2.0), ("rkl", 0.5), ("rkl", 1.0)]
    rkl1 = out[2]
    assert rkl1["n"] == 2 and rkl1["kl"] == 2.0
    assert rkl1["kl_stderr"] == pytest.approx(1.0)  # std(ddof=1) = sqrt(2), / sqrt(2)
    assert rkl1["acc"] == 0.5 and math.isnan(rkl1["acc_stderr"]) and rkl1["acc_n"] == 1
    assert math.isnan(out[1]["kl"]) and out[1]["kl_n"] == 0
    assert "seed" not in rkl1


def test_mean_interval_of_a_rate_uses_wilson_where_seeds_or_a_zero_stderr_understate_it():
    from unlearnbench.pareto import mean_interval, wilson

    m, lo, hi, n, src = mean_interval([0.0], [0.0], [200])  # one seed, 0/200: stderr 0, yet not certain
    assert (m, lo, n, src) == (0.0, 0.0, 1, "eval") and hi == pytest.approx(wilson(0.0, 200)[1]) and hi > 0.015
    m, lo, hi, n, src = mean_interval([0.0, 0.0, 0.0], [0.0] * 3, [200] * 3)  # t over identical seeds is [0, 0]
    assert src == "seeds" and lo == 0.0 and hi == pytest.approx(wilson(0.0, 600)[1])
    spread = mean_interval([0.3, 0.5, 0.7], None, [200] * 3)  # seeds far apart: the t interval is the wider one
    assert spread[1:3] == pytest.approx(mean_interval([0.3, 0.5, 0.7])[1:3])
    m, lo, hi, _, _ = mean_interval([0.0, 0.0, 0.02], None, [200] * 3)  # t reaches below 0; a rate cannot
    assert lo == 0.0 and mean_interval([0.0, 0.0, 0.02])[1] < 0 and hi > 0.02
    m, lo, hi, n, src = mean_interval([0.3], [0.01])  # not a rate: value +- 1.96 x stderr, as before
    assert (n, src) == (1, "eval") and (lo, hi) == pytest.approx((0.3 - 0.0196, 0.3 + 0.0196), rel=1e-3)


def test_bootstrap_redraws_rates_so_a_perfect_rate_on_every_seed_is_not_certain():
    from unlearnbench.pareto import replicates

    v = np.zeros((1, 3, 2))  # one point, three seeds: rate 0/200 on x, a continuous y that varies
    v[0, :, 1] = [0.5, 0.6, 0.7]
    counts = np.zeros_like(v)
    counts[..., 0] = 200
    plain, src = replicates(v, None, seed=1)
    assert src == "seeds" and np.all(plain[:, 0, 0] == 0.0)  # what a seed bootstrap alone gives
    reps, _ = replicates(v, None, seed=1, counts=counts)
    assert np.all(reps[:, 0, 0] >= 0) and np.percentile(reps[:, 0, 0], 97.5) > 0.002  # Jeffreys: ~0.006 for 0/600
    assert np.allclose(np.sort(np.unique(reps[:, 0, 1])), np.sort(np.unique(plain[:, 0, 1])))  # y: seeds only
    one, src1 = replicates(v[:, :1], np.full((1, 1, 2), 0.01), seed=1, counts=counts[:, :1])
    assert src1 == "eval" and one[:, 0, 0].std() > 0 and one[:, 0, 1].std() == pytest.approx(0.01, rel=0.1)

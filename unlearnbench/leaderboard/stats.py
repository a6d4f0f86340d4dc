"""Leaderboard statistics of one task: hypervolume and retention at matched unlearning levels, each with a 95 %
bootstrap interval (over seeds where there are two or more, else from the evaluation stderr of the single seed; a rate
coordinate, k/n, is also redrawn within each seed from its Jeffreys posterior: see :func:`unlearnbench.pareto.replicates`).

Reference points: each sits at the "useless" end of both axes, so that every sensible point beats it; a point worse
than the reference on an axis adds nothing to the hypervolume. Axes not listed use the worst observed values.
Levels: retention is read where *every* entry's front reaches, at 25, 50 and 75 % of that range (see
:func:`unlearnbench.pareto.retention_at`), so no cell is blank because one method stops short.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from unlearnbench.pareto import hypervolume_2d, level_range, percentile_interval, replicates, retention_at
from unlearnbench.results import Axis, PointSet, TaskData, fmt

REFERENCE_POINTS: dict[str, dict[Axis, tuple[float, float]]] = {
    "gmm-concept": {
        # worst-concept KL(p || q_u^i): the pretrained model's (16.09 nats for the pair, 25.74 for one) is "nothing
        # erased"; 16 is used for both. KL(p || q) of 3 nats bounds the strong end of the default grids.
        ("kl_concept_min", "kl_pretrained"): (16.0, 3.0),
        # max erased mass E_p[P(c_i|x)]: 0.14 is the pretrained model's (both erased components weigh 0.14).
        ("forgotten_mass", "kl_pretrained"): (0.14, 3.0),
    },
    "gmm-data": {
        # worst forget-point KL(q_u^i || p): 1.48 nats is the pretrained model's (the dense point); KL 1 nat bounds.
        ("forget_kl_min", "kl_pretrained"): (1.48, 1.0),
        ("forget_kl_min", "kl_retrain"): (1.48, 1.0),
        # the same as an increase over the pretrained model (what fkl's threshold b constrains): 0 = not forgotten.
        ("forget_kl_gain_min", "kl_pretrained"): (0.0, 1.0),
    },
    "digits-concept": {
        # classifier accuracy on erased prompts, 1 = not erased; accuracy on kept prompts, 0.1 = chance (10 digits).
        ("acc_forget", "acc_kept"): (1.0, 0.1),
        # KID on kept prompts; 0.1 is "clearly broken" for the digits feature extractor.
        ("acc_forget", "kid_kept"): (1.0, 0.1),
    },
    "digits-data": {
        # regeneration rate of the memorised image, 1 = always regenerated; KID as above.
        ("regen_rate", "kid_retain"): (1.0, 0.1),
        # bits/dim: 0 is the floor for the forget image; 8 bpd is a uniform model over 256 levels on retained data.
        ("forget_bpd", "retain_bpd"): (0.0, 8.0),
    },
}
N_LEVELS_QUANTILES = (0.25, 0.5, 0.75)


def _lookup(table: dict, name: str) -> Any:
    """A per-task table entry for a leaderboard key, falling back from ``task-forgetset`` to ``task``."""
    if name in table:
        return table[name]
    return table.get(name.rsplit("-", 1)[0], {})


def reference(td: TaskData, axis: Axis) -> tuple[tuple[float, float] | None, str]:
    """The hypervolume reference point and where it comes from ("fixed" or "worst observed")."""
    fixed = _lookup(REFERENCE_POINTS, td.name).get(tuple(axis))
    if fixed is not None:
        return (float(fixed[0]), float(fixed[1])), "fixed"
    pts = [td.points(e, axis).mean for e in td.entries]
    pts = np.concatenate(pts) if pts else np.zeros((0, 2))
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if pts.shape[0] == 0:
        return None, "none (no data)"
    mx = td.maximize(axis)
    return tuple(float(pts[:, i].min() if mx[i] else pts[:, i].max()) for i in range(2)), "worst observed"


def common_levels(td: TaskData, axis: Axis, entries: list[str] | None = None) -> tuple[list[float], str]:
    """Unlearning levels every given entry reaches (25/50/75 % of :func:`unlearnbench.pareto.level_range` over
    their seed-mean fronts), and a note saying so."""
    mx = td.maximize(axis)
    fronts = [td.points(e, axis).mean for e in (entries if entries is not None else td.entries)]
    rng = level_range([f for f in fronts if f.shape[0]], mx)
    if rng is None:
        return [], "no points"
    weak, strong = rng
    if weak == strong:
        return [float(f"{weak:.3g}")], "the fronts do not overlap: the strongest level every front reaches"
    levels = sorted({float(f"{weak + (strong - weak) * q:.3g}") for q in N_LEVELS_QUANTILES})
    return levels, f"25/50/75 % of the range where every front has points, {fmt(weak)} to {fmt(strong)}"


def front_replicates(ps: PointSet, seed: int = 0) -> tuple[np.ndarray, str]:
    """[B, k, 2] bootstrap replicates of the seed-mean points (see :func:`unlearnbench.pareto.replicates`)."""
    if ps.values.shape[0] == 0:
        return np.zeros((0, 0, 2)), ps.source
    return replicates(ps.values, ps.stderr, seed=seed, counts=ps.counts)


def hypervolume_ci(td: TaskData, entry: str, axis: Axis) -> tuple[float, float, float, str]:
    """(hypervolume of the seed means, 2.5 %, 97.5 % bootstrap percentiles, interval source)."""
    ref, _ = reference(td, axis)
    ps = td.points(entry, axis)
    if ref is None or ps.mean.shape[0] == 0:
        return math.nan, math.nan, math.nan, "none"
    mx = td.maximize(axis)
    reps, src = front_replicates(ps)
    hv = [hypervolume_2d(rep, ref, mx) for rep in reps]
    est = hypervolume_2d(ps.mean, ref, mx)
    return (est, *_covering(est, percentile_interval(hv)), src)


def _covering(est: float, interval: tuple[float, float]) -> tuple[float, float]:
    """The percentile interval stretched to contain the estimate: at a boundary (accuracy 0 on the erased prompt,
    1 on the kept ones, on every seed) every redrawn rate moves inward and the percentiles alone would exclude it."""
    lo, hi = interval
    if not (math.isfinite(est) and math.isfinite(lo) and math.isfinite(hi)):
        return lo, hi
    return min(lo, est), max(hi, est)


def retention_at_levels(td: TaskData, entry: str, axis: Axis, levels: list[float]) -> list[tuple[float, float, float]]:
    """Per level: (retention interpolated along the seed-mean front, 2.5 %, 97.5 % bootstrap percentiles)."""
    ps = td.points(entry, axis)
    if ps.mean.shape[0] == 0 or not levels:
        return [(math.nan, math.nan, math.nan) for _ in levels]
    mx = td.maximize(axis)
    point = retention_at(ps.mean, levels, mx)
    reps, _ = front_replicates(ps)
    boot = np.array([retention_at(rep, levels, mx) for rep in reps]).reshape(-1, len(levels))
    return [(float(point[i]), *_covering(float(point[i]), percentile_interval(boot[:, i]))) for i in range(len(levels))]

"""Leaderboard statistics of one task: hypervolume and retention at matched unlearning levels, each with a 95 %
bootstrap interval (over seeds where there are two or more, else from the evaluation stderr of the single seed; a rate
coordinate, k/n, is also redrawn within each seed from its Jeffreys posterior: see :func:`unlearnbench.pareto.replicates`).

Reference points: each sits at the "useless" end of both axes, so that every sensible point beats it; a point worse
than the reference on an axis adds nothing to the hypervolume. Axes not listed use the worst observed values.
Anchored at the retrained model (:mod:`unlearnbench.protocol`): where the task has both anchors on an unlearning
axis, a point's unlearning coordinate is clipped at the retrained value before any hypervolume or retention is read
(overshoot earns nothing; the summary shows it as its own column), and retention is read at the fixed levels 25, 50,
75 and 100 % of the way from the pretrained model to the retrained one; an entry that does not reach a level has a
blank cell there. Without anchors (a task with no retrained reference and no declared target), the levels are 25, 50
and 75 % of the range where *every* entry's front reaches (see :func:`unlearnbench.pareto.retention_at`).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from unlearnbench.pareto import hypervolume_2d, level_range, percentile_interval, replicates, retention_at
from unlearnbench.protocol import FRACTIONS
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
    """The unlearning levels retention is read at, and a note saying where they come from: the protocol's fixed
    fractions of the way from the pretrained to the retrained model where the task has both anchors; else 25/50/75 %
    of :func:`unlearnbench.pareto.level_range` over the given entries' seed-mean fronts."""
    anchor = td.anchors.get(axis[0])
    if anchor is not None:
        levels = [float(f"{v:.3g}") for v in anchor.levels()]
        return levels, (f"{'/'.join(f'{f:.0%}' for f in FRACTIONS)} of the way from the pretrained model "
                        f"({fmt(anchor.pretrained)}) to the retrained one ({fmt(anchor.retrained)}, {anchor.source})")
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


def clipped(td: TaskData, axis: Axis, points: np.ndarray) -> np.ndarray:
    """``points`` [..., 2] with the unlearning coordinate clipped at the retrained value (:meth:`Anchor.clip
    <unlearnbench.protocol.Anchor.clip>`, where the task has both anchors on that axis): past the retrained model
    earns nothing more."""
    anchor = td.anchors.get(axis[0])
    if anchor is None or points.size == 0:
        return points
    out = np.array(points, dtype=float, copy=True)
    out[..., 0] = anchor.clip(out[..., 0])
    return out


def overshoot(td: TaskData, entry: str, axis: Axis) -> tuple[float, int, int]:
    """(largest overshoot of the entry's seed-mean points past the retrained value, in pretrained-to-retrained
    distances; how many of its grid points lie past it; how many grid points): NaN, 0, k without anchors."""
    ps = td.points(entry, axis)
    anchor = td.anchors.get(axis[0])
    k = ps.mean.shape[0]
    if anchor is None or k == 0:
        return math.nan, 0, k
    over = [anchor.overshoot(float(u)) for u in ps.mean[:, 0] if math.isfinite(u)]
    return (max(over) if over else math.nan), sum(o > 0 for o in over), k


def front_replicates(td: TaskData, ps: PointSet, axis: Axis, seed: int = 0) -> tuple[np.ndarray, str]:
    """[B, k, 2] bootstrap replicates of the seed-mean points (see :func:`unlearnbench.pareto.replicates`), clipped
    at the retrained value."""
    if ps.values.shape[0] == 0:
        return np.zeros((0, 0, 2)), ps.source
    reps, src = replicates(ps.values, ps.stderr, seed=seed, counts=ps.counts)
    return clipped(td, axis, reps), src


def hypervolume_ci(td: TaskData, entry: str, axis: Axis) -> tuple[float, float, float, str]:
    """(hypervolume of the seed means, 2.5 %, 97.5 % bootstrap percentiles, interval source)."""
    ref, _ = reference(td, axis)
    ps = td.points(entry, axis)
    if ref is None or ps.mean.shape[0] == 0:
        return math.nan, math.nan, math.nan, "none"
    mx = td.maximize(axis)
    reps, src = front_replicates(td, ps, axis)
    hv = [hypervolume_2d(rep, ref, mx) for rep in reps]
    est = hypervolume_2d(clipped(td, axis, ps.mean), ref, mx)
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
    point = retention_at(clipped(td, axis, ps.mean), levels, mx)
    reps, _ = front_replicates(td, ps, axis)
    boot = np.array([retention_at(rep, levels, mx) for rep in reps]).reshape(-1, len(levels))
    return [(float(point[i]), *_covering(float(point[i]), percentile_interval(boot[:, i]))) for i in range(len(levels))]

"""Leaderboard statistics of one task: hypervolume and retention at matched unlearning levels, each with a 95 %
bootstrap interval (over seeds where there are two or more, else from the evaluation stderr of the single seed; a rate
coordinate, k/n, is also redrawn within each seed from its Jeffreys posterior: see :func:`unlearnbench.pareto.replicates`).

Reference points (each task's ``reference_points``, written into its records): each sits at the "useless" end of both
axes, so that every sensible point beats it; a point worse than the reference on an axis adds nothing to the
hypervolume. Axes not listed use the worst observed values.
Anchored at the retrained model (:mod:`unlearnbench.protocol`): where the task has both anchors on an unlearning
axis, a point's unlearning coordinate is clipped at the retrained value before any hypervolume or retention is read
(overshoot earns nothing; the summary shows it as its own column), and retention is read at the fixed levels 25, 50,
75 and 100 % of the way from the pretrained model to the retrained one; an entry that does not reach a level has a
blank cell there. Without anchors (a task with no retrained reference and no declared target), the levels are 25, 50
and 75 % of the range where *every* entry's front reaches (see :func:`unlearnbench.pareto.retention_at`).
"""
from __future__ import annotations

import math
import numpy as np

from unlearnbench.pareto import hypervolume_2d, level_range, percentile_interval, replicates, retention_at
from unlearnbench.protocol import FRACTIONS
from unlearnbench.results import Axis, PointSet, TaskData, fmt

N_LEVELS_QUANTILES = (0.25, 0.5, 0.75)


def reference_points(td: TaskData) -> dict[Axis, tuple[float, float]]:
    """The task's fixed reference points (its ``reference_points``), as its newest record that carries them wrote them
    (``Task.describe``); records written before the task field held them take them from the task class."""
    from unlearnbench.tasks import TASKS

    tasks = [r["task"] for r in td.trials if isinstance(r.get("task"), dict)]
    held = [r for r in td.trials if isinstance(r.get("task"), dict) and "reference_points" in r["task"]]
    if held:
        newest = max(held, key=lambda r: (str(r.get("created_at", "")), str(r.get("trial_id"))))
        return {(str(a), str(b)): (float(x), float(y)) for a, b, x, y in newest["task"]["reference_points"]}
    name = next((t.get("name") for t in tasks if t.get("name")), None)
    return dict(TASKS.get(name).reference_points) if name is not None and name in TASKS else {}


def reference(td: TaskData, axis: Axis) -> tuple[tuple[float, float] | None, str]:
    """The hypervolume reference point and where it comes from ("fixed" or "worst observed")."""
    fixed = reference_points(td).get(tuple(axis))
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

"""Pareto fronts on (unlearning, retention) planes: pure functions on arrays, oriented by ``higher_is_better``.

Every function takes ``maximize = (unlearning_higher_is_better, retention_higher_is_better)`` and works on the
raw metric values; internally an axis to be minimised is negated so that "better" is always "larger".
NaN coordinates mark a missing measurement: such points are on no front and dominate nothing.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["pareto_front", "hypervolume_2d", "interpolate_front", "retention_at", "level_range", "aggregate_seeds",
           "grid_sort_key", "mean_interval", "replicates", "percentile_interval"]


def _as_points(points: Any) -> np.ndarray:
    p = np.asarray(points, dtype=float)
    if p.size == 0:
        return p.reshape(0, 2)
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"points must have shape [n, 2], got {tuple(p.shape)}")
    return p


def _signs(maximize: Sequence[bool]) -> np.ndarray:
    if len(maximize) != 2:
        raise ValueError(f"maximize must give one bool per axis (2), got {maximize!r}")
    return np.array([1.0 if m else -1.0 for m in maximize])


def pareto_front(points: Any, maximize: Sequence[bool] = (True, True)) -> np.ndarray:
    """Indices of the non-dominated points, sorted by ascending first coordinate.

    A point is dominated if another is at least as good on both axes and strictly better on one. Of several
    identical points only the first (lowest index) is kept, so the front has distinct x values.

    Args:
        points: [n, 2] (unlearning, retention) values; rows with a NaN are ignored.
        maximize: per axis, whether larger values are better.

    Returns:
        [k] int64 indices into ``points``.
    """
    p = _as_points(points)
    s = _signs(maximize)
    valid = np.flatnonzero(np.all(np.isfinite(p), axis=1))
    if valid.size == 0:
        return np.zeros(0, dtype=np.int64)
    q = p[valid] * s  # larger is better on both axes
    # Best x first; among equal x best y first; among identical points the lowest index first (stable sort).
    order = np.lexsort((-q[:, 1], -q[:, 0]))
    keep: list[int] = []
    best_y = -math.inf
    for j in order:
        if q[j, 1] > best_y:
            keep.append(int(valid[j]))
            best_y = q[j, 1]
    idx = np.array(keep, dtype=np.int64)
    return idx[np.lexsort((p[idx, 1], p[idx, 0]))]


def hypervolume_2d(points: Any, ref: Sequence[float], maximize: Sequence[bool] = (True, True)) -> float:
    """Area dominated by the points' front and bounded by the reference point.

    Points not strictly better than ``ref`` on both axes add nothing (the area is clipped at the reference).

    Args:
        points: [n, 2] (unlearning, retention) values; rows with a NaN are ignored.
        ref: (unlearning, retention) reference point, meant to be worse than every useful point.
        maximize: per axis, whether larger values are better.

    Returns:
        The area in the units of the two metrics (0.0 when no point beats the reference).
    """
    p = _as_points(points)
    s = _signs(maximize)
    r = np.asarray(ref, dtype=float) * s
    if r.shape != (2,) or not np.all(np.isfinite(r)):
        raise ValueError(f"reference point must be two finite numbers, got {ref!r}")
    q = p[np.all(np.isfinite(p), axis=1)] * s
    q = q[(q[:, 0] > r[0]) & (q[:, 1] > r[1])]
    if q.shape[0] == 0:
        return 0.0
    front = q[pareto_front(q, (True, True))]  # ascending x, hence descending y
    area, x_prev = 0.0, r[0]
    for x, y in front:
        area += (x - x_prev) * (y - r[1])
        x_prev = x
    return float(area)


def interpolate_front(front_points: Any, levels: Any, maximize: Sequence[bool] | None = None) -> np.ndarray:
    """Retention at fixed unlearning levels, piecewise-linear along a front.

    Args:
        front_points: [k, 2] (unlearning, retention) points. If ``maximize`` is given, the front is first
            extracted from them with :func:`pareto_front`; otherwise they are taken to be a front already.
        levels: [L] unlearning values.
        maximize: orientation, only needed to extract the front.

    Returns:
        [L] float retention values; NaN for a level outside the front's unlearning range (no extrapolation).
    """
    p = _as_points(front_points)
    lv = np.atleast_1d(np.asarray(levels, dtype=float))
    if maximize is not None:
        p = p[pareto_front(p, maximize)]
    p = p[np.all(np.isfinite(p), axis=1)]
    out = np.full(lv.shape, np.nan)
    if p.shape[0] == 0:
        return out
    p = p[np.argsort(p[:, 0], kind="stable")]
    x, y = p[:, 0], p[:, 1]
    inside = np.isfinite(lv) & (lv >= x[0]) & (lv <= x[-1])
    if p.shape[0] == 1:
        out[inside] = y[0]
        return out
    out[inside] = np.interp(lv[inside], x, y)
    return out


def retention_at(points: Any, levels: Any, maximize: Sequence[bool]) -> np.ndarray:
    """Retention reachable at each unlearning level: "unlearning at least as strong as the level".

    Inside the front's unlearning range the front is interpolated piecewise-linearly; on the weak side of its
    weakest point the best retention of the front counts (a stronger unlearning also meets a weaker level); a level
    stronger than every point is not reached (NaN).

    Args:
        points: [n, 2] (unlearning, retention) values (the front is extracted from them).
        levels: [L] unlearning values.
        maximize: per axis, whether larger values are better.

    Returns:
        [L] float retention values.
    """
    p = _as_points(points)
    p = p[pareto_front(p, maximize)]
    lv = np.atleast_1d(np.asarray(levels, dtype=float))
    out = interpolate_front(p, lv)
    if p.shape[0]:
        su = 1.0 if maximize[0] else -1.0
        weakest = p[np.argmin(su * p[:, 0])]
        out[su * lv < su * weakest[0]] = weakest[1]
    return out


def level_range(fronts: Iterable[Any], maximize: Sequence[bool]) -> tuple[float, float] | None:
    """Unlearning levels where every front has points: from the strongest of the fronts' weakest points to the
    weakest of their strongest points, as (weak end, strong end) in raw units. When the ranges do not overlap,
    the single level every front reaches (see :func:`retention_at`): the weakest strongest point. None without a
    front."""
    su = 1.0 if maximize[0] else -1.0
    strongest, weakest = [], []
    for f in fronts:
        u = _as_points(f)[:, 0]
        u = u[np.isfinite(u)]
        if u.size:
            strongest.append(float((su * u).max()))
            weakest.append(float((su * u).min()))
    if not strongest:
        return None
    strong = min(strongest)
    return su * min(max(weakest), strong), su * strong


def grid_sort_key(value: Any) -> tuple:
    """Sort key for grid values that may be numbers, strings or None (numbers first, in numeric order)."""
    if isinstance(value, bool) or value is None:
        return (2, str(value))
    if isinstance(value, (int, float)):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def aggregate_seeds(rows: Iterable[Mapping[str, Any]], keys: Sequence[str] = ("method", "grid_value"),
                    metrics: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Mean and standard error over seeds for each (method, grid value).

    Args:
        rows: one mapping per trial with the ``keys`` and numeric metric columns (None/NaN = missing).
        keys: the columns that identify a group; every other numeric column is a metric unless ``metrics``
            names them.
        metrics: the metric columns to aggregate (default: every key not in ``keys`` or ``"seed"``).

    Returns:
        One dict per group, sorted by the keys: the key columns, ``n`` (rows in the group), and for each metric
        ``<metric>`` (mean over finite values), ``<metric>_stderr`` (sample std / sqrt(count), ddof=1; NaN
        with fewer than two finite values) and ``<metric>_n`` (the count of finite values).
    """
    rows = list(rows)
    if metrics is None:
        names: set[str] = set()
        for r in rows:
            names.update(k for k in r if k not in keys and k != "seed")
        metrics = sorted(names)
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for gkey in sorted(groups, key=lambda t: tuple(grid_sort_key(v) for v in t)):
        members = groups[gkey]
        agg: dict[str, Any] = dict(zip(keys, gkey))
        agg["n"] = len(members)
        for m in metrics:
            vals = np.array([_to_float(r.get(m)) for r in members], dtype=float)
            vals = vals[np.isfinite(vals)]
            agg[m] = float(vals.mean()) if vals.size else math.nan
            agg[f"{m}_stderr"] = float(vals.std(ddof=1) / math.sqrt(vals.size)) if vals.size >= 2 else math.nan
            agg[f"{m}_n"] = int(vals.size)
        out.append(agg)
    return out


def _to_float(v: Any) -> float:
    if v is None or isinstance(v, bool):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


# ----------------------------------------------------------------------------------------------------------------
# Intervals: 95 % over seeds (t or bootstrap), else from the within-trial evaluation stderr
# ----------------------------------------------------------------------------------------------------------------
Z95 = 1.959963984540054
N_BOOT = 1000


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion ``p`` of ``n`` samples (not degenerate at 0 or 1)."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (0.0 if p <= 0 else max(0.0, centre - half)), (1.0 if p >= 1 else min(1.0, centre + half))


def is_rate(values: Iterable[float], counts: Iterable[Any]) -> bool:
    """Whether a metric is a share of ``n`` samples (``k/n``): every finite value lies in [0, 1] and times its
    count is a whole number, and some value lies strictly inside (0, 1) (a metric that is always exactly 0, such as
    a divergence of a model from itself, says nothing)."""
    pairs = [(float(v), int(n)) for v, n in zip(values, counts) if n and math.isfinite(float(v))]
    return (any(0 < v < 1 for v, _ in pairs)
            and all(0 <= v <= 1 and abs(v * n - round(v * n)) < 1e-3 for v, n in pairs))


def mean_interval(values: Any, stderr: Any = None, counts: Any = None) -> tuple[float, float, float, int, str]:
    """Mean and 95 % interval of one quantity measured once per seed.

    With two or more finite values the interval is Student's t over seeds (source ``"seeds"``); with one, the
    value ± 1.96 x its evaluation stderr (source ``"eval"``, or ``"none"`` without a stderr).

    ``counts`` (one per value) marks the quantity as a rate ``k/n`` of ``n`` evaluation samples. Then one seed gets
    Wilson's interval instead of ± 1.96 x stderr (a rate of 0/200 has a zero stderr, but not a zero uncertainty), and
    several seeds get the t interval widened, where it is narrower, to the Wilson interval of the pooled counts (three
    seeds at 0/200 each are [0, 0.0063], not [0, 0]), and clipped to [0, 1].

    Returns:
        ``(mean, lo, hi, n, source)``; NaNs and ``n = 0`` when there is no finite value.
    """
    from scipy.stats import t as student_t

    v = np.asarray(values, dtype=float).ravel()
    se = np.full(v.shape, np.nan) if stderr is None else np.asarray(stderr, dtype=float).ravel()
    ns = np.zeros(v.shape) if counts is None else np.asarray([c or 0 for c in counts], dtype=float).ravel()
    keep = np.isfinite(v)
    v, se, ns = v[keep], se[keep], ns[keep]
    if v.size == 0:
        return math.nan, math.nan, math.nan, 0, "none"
    m = float(v.mean())
    pooled = None
    if counts is not None and np.all(ns > 0):
        pooled = wilson(float((v * ns).sum() / ns.sum()), int(round(ns.sum())))
    if v.size >= 2:
        half = float(student_t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
        lo, hi = m - half, m + half
        if pooled is not None:  # and a rate's interval stays inside [0, 1]
            lo, hi = max(0.0, min(lo, pooled[0])), min(1.0, max(hi, pooled[1]))
        return m, lo, hi, int(v.size), "seeds"
    if pooled is not None:
        return m, pooled[0], pooled[1], 1, "eval"
    if math.isfinite(se[0]):
        return m, m - Z95 * float(se[0]), m + Z95 * float(se[0]), 1, "eval"
    return m, math.nan, math.nan, 1, "none"


def replicates(values: Any, stderr: Any, n_boot: int = N_BOOT, seed: int = 0,
               counts: Any = None) -> tuple[np.ndarray, str]:
    """Bootstrap replicates of seed-mean points.

    Args:
        values: [k, s, d] one value per point, seed and coordinate (NaN = missing).
        stderr: [k, s, d] their evaluation stderr (used only with a single seed).
        counts: [k, s, d] for coordinates that are rates ``k/n``, their ``n`` (0 elsewhere); None: no rates.

    Returns:
        ``([n_boot, k, d] replicated seed means, source)``: seeds resampled with replacement when there are two or
        more (``"seeds"``); else each value drawn from a normal with its evaluation stderr (``"eval"``). A rate is
        also redrawn within each (resampled) seed from its Jeffreys posterior ``Beta(k + 1/2, n - k + 1/2)``, so
        that a rate of 0/200 or 864/864 on every seed does not give a zero-width interval (the rates' counterpart of
        :func:`mean_interval`'s Wilson floor).
    """
    v = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    k, s, d = v.shape
    c = None if counts is None else np.nan_to_num(np.asarray(counts, dtype=float), nan=0.0)
    if c is not None and not (c > 0).any():
        c = None
    if s >= 2:
        idx = rng.integers(0, s, size=(n_boot, s))
        draw = v[:, idx, :]  # [k, n_boot, s, d]
        if c is not None:
            draw = _redraw_rates(rng, draw, c[:, idx, :])
        with warnings.catch_warnings():  # an all-NaN resample (a point missing in the drawn seeds) stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            reps = np.nanmean(draw, axis=2)  # [k, n_boot, d]
        return np.moveaxis(reps, 1, 0), "seeds"
    se = np.nan_to_num(np.asarray(stderr, dtype=float), nan=0.0)
    noise = rng.standard_normal((n_boot, k, d))
    reps = v[None, :, 0, :] + noise * se[None, :, 0, :]
    if c is not None:
        reps = _redraw_rates(rng, np.broadcast_to(v[None, :, 0, :], reps.shape).copy(),
                             np.broadcast_to(c[None, :, 0, :], reps.shape), into=reps)
    return reps, "eval"


def _redraw_rates(rng: np.random.Generator, draw: np.ndarray, n: np.ndarray, into: np.ndarray | None = None
                  ) -> np.ndarray:
    """``draw`` with every finite rate (``n > 0``) replaced by a draw from ``Beta(k + 1/2, n - k + 1/2)``, ``k``
    its count; written into ``into`` (default: a copy of ``draw``)."""
    out = draw.copy() if into is None else into
    rate = (n > 0) & np.isfinite(draw)
    kk = np.clip(np.round(draw[rate] * n[rate]), 0, n[rate])
    out[rate] = rng.beta(kk + 0.5, n[rate] - kk + 0.5)
    return out


def percentile_interval(samples: Any) -> tuple[float, float]:
    """2.5 and 97.5 percentiles of the finite samples (NaN, NaN when fewer than 2)."""
    x = np.asarray(samples, dtype=float)
    x = x[np.isfinite(x)]
    if x.size < 2:
        return math.nan, math.nan
    lo, hi = np.percentile(x, [2.5, 97.5])
    return float(lo), float(hi)


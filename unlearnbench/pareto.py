"""Pareto fronts on (unlearning, retention) planes: pure functions on arrays, oriented by ``higher_is_better``.

Every function takes ``maximize = (unlearning_higher_is_better, retention_higher_is_better)`` and works on the
raw metric values; internally an axis to be minimised is negated so that "better" is always "larger".
NaN coordinates mark a missing measurement: such points are on no front and dominate nothing.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = ["pareto_front", "hypervolume_2d", "interpolate_front", "aggregate_seeds", "grid_sort_key"]


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

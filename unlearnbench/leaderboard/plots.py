"""Leaderboard plots (matplotlib Agg through the object API: no pyplot, no global backend switch).

One fixed colour per method on every page and plot (:func:`method_color`); entries of one method with different
settings share its colour and differ in marker. Axes survive outliers: limits come from the points that are not
worse than the task's fixed hypervolume reference, within a wide interquartile fence, always including the
pretrained point and the retrained reference's (where ``unlearnbench attack`` evaluated it); a point beyond them is
drawn as a triangle on the edge (its value is in the points table). Both reference points carry their 95 % interval
(the pretrained model's from its own evaluation, the retrained model's over its seeds; Wilson's for rates).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from unlearnbench.leaderboard.stats import reference
from unlearnbench.pareto import _to_float, pareto_front
from unlearnbench.results import Axis, TaskData, fmt, grid_of, grid_sort_key, oracle_fronts

METHOD_COLORS = {  # tab10/tab20 shades; close relatives share a hue
    "rkl": "#1f77b4", "rkl-fixed": "#6baed6", "rkl-is": "#17becf",
    "fkl": "#2ca02c", "lik": "#9467bd", "lik-is": "#c5b0d5",
    "esd": "#d62728", "salun": "#ff7f0e", "siss": "#8c564b",
}
_EXTRA = ["#e377c2", "#bcbd22", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
          "#e6550d", "#31a354", "#756bb1"]
PRETRAINED_COLOR = "#000000"
RETRAINED_COLOR = "#b8860b"  # the retrained reference (exact unlearning), here and on the robustness plots
MARKERS = ["o", "s", "^", "D", "v", "P", "X"]
FENCE = 10.0  # interquartile ranges beyond the quartiles before a point counts as off-scale (blown-up runs)


def method_color(method: str) -> str:
    """The method's fixed colour; an unknown (plugin) method gets one chosen by a hash of its name."""
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return _EXTRA[int(hashlib.sha256(method.encode()).hexdigest(), 16) % len(_EXTRA)]


def entry_styles(td: TaskData) -> dict[str, tuple[str, str]]:
    """``entry -> (colour, marker)``: the method's colour; a marker per settings variant of that method."""
    out, seen = {}, {}
    for e in td.entries:
        m = td.method_of(e)
        out[e] = (method_color(m), MARKERS[seen.get(m, 0) % len(MARKERS)])
        seen[m] = seen.get(m, 0) + 1
    return out


def plain_text(fig: Any) -> Any:
    """Titles, labels and legends are text from records (entry settings, metric names): a ``$`` in them is shown as it
    is, never parsed as mathtext (where a bad command would end the build). Call before the figure is first laid out;
    tick labels, made when it is drawn, keep their mathtext."""
    texts = [*fig.texts, *(t for leg in fig.legends for t in leg.get_texts())]
    if getattr(fig, "_suptitle", None) is not None:
        texts.append(fig._suptitle)
    for ax in fig.axes:
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        if ax.get_legend() is not None:
            texts += ax.get_legend().get_texts()
    for t in texts:
        if "$" in t.get_text():
            t.set_parse_math(False)
    return fig


def save(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(plain_text(fig))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})


@contextlib.contextmanager
def style():
    """The plots' matplotlib style, and quiet fonts: mathtext tick labels (10^2 on the log axes) look up STIX and
    Computer Modern fallbacks that a bare machine lacks, which matplotlib reports in ~20 WARNING lines per build,
    while DejaVu Sans draws them."""
    import matplotlib.style

    fonts = logging.getLogger("matplotlib.font_manager")
    level = fonts.level
    fonts.setLevel(logging.ERROR)
    try:
        with matplotlib.style.context(["default", {"svg.hashsalt": "unlearnbench", "axes.grid": True,
                                                   "grid.alpha": 0.3, "font.size": 9}]):
            yield
    finally:
        fonts.setLevel(level)


def robust_limits(values: np.ndarray, keep: np.ndarray | None = None, fence: bool = True,
                  k: float = FENCE) -> tuple[float, float]:
    """Axis limits covering ``values`` (within quartiles +- ``k`` IQR if ``fence``) and every ``keep`` value,
    padded 6 %."""
    v = values[np.isfinite(values)]
    if keep is not None:
        keep = keep[np.isfinite(keep)]
    if v.size == 0 and (keep is None or keep.size == 0):
        return 0.0, 1.0
    if fence and v.size:
        q1, q3 = np.percentile(v, [25, 75])
        iqr = q3 - q1 if q3 > q1 else max(float(np.ptp(v)), abs(float(q3)) * 0.1, 1e-12)
        v = v[(v >= q1 - k * iqr) & (v <= q3 + k * iqr)]
    if keep is not None:
        v = np.concatenate([v, keep])
    lo, hi = float(v.min()), float(v.max())
    pad = 0.06 * (hi - lo) if hi > lo else max(abs(lo) * 0.1, 0.05)
    return lo - pad, hi + pad


def limits(pts: np.ndarray, pre: tuple | None, curves: list, ref: tuple | None, maximize: tuple[bool, bool],
           also: tuple = ()):
    """(xlim, ylim): from the useful points (see :func:`useful`; without a fixed reference, an IQR fence instead),
    the pretrained point (and the ``also`` points: references) and the exact curves where they fall inside the
    points' unlearning range."""
    pts = useful(pts, ref, maximize)
    marks = [p for p in (pre, *also) if p is not None]
    pre_arr = np.array(marks, dtype=float) if marks else np.zeros((0, 2))
    xlim = robust_limits(pts[:, 0], pre_arr[:, 0], fence=ref is None)
    cy = [c[(c[:, 0] >= xlim[0]) & (c[:, 0] <= xlim[1]), 1] for _, c in curves]
    keep_y = np.concatenate([pre_arr[:, 1], *cy])
    return xlim, robust_limits(pts[:, 1], keep_y, fence=ref is None)


def exact_curves(td: TaskData, axis: Axis) -> list[tuple[str, np.ndarray]]:
    """The exact-front curve of each formulation recorded for this axis pair, as (formulation, [k, 2] points): one per
    formulation, the newest record's (records made on re-tabulated fronts carry the same curve up to float rounding,
    which would otherwise be drawn, and listed, twice)."""
    seen: dict[str, tuple[str, np.ndarray]] = {}
    ok = [r for r in td.trials if r.get("status") == "ok"]
    for r in sorted(ok, key=lambda r: (str(r.get("created_at", "")), str(r.get("trial_id")))):
        for form, entry in oracle_fronts(r).items():
            if (entry.get("unlearning_metric"), entry.get("retention_metric")) != tuple(axis) or not entry.get("curve"):
                continue
            arr = np.array([[_to_float(a) for a in pt[:2]] for pt in entry["curve"]], dtype=float).reshape(-1, 2)
            seen[form] = (form, arr)
    return [seen[k] for k in sorted(seen)]


def _direction(hib: bool) -> str:
    return "↑ better" if hib else "↓ better"


def _clip_marks(ax: Any, pts: np.ndarray, xlim: tuple, ylim: tuple, color: str) -> int:
    """Off-scale points as triangles on the nearest edge; returns how many there were."""
    n = 0
    for x, y in pts:
        cx, cy = min(max(x, xlim[0]), xlim[1]), min(max(y, ylim[0]), ylim[1])
        if (cx, cy) == (x, y):
            continue
        marker = "<" if x < xlim[0] else ">" if x > xlim[1] else "v" if y < ylim[0] else "^"
        ax.plot([cx], [cy], marker=marker, color=color, ms=8, ls="none", clip_on=False, zorder=4)
        n += 1
    return n


def useful(pts: np.ndarray, ref: tuple[float, float] | None, maximize: tuple[bool, bool]) -> np.ndarray:
    """The points not worse than a fixed hypervolume reference on either axis (all points without one)."""
    if ref is None or pts.shape[0] == 0:
        return pts
    s = np.array([1.0 if m else -1.0 for m in maximize])
    keep = np.all(pts * s >= np.asarray(ref) * s, axis=1)
    return pts[keep] if keep.any() else pts


def _marker_with_interval(ax, coords: list, color: str, **marker) -> None:
    """A reference point (pretrained, retrained) with its 95 % interval on each axis where it has one; ``coords``
    holds ``(mean, lo, hi, ...)`` per axis."""
    x, y = (c[0] for c in coords)
    err = [[max(c[0] - c[1], 0.0) if math.isfinite(c[1]) else 0.0] for c in coords], \
          [[max(c[2] - c[0], 0.0) if math.isfinite(c[2]) else 0.0] for c in coords]
    ax.errorbar([x], [y], xerr=[err[0][0], err[1][0]], yerr=[err[0][1], err[1][1]], fmt="none", ecolor=color,
                elinewidth=1.0, capsize=3, zorder=4)
    ax.plot([x], [y], color=color, ls="none", zorder=5, **marker)


ZOOM_SHARE = 0.25  # a second panel zooms on the methods' points when they span less than this share of an axis
ZOOM_FENCE = 1.5  # Tukey's fence: points beyond it are left to the full view (drawn as edge triangles in the zoom)


def zoom_limits(pts: np.ndarray, xlim: tuple, ylim: tuple) -> tuple[tuple, tuple] | None:
    """Limits of a zoom on the bulk of the methods' points (quartiles +- 1.5 IQR, within the full view's limits), or
    None when the full view already shows them at a readable scale (they span at least ZOOM_SHARE of both axes)."""
    pts = pts[np.all(np.isfinite(pts), axis=1)]
    if pts.shape[0] < 3:
        return None
    zoom = []
    for i, full in enumerate((xlim, ylim)):  # never wider than the full view on either axis
        z = robust_limits(pts[:, i], fence=True, k=ZOOM_FENCE)
        lo, hi = max(z[0], full[0]), min(z[1], full[1])
        zoom.append((lo, hi) if lo < hi else full)
    zx, zy = zoom
    share = min((zx[1] - zx[0]) / max(xlim[1] - xlim[0], 1e-300), (zy[1] - zy[0]) / max(ylim[1] - ylim[0], 1e-300))
    return (zx, zy) if share < ZOOM_SHARE else None


def _panel(ax: Any, td: TaskData, axis: Axis, series: list, curves: list, lims: tuple,
           styles: dict) -> tuple[list, int]:
    """One view of the fronts: points with intervals, fronts, exact curves and the reference points (pretrained,
    retrained). Returns the legend handles and how many points fell off-scale."""
    from matplotlib.lines import Line2D

    mx = td.maximize(axis)
    xlim, ylim = lims
    handles, off = [], 0
    for entry, ps in series:
        c, mk = styles[entry]
        err = [np.nan_to_num(np.abs(ps.mean - ps.lo), nan=0.0), np.nan_to_num(np.abs(ps.hi - ps.mean), nan=0.0)]
        ax.errorbar(ps.mean[:, 0], ps.mean[:, 1], xerr=[err[0][:, 0], err[1][:, 0]],
                    yerr=[err[0][:, 1], err[1][:, 1]], fmt=mk, ms=5, mfc="white", mec=c, ecolor=c,
                    elinewidth=0.9, capsize=2.5, zorder=2)
        front = ps.mean[pareto_front(ps.mean, mx)]
        ax.plot(front[:, 0], front[:, 1], "-", marker=mk, color=c, ms=5, lw=1.6, zorder=3)
        for (x, y), g in zip(ps.mean, ps.grid):
            if xlim[0] <= x <= xlim[1] and ylim[0] <= y <= ylim[1]:
                ax.annotate(fmt(g), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6.5, color=c,
                            annotation_clip=True)
        off += _clip_marks(ax, ps.mean, xlim, ylim, c)
        n = int(ps.n.max()) if ps.n.size else 0
        handles.append(Line2D([], [], color=c, marker=mk, ms=5, lw=1.6, label=f"{entry} ({n} seed{'s' * (n != 1)})"))
    for i, (form, arr) in enumerate(curves):
        arr = arr[np.argsort(arr[:, 0], kind="stable")]
        ls = ["--", ":", "-.", (0, (5, 1, 1, 1))][i % 4]
        ax.plot(arr[:, 0], arr[:, 1], linestyle=ls, color="#555555", lw=1.1, zorder=1)
        kind = "fixed-weight curve" if form.startswith(("esd", "equal")) else "optimal front"
        handles.append(Line2D([], [], color="#555555", linestyle=ls, lw=1.1, label=f"exact {kind} ({form})"))
    if td.pretrained(axis) is not None:
        _marker_with_interval(ax, [td.pretrained_value(m) for m in axis], PRETRAINED_COLOR, marker="*", ms=13)
        handles.append(Line2D([], [], marker="*", ms=11, color=PRETRAINED_COLOR, ls="none", label="pretrained"))
    if td.reference_point("retrained", axis) is not None:
        n = len(td.refs.get("retrained", []))
        _marker_with_interval(ax, [td.reference_value("retrained", m) for m in axis], RETRAINED_COLOR, marker="D",
                              ms=8, mec="black", mew=0.6)
        handles.append(Line2D([], [], marker="D", ms=7, color=RETRAINED_COLOR, mec="black", mew=0.6, ls="none",
                              label=f"retrained without the forget set ({n} seed{'s' * (n != 1)})"))
    anchor = td.anchors.get(axis[0])
    if anchor is not None and xlim[0] <= anchor.retrained <= xlim[1]:  # the target: past it earns nothing
        ax.axvline(anchor.retrained, color=RETRAINED_COLOR, linestyle=(0, (2, 2)), lw=1.0, zorder=0)
        handles.append(Line2D([], [], color=RETRAINED_COLOR, linestyle=(0, (2, 2)), lw=1.0,
                              label="retrained level (past it earns nothing)"))
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel(f"{axis[0]} ({_direction(mx[0])})")
    ax.set_ylabel(f"{axis[1]} ({_direction(mx[1])})")
    return handles, off


def plot_axis(td: TaskData, axis: Axis, path: Path) -> bool:
    """Every entry's seed-mean points with 95 % intervals, its front, the pretrained point and exact fronts; and a
    second panel zoomed on the methods' points where the full view crowds them into a corner."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    mx = td.maximize(axis)
    series = [(e, td.points(e, axis)) for e in td.entries]
    series = [(e, ps) for e, ps in series if ps.mean.shape[0]]
    curves = exact_curves(td, axis)
    pre = td.pretrained(axis)
    if not series and not curves:
        return False
    styles = entry_styles(td)
    allpts = np.concatenate([ps.mean for _, ps in series]) if series else np.zeros((0, 2))
    ref, ref_src = reference(td, axis)
    retrained = td.reference_point("retrained", axis)
    full = limits(allpts, pre, curves, ref if ref_src == "fixed" else None, mx, also=(retrained,))
    zoom = zoom_limits(allpts, *full)
    with style():
        fig = Figure(figsize=(11.6 if zoom else 6.6, 4.6))
        axes = fig.subplots(1, 2 if zoom else 1, squeeze=False)[0]
        handles, off = _panel(axes[0], td, axis, series, curves, full, styles)
        sources = {ps.source for _, ps in series}
        how = "95 % t-intervals over seeds" if sources == {"seeds"} else \
            "95 % intervals: over seeds, or from the evaluation stderr where one seed"
        if any(td.rates.get(m) for m in axis):
            how += " (rates: at least Wilson's k/n)"
        primary = " (primary)" if td.axes and tuple(axis) == tuple(td.axes[0]) else ""
        title = f"{td.name}: {axis[1]} vs {axis[0]}{primary}\nseed means, {how}; labels = grid value"
        if zoom:
            fig.suptitle(title, fontsize=9.5, y=1.06)
            beyond = "beyond the hypervolume reference" if ref_src == "fixed" else "outliers"
            axes[0].set_title(f"full view; {off} {beyond}: edge triangles" if off else "full view", fontsize=9)
            _, zoff = _panel(axes[1], td, axis, series, curves, zoom, styles)
            axes[1].set_title(f"zoom on the bulk of the points (quartiles ± {ZOOM_FENCE:g} IQR)"
                              + (f"; {zoff} beyond it: triangles on the edge" if zoff else ""), fontsize=9)
        else:
            axes[0].set_title(title, fontsize=9)
        if off:
            handles.append(Line2D([], [], marker="^", color="grey", ls="none", ms=7,
                                  label=f"{off} point(s) off-scale (values in the points table)"))
        axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
        save(fig, path)
    return True


def duals_of(r: dict) -> tuple[np.ndarray, np.ndarray]:
    """(steps [T], lambdas [T, m]) from train.duals = [[step, [lambda_i...]], ...]."""
    entries = (r.get("train") or {}).get("duals") or []
    steps, lams = [], []
    for e in entries:
        if isinstance(e, (list, tuple)) and len(e) >= 2:
            steps.append(_to_float(e[0]))
            lams.append([_to_float(v) for v in (e[1] if isinstance(e[1], (list, tuple)) else [e[1]])])
    if not steps:
        return np.zeros(0), np.zeros((0, 0))
    arr = np.full((len(lams), max(len(x) for x in lams)), np.nan)
    for i, x in enumerate(lams):
        arr[i, : len(x)] = x
    return np.array(steps), arr


def plot_duals(td: TaskData, path: Path) -> bool:
    """Dual variables against steps, one panel per constrained entry; colour = grid value, style = constraint."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    ok = [r for r in td.trials if r.get("status") == "ok" and duals_of(r)[0].size]
    entries = sorted({r["_entry"] for r in ok})
    if not entries:
        return False
    styles = ["-", "--", ":", "-."]
    with style():
        fig = Figure(figsize=(6.6, 2.7 * len(entries)))
        for ax, entry in zip(fig.subplots(len(entries), 1, squeeze=False)[:, 0], entries):
            recs = [r for r in ok if r["_entry"] == entry]
            gvals = sorted({json.dumps(grid_of(r).get("value")) for r in recs}, key=lambda g: grid_sort_key(json.loads(g)))
            gcol = {g: colormaps["viridis"](0.9 * i / max(1, len(gvals) - 1)) for i, g in enumerate(gvals)}
            n_con = 0
            for r in recs:
                steps, lam = duals_of(r)
                n_con = max(n_con, lam.shape[1])
                for j in range(lam.shape[1]):
                    ax.plot(steps, lam[:, j], color=gcol[json.dumps(grid_of(r).get("value"))],
                            linestyle=styles[j % len(styles)], lw=1.1, alpha=0.85)
            gname = next((grid_of(r).get("param") for r in recs if grid_of(r)), "grid")
            handles = [Line2D([], [], color=gcol[g], lw=2, label=f"{gname}={fmt(json.loads(g))}") for g in gvals]
            handles += [Line2D([], [], color="black", linestyle=styles[j % len(styles)], lw=1.1, label=f"λ_{j + 1}")
                        for j in range(n_con)]
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
            ax.set_title(f"{td.name}: {entry} dual variables (all seeds)", fontsize=9, color=method_color(
                td.method_of(entry)))
            ax.set_ylabel("λ (dual variable)")
            ax.set_xlabel("training step")
        plain_text(fig).tight_layout()
        save(fig, path)
    return True

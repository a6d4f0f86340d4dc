"""Leaderboards from trial records: per-task CSVs, Pareto plots and one static HTML page.

Reads records only (never re-runs anything). The newest record per (task, trial_id) counts, so a resumed trial
supersedes its failed attempt. Output for the same records is byte-identical: everything is sorted, floats are
formatted with ``%.6g``, nothing carries a timestamp or an absolute path, and PNGs are written by Agg with the
``Software`` metadata removed.

Layout of ``out_dir``::

    index.html                 every task's table, plots, samples and the failed trials (no JS, relative links)
    claims.txt                 the paper's three claims checked on these records (see unlearnbench.claims)
    <task>.csv                 one row per method: rank, hypervolume per axis pair, retention at fixed levels, ...
    <task>_points.csv          one row per method x grid value, mean and stderr over seeds of every metric
    plots/<task>__<u>__<r>.png one per axis pair: points with error bars, per-method fronts, exact fronts
    plots/<task>__duals.png    dual variables against steps for the constrained methods
    samples/<task>/<trial>.png copies of the sample grids of image tasks
"""
from __future__ import annotations

import csv
import html
import io
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from unlearnbench.pareto import _to_float, aggregate_seeds, grid_sort_key, hypervolume_2d, interpolate_front, pareto_front
from unlearnbench.records import iter_latest, read_records

logger = logging.getLogger(__name__)

Axis = tuple[str, str]

# Hypervolume reference points, per task and axis pair (unlearning_metric, retention_metric) -> (u_ref, r_ref).
# Each is meant to sit at the "useless" end of both axes so that every sensible point beats it.
# TO BE CONFIRMED against real runs (the scales below are educated guesses; a point worse than the reference on
# an axis adds nothing to the hypervolume, and build_leaderboard warns when no method beats a reference at all).
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
        # KID on kept prompts; 0.1 is a guess at "clearly broken" for the digits feature extractor.
        ("acc_forget", "kid_kept"): (1.0, 0.1),
    },
    "digits-data": {
        # regeneration rate of the memorised image, 1 = always regenerated; KID guess as above.
        ("regen_rate", "kid_retain"): (1.0, 0.1),
        # bits/dim: 0 is the floor for the forget image; 8 bpd is a uniform model over 256 levels on retained data.
        ("forget_bpd", "retain_bpd"): (0.0, 8.0),
    },
}

# Unlearning levels at which each method's retention is read off its front (interpolated); TO BE CONFIRMED
# against real runs. Metrics not listed get three levels spread over the observed range (25/50/75 %).
UNLEARNING_LEVELS: dict[str, dict[str, list[float]]] = {
    "gmm-concept": {"kl_concept_min": [20.0, 25.0, 30.0, 35.0], "forgotten_mass": [0.12, 0.1, 0.08]},
    "gmm-data": {"forget_kl_min": [1.6, 1.8, 2.0, 2.5], "forget_kl_gain_min": [0.1, 0.3, 0.5]},
    "digits-concept": {"acc_forget": [0.5, 0.2, 0.1]},
    "digits-data": {"regen_rate": [0.5, 0.1, 0.01]},
}

# Axes used when records do not carry task.axes (older records): the reference-point keys, primary first.
DEFAULT_AXES: dict[str, list[Axis]] = {task: list(refs) for task, refs in REFERENCE_POINTS.items()}

# env keys that are not package versions (or have their own column).
_NOT_PACKAGES = {"unlearnbench", "git_sha", "platform", "gpu"}


# --------------------------------------------------------------------------------------------------------------
# Records -> per-task data (also used by unlearnbench.claims)
# --------------------------------------------------------------------------------------------------------------
_num = _to_float  # numbers from records: None, booleans and junk become NaN


def _task_name(r: dict) -> str:
    """Leaderboard key: the task name, suffixed with the forget set when it is not the task's default one (fronts of
    different forget sets are different experiments)."""
    t = r.get("task")
    if isinstance(t, dict) and t.get("name"):
        if t.get("forget_default") is False and t.get("forget_set"):
            return f"{t['name']}-{t['forget_set']}"
        return str(t["name"])
    return str(t) if isinstance(t, str) and t else "unknown"


def _lookup(table: dict, name: str) -> Any:
    """A per-task table entry for a leaderboard key, falling back from ``task-forgetset`` to ``task``."""
    if name in table:
        return table[name]
    return table.get(name.rsplit("-", 1)[0], {})


def _grid(r: dict) -> dict:
    g = r.get("grid")
    return g if isinstance(g, dict) else {}


def _record_key(r: dict) -> tuple:
    return (str(r.get("method")), grid_sort_key(_grid(r).get("value")), grid_sort_key(r.get("seed")),
            str(r.get("trial_id")), str(r.get("run_id")))


def oracle_fronts(record: dict) -> dict[str, dict]:
    """The record's exact-front entries by formulation: ``oracle.fronts`` or the flat single-formulation form."""
    o = record.get("oracle")
    if not isinstance(o, dict):
        return {}
    if isinstance(o.get("fronts"), dict):
        return {str(k): v for k, v in o["fronts"].items() if isinstance(v, dict)}
    if o.get("formulation"):
        entry = dict(o)
        entry.setdefault("curve", o.get("front"))
        return {str(o["formulation"]): entry}
    return {}


@dataclass
class TaskData:
    """The latest records of one task, split and aggregated over seeds."""

    name: str
    kind: str | None
    axes: list[Axis]
    higher_is_better: dict[str, bool]
    ok: list[dict]
    failed: list[dict]
    methods: list[str]
    metric_names: list[str]
    points: list[dict] = field(default_factory=list)  # aggregate_seeds rows: method, grid_value, n, <metric>...

    def maximize(self, axis: Axis) -> tuple[bool, bool]:
        return (self.higher_is_better.get(axis[0], False), self.higher_is_better.get(axis[1], False))

    def method_points(self, method: str, axis: Axis) -> tuple[np.ndarray, np.ndarray, list]:
        """Seed-mean points of one method on one axis pair: ([k, 2] values, [k, 2] stderr, [k] grid values)."""
        rows = [p for p in self.points if p["method"] == method]
        rows = [p for p in rows if math.isfinite(p.get(axis[0], math.nan)) and math.isfinite(p.get(axis[1], math.nan))]
        vals = np.array([[p[axis[0]], p[axis[1]]] for p in rows], dtype=float).reshape(-1, 2)
        se = np.array([[p.get(f"{axis[0]}_stderr", math.nan), p.get(f"{axis[1]}_stderr", math.nan)] for p in rows],
                      dtype=float).reshape(-1, 2)
        return vals, se, [p["grid_value"] for p in rows]

    def all_points(self, axis: Axis) -> np.ndarray:
        pts = [self.method_points(m, axis)[0] for m in self.methods]
        return np.concatenate(pts) if pts else np.zeros((0, 2))

    def reference(self, axis: Axis) -> tuple[tuple[float, float] | None, str]:
        """The hypervolume reference point and where it comes from ("fixed" or "worst observed")."""
        fixed = _lookup(REFERENCE_POINTS, self.name).get(tuple(axis))
        if fixed is not None:
            return (float(fixed[0]), float(fixed[1])), "fixed"
        pts = self.all_points(axis)
        if pts.shape[0] == 0:
            return None, "none (no data)"
        mx = self.maximize(axis)
        worst = tuple(float(pts[:, i].min() if mx[i] else pts[:, i].max()) for i in range(2))
        return worst, "worst observed"

    def levels(self, axis: Axis) -> tuple[list[float], str]:
        """Unlearning levels for retention-at-level columns and where they come from."""
        fixed = _lookup(UNLEARNING_LEVELS, self.name).get(axis[0])
        if fixed is not None:
            return sorted(float(v) for v in fixed), "fixed"
        u = self.all_points(axis)[:, 0]
        if u.size == 0:
            return [], "none (no data)"
        lo, hi = float(u.min()), float(u.max())
        if hi == lo:
            return [float(f"{lo:.3g}")], "observed"
        return sorted({float(f"{lo + (hi - lo) * q:.3g}") for q in (0.25, 0.5, 0.75)}), "observed (25/50/75 % of range)"

    def exact_curves(self, axis: Axis) -> list[tuple[str, np.ndarray]]:
        """Distinct exact-front curves drawn on this axis pair, as (formulation, [k, 2] points)."""
        seen: dict[tuple, tuple[str, np.ndarray]] = {}
        for r in self.ok:
            for form, entry in oracle_fronts(r).items():
                if (entry.get("unlearning_metric"), entry.get("retention_metric")) != tuple(axis):
                    continue
                curve = entry.get("curve")
                if not curve:
                    continue
                arr = np.array([[_num(a) for a in pt[:2]] for pt in curve], dtype=float).reshape(-1, 2)
                seen.setdefault((form, arr.tobytes()), (form, arr))
        return [seen[k] for k in sorted(seen)]


def collect_tasks(records: Iterable[dict]) -> dict[str, TaskData]:
    """Group records by task name, keep the newest per trial_id, aggregate ok trials over seeds."""
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(_task_name(r), []).append(r)
    out: dict[str, TaskData] = {}
    for name in sorted(by_task):
        latest = sorted(iter_latest(by_task[name]), key=_record_key)
        ok = [r for r in latest if r.get("status") == "ok"]
        failed = [r for r in latest if r.get("status") != "ok"]
        hib: dict[str, bool] = {}
        roles: dict[str, str] = {}
        for r in ok:
            for m, v in (r.get("metrics") or {}).items():
                if not isinstance(v, dict):
                    continue
                if "higher_is_better" in v and v["higher_is_better"] is not None:
                    flag = bool(v["higher_is_better"])
                    if hib.setdefault(m, flag) != flag:
                        logger.warning("task %s: records disagree on higher_is_better of %s; using %s",
                                       name, m, hib[m])
                roles.setdefault(m, str(v.get("role") or "info"))
        metric_names = sorted({m for r in ok for m in (r.get("metrics") or {})})
        axes = _task_axes(name, latest, roles)
        for a in axes:
            for m in a:
                if m in metric_names and m not in hib:
                    logger.warning("task %s: metric %s has no higher_is_better; assuming lower is better", name, m)
        rows = []
        for r in ok:
            row: dict[str, Any] = {"method": str(r.get("method")), "grid_value": _grid(r).get("value"),
                                   "seed": r.get("seed")}
            for m in metric_names:
                v = (r.get("metrics") or {}).get(m)
                row[m] = _num(v.get("value")) if isinstance(v, dict) else _num(v)
            rows.append(row)
        kind = next((r["task"].get("kind") for r in reversed(latest) if isinstance(r.get("task"), dict)), None)
        methods = sorted({str(r.get("method")) for r in latest})
        out[name] = TaskData(name=name, kind=kind, axes=axes, higher_is_better=hib, ok=ok, failed=failed,
                             methods=methods, metric_names=metric_names,
                             points=aggregate_seeds(rows, metrics=metric_names))
    return out


def _task_axes(name: str, latest: list[dict], roles: dict[str, str]) -> list[Axis]:
    """task.axes of the newest record that has them; else the known defaults; else unlearning x retention roles."""
    with_axes = [r for r in latest if isinstance(r.get("task"), dict) and r["task"].get("axes")]
    if with_axes:
        newest = max(with_axes, key=lambda r: (str(r.get("created_at", "")), str(r.get("trial_id"))))
        axes = [(str(a[0]), str(a[1])) for a in newest["task"]["axes"]]
        if any([(str(a[0]), str(a[1])) for a in r["task"]["axes"]] != axes for r in with_axes):
            logger.warning("task %s: records carry different axes; using the newest record's %s", name, axes)
        return axes
    if _lookup(DEFAULT_AXES, name):
        return list(_lookup(DEFAULT_AXES, name))
    unl = sorted(m for m, role in roles.items() if role == "unlearning")
    ret = sorted(m for m, role in roles.items() if role == "retention")
    return [(u, r) for u in unl for r in ret]


# --------------------------------------------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------------------------------------------
def fmt(x: Any) -> str:
    """Fixed formatting for CSV/HTML cells: %.6g floats, blank for None/NaN."""
    if x is None:
        return ""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return f"{float(x):.6g}" if math.isfinite(x) else ""
    return str(x)


def axis_label(axis: Axis) -> str:
    return f"{axis[0]}/{axis[1]}"


def _slug(s: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(s)).strip("_") or "_"


def _csv_text(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _set(values: Iterable[Any]) -> str:
    return ";".join(sorted({str(v) for v in values if v not in (None, "")}))


def _direction(hib: bool) -> str:
    return "↑ better" if hib else "↓ better"


# --------------------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------------------
def _method_row_values(td: TaskData, method: str) -> dict[str, Any]:
    ok = [r for r in td.ok if str(r.get("method")) == method]
    failed = [r for r in td.failed if str(r.get("method")) == method]
    vals: dict[str, Any] = {"method": method, "n_ok": len(ok), "n_failed": len(failed),
                            "n_points": sum(1 for p in td.points if p["method"] == method)}
    for axis in td.axes:
        pts = td.method_points(method, axis)[0]
        ref, _ = td.reference(axis)
        mx = td.maximize(axis)
        vals[f"hv[{axis_label(axis)}]"] = (hypervolume_2d(pts, ref, mx) if ref is not None and pts.shape[0]
                                           else math.nan)
        levels, _ = td.levels(axis)
        front = pts[pareto_front(pts, mx)] if pts.shape[0] else pts
        for lv, rv in zip(levels, interpolate_front(front, levels)):
            vals[f"{axis[1]}@{axis[0]}={fmt(lv)}"] = float(rv)
    met = [r.get("train", {}).get("constraints_met") for r in ok if isinstance(r.get("train"), dict)]
    met = [bool(m) for m in met if m is not None]
    vals["constraints_met_share"] = (sum(met) / len(met)) if met else None
    for form in _formulations(td):
        gaps = [_num(oracle_fronts(r).get(form, {}).get("gap")) for r in ok]
        gaps = [g for g in gaps if math.isfinite(g)]
        vals[f"oracle_gap[{form}]"] = float(np.mean(gaps)) if gaps else None
    steps = [_num((r.get("train") or {}).get("steps")) for r in ok]
    steps = [s for s in steps if math.isfinite(s)]
    walls = [_wall(r) for r in ok]
    walls = [w for w in walls if math.isfinite(w)]
    vals["mean_steps"] = float(np.mean(steps)) if steps else None
    vals["mean_total_s"] = float(np.mean(walls)) if walls else None
    everything = ok + failed
    envs = [r.get("env") or {} for r in everything]
    vals["unlearnbench"] = _set(e.get("unlearnbench") for e in envs)
    vals["git_sha"] = _set(e.get("git_sha") for e in envs)
    vals["packages"] = _set(f"{k}={v}" for e in envs for k, v in e.items() if k not in _NOT_PACKAGES and v)
    vals["config_hashes"] = _set(r.get("config_hash") for r in everything)
    return vals


def _wall(r: dict) -> float:
    t = r.get("timing") or {}
    w = _num(t.get("total_s"))
    return w if math.isfinite(w) else _num((r.get("train") or {}).get("wall_s"))


def _formulations(td: TaskData) -> list[str]:
    return sorted({f for r in td.ok for f in oracle_fronts(r)})


def leaderboard_table(td: TaskData) -> tuple[list[str], list[list[str]]]:
    """The ``<task>.csv`` table: header and formatted rows, ranked by hypervolume on the primary axis pair."""
    header = ["rank", "method", "n_ok", "n_failed", "n_points"]
    for axis in td.axes:
        header.append(f"hv[{axis_label(axis)}]")
    for axis in td.axes:
        header.append(f"hv_ref[{axis_label(axis)}]")
    for axis in td.axes:
        levels, _ = td.levels(axis)
        header += [f"{axis[1]}@{axis[0]}={fmt(lv)}" for lv in levels]
    header.append("constraints_met_share")
    header += [f"oracle_gap[{f}]" for f in _formulations(td)]
    header += ["mean_steps", "mean_total_s", "unlearnbench", "git_sha", "packages", "config_hashes"]

    rows = [_method_row_values(td, m) for m in td.methods]
    primary = f"hv[{axis_label(td.axes[0])}]" if td.axes else None

    def hv_of(v: dict) -> float:
        return v.get(primary, math.nan) if primary else math.nan

    rows.sort(key=lambda v: (not math.isfinite(hv_of(v)), -hv_of(v) if math.isfinite(hv_of(v)) else 0.0,
                             v["method"]))
    rank, prev = 0, None
    for i, v in enumerate(rows):
        h = hv_of(v)
        if not math.isfinite(h):
            v["rank"] = None
            continue
        if h != prev:
            rank, prev = i + 1, h
        v["rank"] = rank
    refs = {}
    for axis in td.axes:
        ref, src = td.reference(axis)
        refs[f"hv_ref[{axis_label(axis)}]"] = (f"{src} ({fmt(ref[0])}, {fmt(ref[1])})" if ref is not None else src)
    out = []
    for v in rows:
        v.update(refs)
        out.append([fmt(v.get(h)) for h in header])
    return header, out


def points_table(td: TaskData) -> tuple[list[str], list[list[str]]]:
    """The ``<task>_points.csv`` table: method x grid value, mean and stderr over seeds of each metric."""
    header = ["method", "grid_name", "grid_param", "grid_value", "n_seeds", "n_failed"]
    header += [f"front[{axis_label(a)}]" for a in td.axes]
    for m in td.metric_names:
        header += [f"{m}_mean", f"{m}_stderr"]
    on_front: dict[tuple, set] = {}
    for a in td.axes:
        for method in td.methods:
            pts, _, gvals = td.method_points(method, a)
            for i in pareto_front(pts, td.maximize(a)):
                on_front.setdefault((method, a), set()).add(repr(gvals[i]))
    grid_meta: dict[str, tuple[str, str]] = {}
    for r in td.ok + td.failed:
        g = _grid(r)
        grid_meta.setdefault(str(r.get("method")), (str(g.get("name") or ""), str(g.get("param") or "")))
    failed_at: dict[tuple, int] = {}
    for r in td.failed:
        key = (str(r.get("method")), repr(_grid(r).get("value")))
        failed_at[key] = failed_at.get(key, 0) + 1
    groups = {(p["method"], repr(p["grid_value"])): p for p in td.points}
    for r in td.failed:  # grid values where every seed failed still get a row
        key = (str(r.get("method")), repr(_grid(r).get("value")))
        groups.setdefault(key, {"method": key[0], "grid_value": _grid(r).get("value"), "n": 0})
    rows = []
    for key in sorted(groups, key=lambda k: (k[0], grid_sort_key(groups[k]["grid_value"]))):
        p = groups[key]
        gname, gparam = grid_meta.get(p["method"], ("", ""))
        row = [p["method"], gname, gparam, fmt(p["grid_value"]), fmt(p["n"]), fmt(failed_at.get(key, 0))]
        for a in td.axes:
            has_point = all(math.isfinite(p.get(m, math.nan)) for m in a)
            row.append(("1" if key[1] in on_front.get((p["method"], a), set()) else "0") if has_point else "")
        for m in td.metric_names:
            row += [fmt(p.get(m)), fmt(p.get(f"{m}_stderr"))]
        rows.append(row)
    return header, rows


# --------------------------------------------------------------------------------------------------------------
# Plots (matplotlib Agg through the object API: no pyplot, no global backend switch)
# --------------------------------------------------------------------------------------------------------------
def _method_colors(methods: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(sorted(methods))}


def _save(fig: Any, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})


def _style():
    import matplotlib.style

    return matplotlib.style.context(["default", {"svg.hashsalt": "unlearnbench", "axes.grid": True,
                                                 "grid.alpha": 0.3, "font.size": 9}])


def plot_axis(td: TaskData, axis: Axis, path: Path, colors: dict[str, Any]) -> bool:
    """Every method's seed-mean points (error bars = stderr over seeds), its front, and exact fronts. False if empty."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    mx = td.maximize(axis)
    series = [(m, *td.method_points(m, axis)) for m in td.methods]
    series = [s for s in series if s[1].shape[0]]
    curves = td.exact_curves(axis)
    if not series and not curves:
        return False
    with _style():
        fig = Figure(figsize=(6.4, 4.6))
        ax = fig.add_subplot()
        handles = []
        any_off_front = False
        for method, pts, se, gvals in series:
            c = colors[method]
            err = np.nan_to_num(se, nan=0.0)
            ax.errorbar(pts[:, 0], pts[:, 1], xerr=err[:, 0], yerr=err[:, 1], fmt="o", ms=5, mfc="white", mec=c,
                        ecolor=c, elinewidth=0.9, capsize=2.5, zorder=2)
            idx = pareto_front(pts, mx)
            any_off_front |= len(idx) < pts.shape[0]
            front = pts[idx]
            ax.plot(front[:, 0], front[:, 1], "-o", color=c, ms=5, lw=1.6, zorder=3)
            for (x, y), g in zip(pts, gvals):
                ax.annotate(fmt(g), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=6.5, color=c)
            handles.append(Line2D([], [], color=c, marker="o", ms=5, lw=1.6, label=method))
        styles = ["--", ":", "-.", (0, (5, 1, 1, 1))]
        for i, (form, arr) in enumerate(curves):
            arr = arr[np.argsort(arr[:, 0], kind="stable")]
            ls = styles[i % len(styles)]
            ax.plot(arr[:, 0], arr[:, 1], linestyle=ls, color="black", lw=1.1, zorder=1)
            handles.append(Line2D([], [], color="black", linestyle=ls, lw=1.1, label=(f"exact fixed-weight curve ({form})" if form.startswith(("esd", "equal"))
                                          else f"exact optimal front ({form})")))
        if any_off_front:
            handles.append(Line2D([], [], color="grey", marker="o", mfc="white", ls="none", ms=5,
                                  label="off-front point"))
        ax.set_xlabel(f"{axis[0]} ({_direction(mx[0])})")
        ax.set_ylabel(f"{axis[1]} ({_direction(mx[1])})")
        primary = " (primary)" if td.axes and axis == td.axes[0] else ""
        ax.set_title(f"{td.name}: {axis[1]} vs {axis[0]}{primary}\nseed means ± stderr; labels = grid value",
                     fontsize=9)
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
        _save(fig, path)
    return True


def _duals_of(r: dict) -> tuple[np.ndarray, np.ndarray]:
    """(steps [T], lambdas [T, m]) from train.duals = [[step, [lambda_i...]], ...]."""
    entries = (r.get("train") or {}).get("duals") or []
    steps, lams = [], []
    for e in entries:
        if not isinstance(e, (list, tuple)) or len(e) < 2:
            continue
        lam = e[1] if isinstance(e[1], (list, tuple)) else [e[1]]
        steps.append(_num(e[0]))
        lams.append([_num(v) for v in lam])
    if not steps:
        return np.zeros(0), np.zeros((0, 0))
    m = max(len(l) for l in lams)
    arr = np.full((len(lams), m), np.nan)
    for i, l in enumerate(lams):
        arr[i, : len(l)] = l
    return np.array(steps), arr


def constrained_methods(td: TaskData) -> list[str]:
    return sorted({str(r.get("method")) for r in td.ok if _duals_of(r)[0].size})


def plot_duals(td: TaskData, path: Path) -> bool:
    """Dual variables against steps, one panel per constrained method; colour = grid value, style = constraint."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    methods = constrained_methods(td)
    if not methods:
        return False
    styles = ["-", "--", ":", "-."]
    with _style():
        fig = Figure(figsize=(6.4, 2.7 * len(methods)))
        axes = fig.subplots(len(methods), 1, squeeze=False)[:, 0]
        for ax, method in zip(axes, methods):
            recs = [r for r in td.ok if str(r.get("method")) == method and _duals_of(r)[0].size]
            gvals = sorted({repr(_grid(r).get("value")): _grid(r).get("value") for r in recs}.values(),
                           key=grid_sort_key)
            cmap = colormaps["viridis"]
            gcol = {repr(g): cmap(0.9 * i / max(1, len(gvals) - 1)) for i, g in enumerate(gvals)}
            n_con = 0
            for r in recs:
                steps, lam = _duals_of(r)
                n_con = max(n_con, lam.shape[1])
                for j in range(lam.shape[1]):
                    ax.plot(steps, lam[:, j], color=gcol[repr(_grid(r).get("value"))],
                            linestyle=styles[j % len(styles)], lw=1.1, alpha=0.85)
            gname = next((_grid(r).get("param") or _grid(r).get("name") for r in recs if _grid(r)), "grid")
            handles = [Line2D([], [], color=gcol[repr(g)], lw=2, label=f"{gname}={fmt(g)}") for g in gvals]
            handles += [Line2D([], [], color="black", linestyle=styles[j % len(styles)], lw=1.1,
                               label=f"λ_{j + 1}") for j in range(n_con)]
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
            ax.set_title(f"{td.name}: {method} dual variables (all seeds)", fontsize=9)
            ax.set_ylabel("λ (dual variable)")
            ax.set_xlabel("training step")
        fig.tight_layout()
        _save(fig, path)
    return True


# --------------------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------------------
_CSS = """body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:0.5em 0}
th,td{border:1px solid #ccc;padding:2px 5px;text-align:right}
th{background:#f0f0f0}td.l,th.l{text-align:left}.scroll{overflow-x:auto}pre{white-space:pre-wrap;margin:0}
figure{display:inline-block;margin:0.5em}img.plot{max-width:100%}img.sample{width:160px;image-rendering:pixelated}
.holds{color:#070}.fails{color:#a00}.nodata{color:#777}"""


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _html_table(header: list[str], rows: list[list[str]], left: Sequence[str] = ()) -> str:
    def cls(h: str) -> str:
        return ' class="l"' if h in left else ""

    out = ['<div class="scroll"><table>', "<tr>" + "".join(f"<th{cls(h)}>{_e(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td{cls(h)}>{_e(v)}</td>" for h, v in zip(header, row)) + "</tr>")
    out.append("</table></div>")
    return "\n".join(out)


def _failed_rows(failed: list[dict]) -> list[list[str]]:
    return [[_task_name(r), str(r.get("trial_id")), str(r.get("method")), fmt(_grid(r).get("value")),
             fmt(r.get("seed")), str(r.get("run_id")), str(r.get("error") or "")] for r in failed]


def _claims_html(claims: list) -> str:
    out = ["<table>", '<tr><th class="l">claim</th><th class="l">verdict</th><th class="l">evidence</th></tr>']
    for c in claims:
        css = {"holds": "holds", "does not hold": "fails"}.get(c.verdict, "nodata")
        ev = "\n".join(c.evidence_lines()) or "-"
        out.append(f'<tr><td class="l">{_e(c.statement)}</td><td class="l {css}"><b>{_e(c.verdict)}</b></td>'
                   f'<td class="l"><pre>{_e(ev)}</pre></td></tr>')
    out.append("</table>")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------
def build_leaderboard(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> dict:
    """Rebuild the leaderboards of every task found in the records of ``run_dirs``.

    Args:
        run_dirs: run directories (searched recursively for records.jsonl) or records.jsonl files.
        out_dir: where the CSVs, plots, samples and index.html go (created; stale plots/samples removed).

    Returns:
        ``{"out_dir", "index", "claims", "tasks": {task: {"csv", "points_csv", "plots", "samples", "ranking",
        "n_ok", "n_failed"}}, "failed": [{"task", "trial_id", "method", "error"}], "n_records"}``; paths absolute.
    """
    from unlearnbench import claims as claims_mod

    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    records = read_records([Path(p).resolve() for p in run_dirs])
    if not records:
        logger.warning("no records found in %s", ", ".join(str(p) for p in run_dirs))
    tasks = collect_tasks(records)
    colors = _method_colors(sorted({m for td in tasks.values() for m in td.methods}))
    written: set[Path] = set()
    result: dict[str, Any] = {"out_dir": str(out), "n_records": len(records), "tasks": {}, "failed": []}
    sections = []
    for name, td in tasks.items():
        slug = _slug(name)
        header, rows = leaderboard_table(td)
        _write_text(out / f"{slug}.csv", _csv_text(header, rows))
        p_header, p_rows = points_table(td)
        _write_text(out / f"{slug}_points.csv", _csv_text(p_header, p_rows))
        info: dict[str, Any] = {"csv": str(out / f"{slug}.csv"), "points_csv": str(out / f"{slug}_points.csv"),
                                "plots": [], "samples": [], "n_ok": len(td.ok), "n_failed": len(td.failed),
                                "ranking": [row[1] for row in rows]}
        plots = []
        for axis in td.axes:
            rel = f"plots/{slug}__{_slug(axis[0])}__{_slug(axis[1])}.png"
            if plot_axis(td, axis, out / rel, colors):
                plots.append((rel, f"{axis[1]} vs {axis[0]}"))
            else:
                logger.warning("task %s: no data on axes %s; no plot", name, axis_label(axis))
            ref, _ = td.reference(axis)
            pts = td.all_points(axis)
            if ref is not None and pts.shape[0] and hypervolume_2d(pts, ref, td.maximize(axis)) == 0.0:
                logger.warning("task %s, axes %s: no point beats the reference %s; check REFERENCE_POINTS",
                               name, axis_label(axis), ref)
        rel = f"plots/{slug}__duals.png"
        if plot_duals(td, out / rel):
            plots.append((rel, "dual variables"))
        samples = _copy_samples(td, out, slug)
        for rel, _ in plots:
            written.add(out / rel)
        for rel, _ in samples:
            written.add(out / rel)
        info["plots"] = [str(out / rel) for rel, _ in plots]
        info["samples"] = [str(out / rel) for rel, _ in samples]
        result["tasks"][name] = info
        sections.append(_task_section(td, slug, header, rows, p_header, p_rows, plots, samples))
    _remove_stale(out, written)

    latest = [r for td in tasks.values() for r in td.ok + td.failed]
    claims = claims_mod.check_claims(latest)
    _write_text(out / "claims.txt", claims_mod.format_claims(claims) + "\n")
    failed = [r for td in tasks.values() for r in td.failed]
    result["failed"] = [{"task": _task_name(r), "trial_id": r.get("trial_id"), "method": r.get("method"),
                         "error": r.get("error")} for r in failed]
    result["claims"] = claims
    page = _index_html(tasks, sections, claims, failed, latest)
    _write_text(out / "index.html", page)
    result["index"] = str(out / "index.html")
    return result


def _copy_samples(td: TaskData, out: Path, slug: str) -> list[tuple[str, str]]:
    copied = []
    for r in td.ok:
        src = (r.get("artifacts") or {}).get("samples")
        if not src:
            continue
        src = Path(src)
        if not src.is_absolute():
            src = Path(r.get("_dir") or ".") / src
        if not src.is_file():
            logger.warning("task %s, trial %s: sample grid %s is missing", td.name, r.get("trial_id"), src)
            continue
        rel = f"samples/{slug}/{_slug(r.get('trial_id'))}{src.suffix.lower() or '.png'}"
        dst = out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.is_file() or dst.read_bytes() != src.read_bytes():
            shutil.copyfile(src, dst)
        caption = f"{r.get('method')} {fmt(_grid(r).get('value'))} seed {fmt(r.get('seed'))}"
        copied.append((rel, caption))
    return copied


def _remove_stale(out: Path, written: set[Path]) -> None:
    """Delete files under plots/ and samples/ (both owned by the leaderboard) that this build did not write."""
    for sub in ("plots", "samples"):
        root = out / sub
        if not root.is_dir():
            continue
        for p in sorted(root.rglob("*"), reverse=True):
            if p.is_file() and p not in written:
                p.unlink()
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        if not any(root.iterdir()):
            root.rmdir()


def _task_section(td: TaskData, slug: str, header: list[str], rows: list[list[str]], p_header: list[str],
                  p_rows: list[list[str]], plots: list[tuple[str, str]], samples: list[tuple[str, str]]) -> str:
    out = [f'<section id="task-{_e(slug)}">', f"<h2>{_e(td.name)}</h2>"]
    out.append(f"<p>kind: {_e(td.kind or '?')}; {len(td.ok)} ok and {len(td.failed)} failed trials; "
               f'tables: <a href="{_e(slug)}.csv">{_e(slug)}.csv</a>, '
               f'<a href="{_e(slug)}_points.csv">{_e(slug)}_points.csv</a></p>')
    items = []
    for i, axis in enumerate(td.axes):
        ref, src = td.reference(axis)
        levels, lsrc = td.levels(axis)
        mx = td.maximize(axis)
        ref_s = f"{src} ({fmt(ref[0])}, {fmt(ref[1])})" if ref is not None else src
        items.append(f"<li>{'<b>primary</b> ' if i == 0 else ''}{_e(axis[0])} ({_e(_direction(mx[0]))}) / "
                     f"{_e(axis[1])} ({_e(_direction(mx[1]))}): hypervolume reference {_e(ref_s)}; "
                     f"retention read at {_e(axis[0])} = {_e(', '.join(fmt(v) for v in levels) or '-')} "
                     f"({_e(lsrc)})</li>")
    out.append("<p>Axes (unlearning / retention):</p><ul>" + "".join(items) + "</ul>")
    out.append("<p>Methods ranked by hypervolume on the primary axes (seed means; a method's front is its "
               "non-dominated points over the grid).</p>")
    out.append(_html_table(header, rows, left=("method", "unlearnbench", "git_sha", "packages", "config_hashes")))
    for rel, cap in plots:
        out.append(f'<figure><img class="plot" src="{_e(rel)}" alt="{_e(cap)}"><figcaption>{_e(cap)}'
                   f"</figcaption></figure>")
    if samples:
        out.append("<h3>Samples</h3><div>")
        for rel, cap in samples:
            out.append(f'<figure><a href="{_e(rel)}"><img class="sample" src="{_e(rel)}" alt="{_e(cap)}"></a>'
                       f"<figcaption>{_e(cap)}</figcaption></figure>")
        out.append("</div>")
    out.append("<details><summary>Points (method x grid value, mean and stderr over seeds)</summary>")
    out.append(_html_table(p_header, p_rows, left=("method", "grid_name", "grid_param")))
    out.append("</details>")
    if td.failed:
        out.append(f"<p>{len(td.failed)} failed trial(s): see <a href=\"#failed\">Failed trials</a>.</p>")
    out.append("</section>")
    return "\n".join(out)


def _index_html(tasks: dict[str, TaskData], sections: list[str], claims: list, failed: list[dict],
                latest: list[dict]) -> str:
    runs = _set(r.get("run_id") for r in latest)
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           "<title>unlearnbench leaderboard</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
           "<h1>unlearnbench leaderboard</h1>",
           f"<p>{len(latest)} trials (newest record per trial) from run(s): {_e(runs.replace(';', ', ') or '-')}. "
           f"Generated from the records alone by <code>unlearnbench leaderboard</code>; do not edit.</p>"]
    if tasks:
        out.append("<ul>" + "".join(f'<li><a href="#task-{_e(_slug(n))}">{_e(n)}</a></li>' for n in tasks)
                   + '<li><a href="#claims">Claims</a></li><li><a href="#failed">Failed trials</a></li></ul>')
    out.append('<h2 id="claims">Claims (PAPER.md section 6)</h2>')
    out.append(_claims_html(claims))
    out.extend(sections)
    out.append(f'<h2 id="failed">Failed trials ({len(failed)})</h2>')
    if failed:
        header = ["task", "trial_id", "method", "grid value", "seed", "run_id", "error"]
        rows = _failed_rows(failed)
        out.append('<div class="scroll"><table><tr>' + "".join(f'<th class="l">{_e(h)}</th>' for h in header)
                   + "</tr>")
        for row in rows:
            out.append("<tr>" + "".join(f'<td class="l">{_e(v)}</td>' for v in row[:-1])
                       + f'<td class="l"><pre>{_e(row[-1])}</pre></td></tr>')
        out.append("</table></div>")
    else:
        out.append("<p>None.</p>")
    out += ["</body>", "</html>", ""]
    return "\n".join(out)

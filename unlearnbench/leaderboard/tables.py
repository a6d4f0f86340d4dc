"""The leaderboard's two CSV tables of one task, as a header and formatted rows.

``<task>.csv``: one row per entry (method and settings), ranked by hypervolume on the primary axes; entries whose
hypervolume intervals overlap the group leader's share a ``rank_group`` (the leader is the best entry not yet in a
group). Every hypervolume and retention-at-level value comes with its 95 % interval (``_lo``/``_hi`` columns) and
the interval's source (``seeds``: over seeds; ``eval``: one seed, from the evaluation stderr). Unlearning past the
retrained model earns nothing (:mod:`unlearnbench.leaderboard.stats`); ``overshoot[U]`` is how far the entry's
furthest seed-mean point went past it (in pretrained-to-retrained distances) and ``past_retrained[U]`` how many of its
grid points did. Convergence, constraint satisfaction and ``settled`` (duals changed <= 5 % over the last 20 % of the
steps and every constraint met within 5 %: the trials a claim counts) are ``k/n`` over the entry's valid trials.

``<task>_points.csv``: one row per entry and grid value: mean over seeds of every metric with the half-width of its
95 % interval (``_ci95``; for rates, accuracy and regeneration, the interval of :func:`unlearnbench.pareto.mean_interval`
with Wilson's interval of the pooled ``k/n``, asymmetric, and the column gives its larger side), the mean evaluation
stderr, and ``k/n`` for rates; then one row per reference network evaluated by ``unlearnbench attack``
(``retrained (reference)``: the model trained without the forget set, scored by the same evaluation), outside every
front.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from unlearnbench.leaderboard.stats import common_levels, hypervolume_ci, overshoot, reference, retention_at_levels
from unlearnbench.pareto import _to_float, mean_interval, pareto_front
from unlearnbench.protocol import settled
from unlearnbench.results import TaskData, axis_label, fmt, grid_of, grid_sort_key, oracle_fronts

_NOT_PACKAGES = {"unlearnbench", "git_sha", "platform", "gpu", "python"}  # env keys that are not package versions


def csv_text(header: list[str], rows: list[list[str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def joined(values: Iterable[Any]) -> str:
    return ";".join(sorted({str(v) for v in values if v not in (None, "")}))


def k_of_n(flags: Iterable[Any]) -> str:
    """``"k/n"`` of the true flags among the known (non-None) ones; blank when none is known."""
    known = [bool(f) for f in flags if f is not None]
    return f"{sum(known)}/{len(known)}" if known else ""


def convergence(r: dict) -> dict:
    """``train.convergence`` of a record; older records only have ``train.constraints_met``."""
    train = r.get("train") if isinstance(r.get("train"), dict) else {}
    conv = train.get("convergence") if isinstance(train.get("convergence"), dict) else {}
    return {"converged": conv.get("converged"),
            "constraints_met": conv.get("constraints_met", train.get("constraints_met"))}


def random_weight_networks(r: dict) -> list[str]:
    """The metric networks a record was scored with that had random weights (``task.evaluation.<name>.random_weights``,
    e.g. a CLIP built without a checkpoint): its values of their metrics mean nothing, and the leaderboard says so."""
    ev = (r.get("task") or {}).get("evaluation") if isinstance(r.get("task"), dict) else None
    return sorted(k for k, v in (ev or {}).items() if isinstance(v, dict) and v.get("random_weights"))


def _mean_of(values: Iterable[Any]) -> float:
    v = [x for x in (_to_float(x) for x in values) if math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


def _wall(r: dict) -> float:
    t = _to_float((r.get("timing") or {}).get("total_s"))
    return t if math.isfinite(t) else _to_float((r.get("train") or {}).get("wall_s"))


def summary_header(td: TaskData) -> list[str]:
    header = ["rank", "rank_group", "entry", "method", "n_ok", "n_diverged", "n_failed", "seeds", "interval"]
    for axis in td.axes:
        a = axis_label(axis)
        header += [f"hv[{a}]", f"hv[{a}]_lo", f"hv[{a}]_hi"]
    for axis in td.axes:
        for lv in common_levels(td, axis)[0]:
            c = f"{axis[1]}@{axis[0]}={fmt(lv)}"
            header += [c, f"{c}_lo", f"{c}_hi"]
    for u in unlearning_metrics(td):
        header += [f"overshoot[{u}]", f"past_retrained[{u}]"]
    header += ["converged", "constraints_met", "settled"]
    header += [f"oracle_gap[{f}]" for f in formulations(td)]
    header += ["mean_steps", "mean_total_s", "unlearnbench", "git_sha", "packages", "config_hashes",
               "random_weight_metrics"]
    return header


def entry_values(td: TaskData, entry: str) -> dict[str, Any]:
    """Every column of one entry's row, unformatted."""
    trials = [r for r in td.trials if r["_entry"] == entry]
    ok = [r for r in trials if r.get("status") == "ok"]
    v: dict[str, Any] = {"entry": entry, "method": td.method_of(entry), "n_ok": len(ok),
                         "n_diverged": sum(r.get("status") == "diverged" for r in trials),
                         "n_failed": sum(r.get("status") not in ("ok", "diverged") for r in trials),
                         "seeds": len({json.dumps(r.get("seed")) for r in ok})}
    sources = set()
    for axis in td.axes:
        a = axis_label(axis)
        hv, lo, hi, src = hypervolume_ci(td, entry, axis)
        sources.add(src)
        v[f"hv[{a}]"], v[f"hv[{a}]_lo"], v[f"hv[{a}]_hi"] = hv, lo, hi
        levels = common_levels(td, axis)[0]
        for lv, (r, rlo, rhi) in zip(levels, retention_at_levels(td, entry, axis, levels)):
            c = f"{axis[1]}@{axis[0]}={fmt(lv)}"
            v[c], v[f"{c}_lo"], v[f"{c}_hi"] = r, rlo, rhi
    v["interval"] = "seeds" if sources == {"seeds"} else "eval" if "eval" in sources else "none"
    conv = [convergence(r) for r in ok]
    v["converged"] = k_of_n(c["converged"] for c in conv)
    v["constraints_met"] = k_of_n(c["constraints_met"] for c in conv)
    v["settled"] = k_of_n(settled(r) for r in ok)
    for u in unlearning_metrics(td):
        axis = next(a for a in td.axes if a[0] == u)
        worst, n_past, k = overshoot(td, entry, axis)
        v[f"overshoot[{u}]"] = worst
        v[f"past_retrained[{u}]"] = f"{n_past}/{k}" if td.anchors.get(u) is not None and k else ""
    for form in formulations(td):
        v[f"oracle_gap[{form}]"] = _mean_of(oracle_fronts(r).get(form, {}).get("gap") for r in ok)
    v["mean_steps"] = _mean_of((r.get("train") or {}).get("steps") for r in ok)
    v["mean_total_s"] = _mean_of(_wall(r) for r in ok)
    envs = [r.get("env") or {} for r in trials]
    v["unlearnbench"] = joined(e.get("unlearnbench") for e in envs)
    v["git_sha"] = joined(e.get("git_sha") for e in envs)
    v["packages"] = joined(f"{k}={x}" for e in envs for k, x in e.items() if k not in _NOT_PACKAGES and x)
    v["config_hashes"] = joined(r.get("config_hash") for r in trials)
    v["random_weight_metrics"] = joined(n for r in trials for n in random_weight_networks(r))
    return v


def summary_table(td: TaskData) -> tuple[list[str], list[dict[str, Any]]]:
    """Header and one value dict per entry, ranked by hypervolume on the primary axes (ties share a rank)."""
    header = summary_header(td)
    rows = [entry_values(td, e) for e in td.entries]
    primary = f"hv[{axis_label(td.axes[0])}]" if td.axes else None

    def hv(v: dict) -> float:
        return v.get(primary, math.nan) if primary else math.nan

    rows.sort(key=lambda v: (not math.isfinite(hv(v)), -hv(v) if math.isfinite(hv(v)) else 0.0, v["entry"]))
    rank, prev = 0, None
    group, leader_lo = 0, math.nan
    for i, v in enumerate(rows):
        if not math.isfinite(hv(v)):
            v["rank"] = v["rank_group"] = None
            continue
        if hv(v) != prev:
            rank, prev = i + 1, hv(v)
        v["rank"] = rank
        hi = v.get(f"{primary}_hi", math.nan)
        if group == 0 or not (math.isfinite(hi) and math.isfinite(leader_lo) and hi >= leader_lo):
            group, leader_lo = group + 1, v.get(f"{primary}_lo", math.nan)
        v["rank_group"] = group
    return header, rows


def unlearning_metrics(td: TaskData) -> list[str]:
    """The task's unlearning metrics, in axis order, each once."""
    return list(dict.fromkeys(a[0] for a in td.axes))


def formatted(header: list[str], rows: list[dict[str, Any]]) -> list[list[str]]:
    return [[fmt(v.get(h)) for h in header] for v in rows]


def reference_notes(td: TaskData) -> dict[str, str]:
    out = {}
    for axis in td.axes:
        ref, src = reference(td, axis)
        out[axis_label(axis)] = f"{src} ({fmt(ref[0])}, {fmt(ref[1])})" if ref is not None else src
    return out


def formulations(td: TaskData) -> list[str]:
    return sorted({f for r in td.trials if r.get("status") == "ok" for f in oracle_fronts(r)})


def points_table(td: TaskData) -> tuple[list[str], list[list[str]]]:
    """The ``<task>_points.csv`` table: entry x grid value, mean over seeds and 95 % interval of each metric."""
    metrics = [m for m in td.metric_names]
    header = ["entry", "method", "grid_param", "grid_value", "n_seeds", "n_diverged", "n_failed", "interval"]
    header += [f"front[{axis_label(a)}]" for a in td.axes]
    rates = {m: td.rates.get(m, False) for m in metrics}
    for m in metrics:
        header += [f"{m}_mean", f"{m}_ci95", f"{m}_eval_stderr"] + ([f"{m}_k/n"] if rates[m] else [])
    groups: dict[tuple, list[dict]] = {}
    for r in td.trials:
        groups.setdefault((r["_entry"], json.dumps(grid_of(r).get("value"))), []).append(r)
    on_front = {(e, a): {json.dumps(g) for g in np.array(td.points(e, a).grid, dtype=object)[
        pareto_front(td.points(e, a).mean, td.maximize(a))].tolist()} for e in td.entries for a in td.axes}

    def metric_cells(recs: list[dict]) -> tuple[list[str], str]:
        """Mean, interval half-width, mean evaluation stderr (and k/n for rates) of every metric over ``recs``
        (one per seed); and the interval's source."""
        cells, sources = [], set()
        for m in metrics:
            found = [t["metrics"][m] for t in recs if isinstance((t.get("metrics") or {}).get(m), dict)]
            vals = [_to_float(x.get("value")) for x in found]
            ses = [_to_float(x.get("stderr")) for x in found]
            mean, lo, hi, _, src = mean_interval(vals, ses, [x.get("n") for x in found] if rates[m] else None)
            if found:
                sources.add(src)
            cells += [fmt(mean), fmt(max(mean - lo, hi - mean)), fmt(_mean_of(ses))]  # Wilson's is asymmetric
            if rates[m]:
                k = sum(round(_to_float(x.get("value")) * x["n"]) for x in found if x.get("n"))
                n = sum(int(x["n"]) for x in found if x.get("n"))
                cells.append(f"{k}/{n}" if n else "")
        return cells, "seeds" if sources == {"seeds"} else "eval" if "eval" in sources else "none" if sources else ""

    rows = []
    for (entry, gk) in sorted(groups, key=lambda k: (k[0], grid_sort_key(json.loads(k[1])))):
        trials = groups[(entry, gk)]
        ok = [t for t in trials if t.get("status") == "ok"]
        row = [entry, td.method_of(entry), str(grid_of(trials[0]).get("param") or ""), fmt(json.loads(gk)),
               fmt(len(ok)), fmt(sum(t.get("status") == "diverged" for t in trials)),
               fmt(sum(t.get("status") not in ("ok", "diverged") for t in trials))]
        cells, source = metric_cells(ok)
        row.append(source)
        for a in td.axes:
            row.append(("1" if gk in on_front[(entry, a)] else "0") if gk in {json.dumps(g) for g in
                                                                               td.points(entry, a).grid} else "")
        rows.append(row + cells)
    for name, recs in sorted(td.refs.items()):  # reference networks (the retrained one): every metric, no front
        cells, source = metric_cells(recs)
        rows.append([f"{name} (reference)", name, "", "", fmt(len(recs)), "0", "0", source] + [""] * len(td.axes)
                    + cells)
    return header, rows


def slug(s: Any) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", str(s)).strip("_") or "_"


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)

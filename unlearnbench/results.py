"""Trial records -> one tidy table: the single place where records become numbers.

The leaderboard, the claims and the Python API (``unlearnbench.load_results``) all read records through this
module, so they agree on which trials count and how they are grouped:

- **Entries.** Trials are grouped by (task, forget set, method, resolved settings other than the grid value and
  the seed). Two runs of one method with different settings (another learning rate, more steps, other task
  options) are two entries, labelled ``method [lr=0.001]`` by the settings that differ; they never share a front.
- **Newest wins.** Of several records of the same entry, grid value and seed (a resumed trial after its failed
  attempt), the newest ``created_at`` counts.

The frame is long ("tidy"): one row per trial and metric, with the columns of :data:`COLUMNS`. A trial without
metrics (failed) has one row whose ``metric`` is empty, so its status is never lost.
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from unlearnbench.cache import config_hash
from unlearnbench.pareto import _to_float as to_float
from unlearnbench.pareto import grid_sort_key, is_rate, mean_interval
from unlearnbench.protocol import SETTLE_TOL

logger = logging.getLogger(__name__)

COLUMNS = ["task", "forget_set", "method", "entry", "settings_hash", "grid_param", "grid_value", "seed", "status",
           "error", "trial_id", "run_id", "metric", "value", "stderr", "n", "role", "higher_is_better"]
VALID = "ok"  # the only status whose points enter fronts, hypervolumes and claims
REFERENCE_EVAL = "reference"  # attack name of a reference network's evaluation by the task (unlearnbench attack)


def _task(r: dict) -> dict:
    t = r.get("task")
    return t if isinstance(t, dict) else {"name": t} if isinstance(t, str) else {}


def grid_of(r: dict) -> dict:
    g = r.get("grid")
    return g if isinstance(g, dict) else {}


def task_key(r: dict) -> str:
    """Leaderboard key: the task name, suffixed with the forget set when it is not the task's default one (fronts of
    different forget sets are different experiments)."""
    t = _task(r)
    if t.get("name"):
        if t.get("forget_default") is False and t.get("forget_set"):
            return f"{t['name']}-{t['forget_set']}"
        return str(t["name"])
    return "unknown"


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


# Settings added after records were made, at the value that trains exactly as before they existed (the stop rule off
# and its check lenient; settle_tol only labels a trial; final_estimates 1 is the one fresh estimate the runner drew
# before it): a record that has them at that value and one that predates them are one entry.
NEUTRAL_DEFAULTS: dict[str, Any] = {"max_steps": None, "settle_tol": SETTLE_TOL, "dual_decay": 0.0,
                                    "dual_decay_start": 0.0, "dual_normalize": False, "dual_update": "additive",
                                    "dual_min": 1e-3, "primal_anneal": 0.0, "primal_anneal_floor": 0.02,
                                    "final_estimates": 1, "stop_strict": False, "dual_margin": 0.0}


def settings_of(r: dict) -> dict[str, Any]:
    """Resolved settings that define an entry: the method config without the grid parameter (and without the
    :data:`NEUTRAL_DEFAULTS` at their neutral value), and the task options without the forget set (which is part of
    the task key)."""
    cfg = r.get("method_config") if isinstance(r.get("method_config"), dict) else {}
    param = grid_of(r).get("param")
    out = {f"{k}": v for k, v in cfg.items()
           if k != param and not (k in NEUTRAL_DEFAULTS and v == NEUTRAL_DEFAULTS[k])}
    opts = _task(r).get("options") if isinstance(_task(r).get("options"), dict) else {}
    out.update({f"task.{k}": v for k, v in opts.items() if k != "forget"})
    return out


def settings_hash(r: dict) -> str:
    return config_hash(settings_of(r))


def _newer(a: dict, b: dict) -> bool:
    return str(a.get("created_at", "")) >= str(b.get("created_at", ""))


def latest_trials(records: Iterable[dict]) -> list[dict]:
    """The newest record per (task, method, settings, grid value, seed), each annotated with ``_task``,
    ``_settings`` (hash) and ``_entry`` (label); sorted by task, entry, grid value, seed. Attack records (field
    ``attack``) are not trials of a front: :func:`unlearnbench.load_robustness` reads them."""
    latest: dict[tuple, dict] = {}
    for r in records:
        if not isinstance(r, dict) or r.get("attack"):  # attack records: unlearnbench.leaderboard.robustness
            continue
        r = dict(r, _task=task_key(r), _settings=settings_hash(r))
        key = (r["_task"], str(r.get("method")), r["_settings"], json.dumps(grid_of(r).get("value")),
               json.dumps(r.get("seed")))
        if key not in latest or _newer(r, latest[key]):
            latest[key] = r
    trials = list(latest.values())
    labels = entry_labels(trials)
    for r in trials:
        r["_entry"] = labels[(r["_task"], str(r.get("method")), r["_settings"])]
    return sorted(trials, key=trial_sort_key)


def trial_sort_key(r: dict) -> tuple:
    return (r["_task"], r["_entry"], grid_sort_key(grid_of(r).get("value")), grid_sort_key(r.get("seed")),
            str(r.get("trial_id")))


def entry_labels(trials: Sequence[dict]) -> dict[tuple, str]:
    """``(task, method, settings hash) -> label``: the method name, plus the settings that differ between its
    entries on that task when it has more than one; a model scored by ``evaluate`` (method ``external``) is labelled
    by the name it was given."""
    by_method: dict[tuple, dict[str, dict]] = {}
    for r in trials:
        by_method.setdefault((r["_task"], str(r.get("method"))), {})[r["_settings"]] = settings_of(r)
    labels = {}
    for (task, method), variants in by_method.items():
        keys = sorted({k for s in variants.values() for k in s})
        differ = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True) for s in variants.values()}) > 1]
        for h, s in variants.items():
            if method == "external" and s.get("name"):
                labels[(task, method, h)] = str(s["name"])
            elif len(variants) == 1:
                labels[(task, method, h)] = method
            else:
                shown = ", ".join(f"{k}={_short(s.get(k))}" for k in differ)
                labels[(task, method, h)] = f"{method} [{shown}]"
    return labels


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def tidy_rows(trials: Iterable[dict]) -> list[dict[str, Any]]:
    """One dict per (trial, metric) with the :data:`COLUMNS`; ``trials`` as returned by :func:`latest_trials`."""
    rows = []
    for r in trials:
        g = grid_of(r)
        base = {"task": r["_task"], "forget_set": _task(r).get("forget_set"), "method": str(r.get("method")),
                "entry": r["_entry"], "settings_hash": r["_settings"], "grid_param": g.get("param"),
                "grid_value": g.get("value"), "seed": r.get("seed"), "status": str(r.get("status") or "failed"),
                "error": r.get("error"), "trial_id": r.get("trial_id"), "run_id": r.get("run_id")}
        metrics = r.get("metrics") if isinstance(r.get("metrics"), dict) else {}
        if not metrics:
            rows.append({**base, "metric": None, "value": math.nan, "stderr": math.nan, "n": None, "role": None,
                         "higher_is_better": None})
        for name in sorted(metrics):
            m = metrics[name] if isinstance(metrics[name], dict) else {"value": metrics[name]}
            n = to_float(m.get("n"))
            hib = m.get("higher_is_better")
            rows.append({**base, "metric": name, "value": to_float(m.get("value")), "stderr": to_float(m.get("stderr")),
                         "n": int(n) if math.isfinite(n) else None, "role": m.get("role"),
                         "higher_is_better": None if hib is None else bool(hib)})
    return rows


def results_frame(records: Iterable[dict]):
    """The tidy frame (:data:`COLUMNS`) of the newest record per entry, grid value and seed."""
    import pandas as pd

    df = pd.DataFrame(tidy_rows(latest_trials(records)), columns=COLUMNS)
    df["n"] = df["n"].astype("Int64")
    df["higher_is_better"] = df["higher_is_better"].astype("boolean")
    return df


def load_results(paths: str | os.PathLike | Sequence[str | os.PathLike]):
    """Every trial under ``paths`` as a tidy :class:`pandas.DataFrame`, one row per trial and metric.

    Args:
        paths: run directories (searched recursively for ``records.jsonl``) or records files.

    Returns:
        A frame with the columns ``task, forget_set, method, entry, settings_hash, grid_param, grid_value, seed,
        status, error, trial_id, run_id, metric, value, stderr, n, role, higher_is_better``.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    from unlearnbench.records import read_records

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    missing = [str(p) for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"load_results: no such file or directory: {', '.join(missing)}")
    return results_frame(read_records(paths))


@dataclass(frozen=True)
class MetricInfo:
    """What the records say about one metric of a task."""

    role: str
    higher_is_better: bool | None


def metric_info(trials: Iterable[dict]) -> dict[str, MetricInfo]:
    """Role and orientation of every metric in the valid trials (the first record that states them wins)."""
    out: dict[str, MetricInfo] = {}
    for r in trials:
        if r.get("status") != VALID:
            continue
        for name, m in (r.get("metrics") or {}).items():
            if isinstance(m, dict) and name not in out:
                hib = m.get("higher_is_better")
                out[name] = MetricInfo(str(m.get("role") or "info"), None if hib is None else bool(hib))
    return out


# ----------------------------------------------------------------------------------------------------------------
# Per-task view: entries, seed-mean points with intervals, the pretrained point
# ----------------------------------------------------------------------------------------------------------------
Axis = tuple[str, str]
PRETRAINED_SUFFIX = "_pretrained"  # metric "m_pretrained" (role info) = the pretrained model's value of "m"


@dataclass
class PointSet:
    """Seed-mean points of one entry on one axis pair: ``k`` grid values, ``s`` seeds."""

    grid: list  # [k] grid values
    mean: np.ndarray  # [k, 2] mean over seeds
    lo: np.ndarray  # [k, 2] 95 % interval
    hi: np.ndarray
    n: np.ndarray  # [k] seeds with both coordinates
    source: str  # "seeds" (t over seeds) | "eval" (one seed: evaluation stderr) | "none"
    values: np.ndarray  # [k, s, 2] per seed, NaN where missing
    stderr: np.ndarray  # [k, s, 2] evaluation stderr
    seeds: list  # [s]
    counts: np.ndarray | None = None  # [k, s, 2] n of each rate coordinate (k/n), 0 where not a rate


@dataclass
class TaskData:
    """The newest trials of one task (every status), grouped into entries, with their metric values."""

    name: str
    kind: str | None
    axes: list[Axis]
    info: dict[str, MetricInfo]
    trials: list[dict]
    rows: list[dict]  # tidy_rows(trials)
    refs: dict[str, list[dict]] = field(default_factory=dict)  # reference name -> its evaluation records (a seed each)
    anchors: dict = field(default_factory=dict)  # unlearning metric -> protocol.Anchor (pretrained, retrained)

    def __post_init__(self) -> None:
        self.entries = sorted({r["_entry"] for r in self.trials})
        self._vals: dict[tuple, dict] = {}
        for row in self.rows:
            if row["status"] == VALID and row["metric"] is not None:
                key = (row["entry"], row["metric"])
                self._vals.setdefault(key, {})[(json.dumps(row["grid_value"]), json.dumps(row["seed"]))] = row
        self.metric_names = sorted({m for (_, m) in self._vals})
        rates = {m: is_rate(*zip(*[(r["value"], r["n"]) for r in self.rows if r["metric"] == m
                                   and r["status"] == VALID])) for m in self.metric_names}
        # a pretrained companion is a rate when its metric is (a pretrained accuracy of exactly 1 is still 256/256)
        self.rates = {m: rates.get(m.removesuffix(PRETRAINED_SUFFIX), rates[m]) for m in self.metric_names}
        self._points: dict[tuple, PointSet] = {}

    def with_status(self, status: str) -> list[dict]:
        return [r for r in self.trials if (r.get("status") or "failed") == status]

    def invalid(self) -> list[dict]:
        """Trials that are not points: diverged and failed (and any unknown status)."""
        return [r for r in self.trials if r.get("status") != VALID]

    def method_of(self, entry: str) -> str:
        return next(str(r.get("method")) for r in self.trials if r["_entry"] == entry)

    def higher_is_better(self, metric: str) -> bool:
        hib = self.info.get(metric)
        return bool(hib.higher_is_better) if hib is not None and hib.higher_is_better is not None else False

    def maximize(self, axis: Axis) -> tuple[bool, bool]:
        return (self.higher_is_better(axis[0]), self.higher_is_better(axis[1]))

    def points(self, entry: str, axis: Axis) -> PointSet:
        """Seed-mean points of ``entry`` where both axis metrics were measured, with 95 % intervals."""
        if (entry, tuple(axis)) not in self._points:
            self._points[(entry, tuple(axis))] = self._make_points(entry, axis)
        return self._points[(entry, tuple(axis))]

    def _make_points(self, entry: str, axis: Axis) -> PointSet:
        cells = [self._vals.get((entry, m), {}) for m in axis]
        keys = sorted(set(cells[0]) & set(cells[1]), key=lambda k: (grid_sort_key(json.loads(k[0])),
                                                                     grid_sort_key(json.loads(k[1]))))
        grid_keys = sorted({k[0] for k in keys}, key=lambda g: grid_sort_key(json.loads(g)))
        seed_keys = sorted({k[1] for k in keys}, key=lambda s: grid_sort_key(json.loads(s)))
        vals = np.full((len(grid_keys), len(seed_keys), 2), np.nan)
        ses, counts = np.full_like(vals, np.nan), np.zeros_like(vals)
        for gk, sk in keys:
            i, j = grid_keys.index(gk), seed_keys.index(sk)
            for d in range(2):
                vals[i, j, d] = cells[d][(gk, sk)]["value"]
                ses[i, j, d] = cells[d][(gk, sk)]["stderr"]
                counts[i, j, d] = cells[d][(gk, sk)]["n"] or 0
        ok = np.any(np.all(np.isfinite(vals), axis=2), axis=1)  # grid values with a seed that has both coordinates
        vals, ses, counts = vals[ok], ses[ok], counts[ok]
        grid = [json.loads(g) for g, keep in zip(grid_keys, ok) if keep]
        k = len(grid)
        mean, lo, hi = (np.full((k, 2), np.nan) for _ in range(3))
        n = np.zeros(k, dtype=int)
        sources = set()
        for i in range(k):
            both = np.all(np.isfinite(vals[i]), axis=1)
            n[i] = int(both.sum())
            for d in range(2):
                mean[i, d], lo[i, d], hi[i, d], _, src = mean_interval(
                    vals[i, both, d], ses[i, both, d], counts[i, both, d] if self.rates.get(axis[d]) else None)
                sources.add(src)
        source = "none" if "none" in sources else "eval" if "eval" in sources else "seeds" if sources else "none"
        rate_n = counts * np.array([bool(self.rates.get(m)) for m in axis], dtype=float)
        return PointSet(grid, mean, lo, hi, n, source, vals, ses, [json.loads(s) for s in seed_keys], rate_n)

    def pretrained(self, axis: Axis) -> tuple[float, float] | None:
        """The pretrained model's point (mean of the ``m_pretrained`` companions over valid trials), if recorded."""
        vals = [self.pretrained_value(m) for m in axis]
        if any(v is None for v in vals):
            return None
        return vals[0][0], vals[1][0]  # type: ignore[index]

    def pretrained_value(self, metric: str) -> tuple[float, float, float] | None:
        """``(mean, lo, hi)`` of the pretrained model's ``metric`` over valid trials: the mean of the ``m_pretrained``
        companions, with the 95 % interval of its own evaluation (Wilson for a rate, else ± 1.96 x the mean
        stderr; NaN without one). Not an interval over seeds: every trial evaluates the same pretrained network,
        often on the same cached samples."""
        cell = [row for row in self._vals_any(metric + PRETRAINED_SUFFIX) if math.isfinite(row["value"])]
        if not cell:
            return None
        counts = [row["n"] for row in cell]
        ses = [row["stderr"] for row in cell if row["stderr"] is not None and math.isfinite(row["stderr"])]
        rate = self.rates.get(metric) and all(counts)
        # one evaluation of one network: mean_interval's single-value case (Wilson for a rate, else +-1.96 x stderr)
        m, lo, hi, _, _ = mean_interval([float(np.mean([row["value"] for row in cell]))],
                                        [float(np.mean(ses)) if ses else math.nan],
                                        [round(float(np.mean(counts)))] if rate else None)
        return m, lo, hi

    def reference_value(self, name: str, metric: str) -> tuple[float, float, float, int, str] | None:
        """A reference network's ``metric`` (``mean_interval`` over its seeds, Wilson-based for a rate), if it was
        evaluated."""
        found = [(r.get("metrics") or {}).get(metric) for r in self.refs.get(name, [])]
        found = [m for m in found if isinstance(m, dict)]
        if not found:
            return None
        vals, counts = [to_float(m.get("value")) for m in found], [m.get("n") for m in found]
        return mean_interval(vals, [to_float(m.get("stderr")) for m in found],
                             counts if self.rates.get(metric) and all(counts) else None)

    def reference_point(self, name: str, axis: Axis) -> tuple[float, float] | None:
        vals = [self.reference_value(name, m) for m in axis]
        if any(v is None or not math.isfinite(v[0]) for v in vals):
            return None
        return vals[0][0], vals[1][0]

    def _vals_any(self, metric: str) -> list[dict]:
        return [row for (e, m), cell in self._vals.items() if m == metric for row in cell.values()]


def _task_axes(name: str, trials: list[dict], info: dict[str, MetricInfo]) -> list[Axis]:
    """task.axes of the newest record that has them; else every unlearning x retention metric pair."""
    with_axes = [r for r in trials if isinstance(r.get("task"), dict) and r["task"].get("axes")]
    if with_axes:
        newest = max(with_axes, key=lambda r: (str(r.get("created_at", "")), str(r.get("trial_id"))))
        return [(str(a[0]), str(a[1])) for a in newest["task"]["axes"]]
    unl = sorted(m for m, i in info.items() if i.role == "unlearning")
    ret = sorted(m for m, i in info.items() if i.role == "retention")
    return [(u, r) for u in unl for r in ret]


def reference_evals(records: Iterable[dict]) -> dict[str, dict[str, list[dict]]]:
    """``{task key: {reference name: records}}``: the newest ok evaluation of each reference network per seed
    (``unlearnbench attack`` scores the retrained network with the task's own metrics; attack name ``reference``)."""
    latest: dict[tuple, dict] = {}
    for r in records:
        a = r.get("attack") if isinstance(r, dict) else None
        if not isinstance(a, dict) or a.get("name") != REFERENCE_EVAL or r.get("status") != VALID:
            continue
        key = (task_key(r), str(a.get("reference")), json.dumps(r.get("seed")))
        if key not in latest or _newer(r, latest[key]):
            latest[key] = r
    out: dict[str, dict[str, list[dict]]] = {}
    for (task, ref, _), r in sorted(latest.items()):
        out.setdefault(task, {}).setdefault(ref, []).append(r)
    return out


def collect_tasks(records: Iterable[dict], rejudge_trials: bool = True) -> dict[str, TaskData]:
    """Per task (leaderboard key), the newest trials grouped into entries; sorted by task name. With
    ``rejudge_trials`` (the default) each task gets its anchors and its ok trials are judged by the protocol (see
    :func:`unlearnbench.protocol.rejudge`)."""
    records = list(records)
    refs = reference_evals(records)
    by_task: dict[str, list[dict]] = {}
    for r in latest_trials(records):
        by_task.setdefault(r["_task"], []).append(r)
    out = {}
    for name in sorted(by_task):
        trials = by_task[name]
        info = metric_info(trials)
        for axis in _task_axes(name, trials, info):
            for m in axis:
                if m in info and info[m].higher_is_better is None:
                    logger.warning("task %s: metric %s has no higher_is_better; assuming lower is better", name, m)
        kind = next((r["task"].get("kind") for r in reversed(trials) if isinstance(r.get("task"), dict)), None)
        td = TaskData(name, kind, _task_axes(name, trials, info), info, trials, tidy_rows(trials), refs.get(name, {}))
        if rejudge_trials:
            td = _rejudged(td)
        out[name] = td
    return out


def _rejudged(td: TaskData) -> TaskData:
    """``td`` with its anchors (:func:`unlearnbench.protocol.anchors`) and its trials judged by today's protocol: an
    ok trial far past the retrained model, or outside the task's sane ranges, becomes ``diverged``."""
    from unlearnbench.protocol import anchors, rejudge

    found = anchors(td)
    trials = [dict(r) for r in td.trials]
    if rejudge(td.name, trials, found):
        td = TaskData(td.name, td.kind, td.axes, td.info, trials, tidy_rows(trials), td.refs)
    td.anchors = found
    return td


def fmt(x: Any) -> str:
    """Fixed formatting for every number written out (CSV, HTML, text): %.6g floats, blank for None/NaN."""
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

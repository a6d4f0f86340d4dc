"""The paper's three claims as paired statistical tests on trial records.

1. concept: the rkl front dominates ESD's,
2. data: the fkl front dominates SISS's,
3. lik matches the unlearning of rkl/ESD while preserving retained concepts better at matched unlearning.

One comparison of method A against baseline B, on one task, axis pair and pair of entries (method + settings):
- per seed that both ran, each method's front is its non-dominated valid points over the grid (diverged and failed
  trials are never points), read at a level as in :func:`unlearnbench.pareto.retention_at` (interpolated inside
  the front; a stronger unlearning also meets a weaker level);
- matched levels: 5 evenly spaced unlearning values over the range that *every* one of those per-seed fronts
  reaches (:func:`unlearnbench.pareto.level_range`);
- the statistic is the retention difference A - B (oriented so that positive = A better), averaged over the levels,
  per seed; its 95 % interval is a bootstrap over seeds (resampled with replacement, paired);
- "holds" when the interval lies above 0, "fails" when below, otherwise "inconclusive (n seeds)" (always so with a
  single seed: one seed says nothing about seed-to-seed variation).

Axes. Claims 1 and 2 are about the KL-constrained formulations and are read on the axis pairs whose unlearning
metric is the constrained quantity (the oracle's pair for that formulation, else a KL/likelihood-like name, else
the primary pair); claim 3 on the formulation-neutral pairs. Claim 3 also needs lik to *match* the baseline's
unlearning: its strongest unlearning must reach the baseline's up to 5 % of the pooled range, else it fails.

A claim over several comparisons: "fails" if any fails, "holds" if all hold, else "inconclusive" if any is; "no
valid points" or "not enough data" when no comparison had data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from unlearnbench.pareto import level_range, pareto_front, percentile_interval, retention_at
from unlearnbench.results import Axis, TaskData, axis_label, collect_tasks, fmt, oracle_fronts

HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"
NO_VALID, NOT_ENOUGH_DATA = "no valid points", "not enough data"
N_LEVELS = 5
N_BOOT = 2000
MATCH_TOLERANCE = 0.05
_KL_LIKE = ("kl", "bpd", "nll", "elbo")

# (key, task kind, method, baselines, statement). The method is compared with each baseline present.
CLAIMS: list[tuple[str, str, str, tuple[str, ...], str]] = [
    ("concept-rkl-dominates-esd", "concept", "rkl", ("esd", "rkl-fixed"),
     "concept unlearning: the rkl (KL-constrained) front dominates ESD's and fixed equal weights' on the KL axis"),
    ("data-fkl-dominates-siss", "data", "fkl", ("siss",),
     "data unlearning: the fkl (KL-constrained) front dominates SISS's on the KL axis"),
    ("lik-preserves-retained", "concept", "lik", ("rkl", "esd"),
     "lik matches the unlearning of rkl/ESD and preserves retained concepts better at matched unlearning"),
]


@dataclass
class Claim:
    """One claim's verdict and the comparisons behind it (one dict per task x axes x entry pair)."""

    key: str
    statement: str
    verdict: str
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def evidence_lines(self) -> list[str]:
        return [evidence_line(ev) for ev in self.evidence]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "statement": self.statement, "verdict": self.verdict, "evidence": self.evidence}


def evidence_line(ev: dict) -> str:
    """One comparison in one line: verdict, levels, n, estimate and interval."""
    head = f"{ev['task']} [{ev['axes']}] {ev['method']} vs {ev['baseline']}: {ev['verdict']}"
    if ev.get("levels"):
        ci = (f"[{fmt(ev['diff_lo'])}, {fmt(ev['diff_hi'])}] (95 % bootstrap over {ev['n_seeds']} seeds)"
              if fmt(ev["diff_lo"]) else "(no interval: 1 seed)")
        head += (f"; {len(ev['levels'])} levels of {ev['unlearning_metric']} in [{fmt(min(ev['levels']))}, "
                 f"{fmt(max(ev['levels']))}]; retention difference {fmt(ev['diff'])} {ci}")
    if "reach_method" in ev:
        head += f"; strongest unlearning {fmt(ev['reach_method'])} vs {fmt(ev['reach_baseline'])}"
    if ev.get("reason"):
        head += f" ({ev['reason']})"
    return head


def _seed_fronts(td: TaskData, entry: str, axis: Axis) -> dict[str, np.ndarray]:
    """Per seed (JSON key), the entry's front on this axis pair from its valid points."""
    ps = td.points(entry, axis)
    mx = td.maximize(axis)
    out = {}
    for j, seed in enumerate(ps.seeds):
        pts = ps.values[:, j, :]
        pts = pts[np.all(np.isfinite(pts), axis=1)]
        if pts.shape[0]:
            out[repr(seed)] = pts[pareto_front(pts, mx)]
    return out


def _no_points(td: TaskData, entry: str) -> str:
    trials = [r for r in td.trials if r["_entry"] == entry]
    return NO_VALID if trials and all(r.get("status") != "ok" for r in trials) else NOT_ENOUGH_DATA


def compare(td: TaskData, axis: Axis, entry: str, baseline: str, seed: int = 0) -> dict[str, Any]:
    """Paired comparison of two entries at matched unlearning levels (see the module docstring)."""
    ev: dict[str, Any] = {"task": td.name, "axes": axis_label(axis), "unlearning_metric": axis[0],
                          "retention_metric": axis[1], "method": entry, "baseline": baseline}
    fa, fb = _seed_fronts(td, entry, axis), _seed_fronts(td, baseline, axis)
    for e, f in ((entry, fa), (baseline, fb)):
        if not f:
            ev.update(verdict=_no_points(td, e), reason=f"no valid points for {e}", n_seeds=0)
            return ev
    mx = td.maximize(axis)
    su, sr = (1.0 if mx[0] else -1.0), (1.0 if mx[1] else -1.0)
    ma, mb = td.points(entry, axis).mean, td.points(baseline, axis).mean
    ev["reach_method"] = float(ma[np.argmax(su * ma[:, 0]), 0])
    ev["reach_baseline"] = float(mb[np.argmax(su * mb[:, 0]), 0])
    seeds = sorted(set(fa) & set(fb))
    ev["n_seeds"] = len(seeds)
    if not seeds:
        ev.update(verdict=NOT_ENOUGH_DATA, reason="the two entries share no seed")
        return ev
    weak, strong = level_range([fa[s] for s in seeds] + [fb[s] for s in seeds], mx)
    levels = np.array([weak]) if weak == strong else np.linspace(weak, strong, N_LEVELS)
    diffs = np.array([sr * (retention_at(fa[s], levels, mx) - retention_at(fb[s], levels, mx)) for s in seeds])
    per_seed = diffs.mean(axis=1)
    rng = np.random.default_rng(seed)
    boot = per_seed[rng.integers(0, len(seeds), size=(N_BOOT, len(seeds)))].mean(axis=1)
    d_lo, d_hi = percentile_interval(boot) if len(seeds) >= 2 else (math.nan, math.nan)
    ev.update(levels=[float(v) for v in levels], level_diffs=[float(v) for v in diffs.mean(axis=0)],
              diff=float(per_seed.mean()), diff_lo=d_lo, diff_hi=d_hi)
    if len(seeds) < 2:
        ev.update(verdict=INCONCLUSIVE + " (1 seed)", reason="a verdict needs at least 2 seeds")
    elif d_lo > 0:
        ev["verdict"] = HOLDS
    elif d_hi < 0:
        ev.update(verdict=FAILS, reason=f"{entry} retains less than {baseline} at matched unlearning")
    else:
        ev["verdict"] = f"{INCONCLUSIVE} ({len(seeds)} seeds)"
    return ev


def _require_match(ev: dict, td: TaskData, axis: Axis) -> None:
    """Claim 3: lik must reach the baseline's strongest unlearning (up to MATCH_TOLERANCE of the pooled range)."""
    if "reach_method" not in ev:
        return
    su = 1.0 if td.maximize(axis)[0] else -1.0
    u = np.concatenate([td.points(e, axis).mean[:, 0] for e in (ev["method"], ev["baseline"])])
    span = float(u.max() - u.min()) if u.size else 0.0
    if su * ev["reach_method"] < su * ev["reach_baseline"] - MATCH_TOLERANCE * span:
        ev["verdict"] = FAILS
        ev["reason"] = f"{ev['method']} does not reach {ev['baseline']}'s strongest unlearning"


def _is_kl_like(metric: str) -> bool:
    return any(k in metric.lower() for k in _KL_LIKE)


def _kl_axes(td: TaskData, formulation: str) -> list[Axis]:
    pairs = {(e.get("unlearning_metric"), e.get("retention_metric"))
             for r in td.trials if r.get("status") == "ok" for f, e in oracle_fronts(r).items() if f == formulation}
    axes = [a for a in td.axes if tuple(a) in pairs] or [a for a in td.axes if _is_kl_like(a[0])]
    return axes or td.axes[:1]


def _neutral_axes(td: TaskData) -> list[Axis]:
    return [a for a in td.axes if not _is_kl_like(a[0])] or list(td.axes)


def task_evidence(td: TaskData) -> list[dict[str, Any]]:
    """Every claim's comparisons on one task (each dict carries its claim ``key``)."""
    out = []
    for key, kind, method, baselines, _ in CLAIMS:
        entries = [e for e in td.entries if td.method_of(e) == method]
        if td.kind != kind or not entries:
            continue
        axes = _neutral_axes(td) if key == "lik-preserves-retained" else _kl_axes(td, method)
        for b_entry in (e for e in td.entries if td.method_of(e) in baselines):
            for entry in entries:
                for axis in axes:
                    ev = compare(td, axis, entry, b_entry)
                    if key == "lik-preserves-retained":
                        _require_match(ev, td, axis)
                    out.append({"claim": key, **ev})
    return out


def verdict(evidence: list[dict]) -> str:
    vs = [e["verdict"] for e in evidence]
    if FAILS in vs:
        return FAILS
    if vs and all(v == HOLDS for v in vs):
        return HOLDS
    if any(v.startswith(INCONCLUSIVE) for v in vs):
        return INCONCLUSIVE
    return NO_VALID if vs and all(v == NO_VALID for v in vs) else NOT_ENOUGH_DATA


def summarize(evidence: Iterable[dict]) -> list[Claim]:
    """The three claims, each with its comparisons from ``evidence`` (of any number of tasks) and its verdict."""
    evidence = list(evidence)
    out = []
    for key, kind, method, baselines, statement in CLAIMS:
        ev = [e for e in evidence if e.get("claim") == key]
        if not ev:
            ev = [{"claim": key, "task": "-", "axes": "-", "method": method, "baseline": "/".join(baselines),
                   "verdict": NOT_ENOUGH_DATA, "reason": f"no {kind} task with {method} and any of "
                                                         f"{', '.join(baselines)}"}]
        out.append(Claim(key, statement, verdict(ev), ev))
    return out


def check_claims(records: Iterable[dict]) -> list[Claim]:
    """Check the paper's three claims on trial records; returns three :class:`Claim` in the order of CLAIMS."""
    return summarize(ev for td in collect_tasks(records).values() for ev in task_evidence(td))


def format_claims(claims: list[Claim]) -> str:
    """Plain-text report: one block per claim with its verdict and one line per comparison."""
    blocks = []
    for i, c in enumerate(claims, 1):
        blocks.append("\n".join([f"({i}) {c.statement}", f"    verdict: {c.verdict}"]
                                + [f"    {line}" for line in c.evidence_lines()]))
    return "\n\n".join(blocks)

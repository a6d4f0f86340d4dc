"""The paper's three claims (PAPER.md section 6), checked on trial records.

1. concept: the rkl front dominates ESD's,
2. data: the fkl front dominates SISS's,
3. lik matches the unlearning of rkl/ESD while preserving retained concepts better at matched unlearning.

How a comparison of method A against baseline B is made, on one task and one axis pair:
- points are seed means per grid value (as on the leaderboard); each method's front is its non-dominated points;
- hypervolumes use the task's reference point (``leaderboard.REFERENCE_POINTS`` or the worst observed value);
- matched levels: 5 evenly spaced unlearning values over the overlap of the two fronts' unlearning ranges; the
  retention of each front there is interpolated piecewise-linearly. No overlap means "not enough data";
- A *dominates* B when A's hypervolume is at least B's, and at the matched levels A's retention is nowhere worse
  and somewhere better (point estimates; the evidence lists both values at each level with stderr over seeds).

Axes. Claims 1 and 2 are about the KL-constrained formulations and are read on the axis pairs whose unlearning
metric is the constrained quantity: the oracle's metric pair for that formulation where records carry one, else
unlearning metrics named like a KL or a likelihood (``kl``, ``bpd``, ``nll``, ``elbo``), else the primary pair.
Claim 3 is read on the formulation-neutral pairs (unlearning metric not KL/likelihood-like; all pairs if none),
since lik constrains neither KL. Claim 3 also needs lik to *match* the baseline's unlearning: its strongest
unlearning must reach the baseline's strongest up to 5 % of the pooled range of unlearning values.

A claim's verdict over several tasks/axes/baselines: "does not hold" if any comparison with data fails, "holds"
if every comparison with data passes, "not enough data" if none has data.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from unlearnbench.leaderboard import Axis, TaskData, axis_label, collect_tasks, fmt, oracle_fronts
from unlearnbench.pareto import hypervolume_2d, interpolate_front, pareto_front

logger = logging.getLogger(__name__)

HOLDS = "holds"
DOES_NOT_HOLD = "does not hold"
NOT_ENOUGH_DATA = "not enough data"

N_LEVELS = 5
MATCH_TOLERANCE = 0.05  # claim 3: lik's strongest unlearning may fall short by this share of the pooled range
_KL_LIKE = ("kl", "bpd", "nll", "elbo")

# (key, task kind, method, baselines, statement). The method is compared with each baseline present.
CLAIMS: list[tuple[str, str, str, tuple[str, ...], str]] = [
    ("concept-rkl-dominates-esd", "concept", "rkl", ("esd",),
     "concept unlearning: the rkl (KL-constrained) front dominates ESD's on the KL axis"),
    ("data-fkl-dominates-siss", "data", "fkl", ("siss",),
     "data unlearning: the fkl (KL-constrained) front dominates SISS's on the KL axis"),
    ("lik-preserves-retained", "concept", "lik", ("rkl", "esd"),
     "lik matches the unlearning of rkl/ESD and preserves retained concepts better at matched unlearning"),
]


@dataclass
class Claim:
    """One claim's verdict and the comparisons behind it (one dict per task x axis pair x baseline)."""

    key: str
    statement: str
    verdict: str
    evidence: list[dict[str, Any]] = field(default_factory=list)

    def evidence_lines(self) -> list[str]:
        lines = []
        for ev in self.evidence:
            head = f"{ev['task']} [{ev['axes']}] {ev['method']} vs {ev['baseline']}: {ev['verdict']}"
            if ev.get("reason"):
                head += f" ({ev['reason']})"
            lines.append(head)
            if "hv_method" in ev:
                lines.append(f"  hypervolume {fmt(ev['hv_method'])} vs {fmt(ev['hv_baseline'])} "
                             f"(reference {ev['reference']})")
            if "reach_method" in ev:
                lines.append(f"  strongest unlearning {fmt(ev['reach_method'])} vs {fmt(ev['reach_baseline'])}")
            if ev.get("levels"):
                lines.append(f"  retention at matched {ev['unlearning_metric']}: "
                             f"{ev['better']} better, {ev['worse']} worse of {len(ev['levels'])}")
                for lv, a, sa, b, sb in zip(ev["levels"], ev["retention_method"], ev["stderr_method"],
                                            ev["retention_baseline"], ev["stderr_baseline"]):
                    lines.append(f"    {fmt(lv)}: {fmt(a)} ± {fmt(sa) or '-'} vs {fmt(b)} ± {fmt(sb) or '-'}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "statement": self.statement, "verdict": self.verdict, "evidence": self.evidence}


def compare_fronts(td: TaskData, axis: Axis, method: str, baseline: str, n_levels: int = N_LEVELS) -> dict[str, Any]:
    """Hypervolumes, strongest unlearning and retention at matched levels of two methods on one axis pair."""
    ev: dict[str, Any] = {"task": td.name, "axes": axis_label(axis), "unlearning_metric": axis[0],
                          "retention_metric": axis[1], "method": method, "baseline": baseline}
    mx = td.maximize(axis)
    pa, sa, _ = td.method_points(method, axis)
    pb, sb, _ = td.method_points(baseline, axis)
    missing = [m for m, p in ((method, pa), (baseline, pb)) if p.shape[0] == 0]
    if missing:
        ev.update(verdict=NOT_ENOUGH_DATA, reason=f"no ok points for {', '.join(missing)}")
        return ev
    ref, src = td.reference(axis)
    ev["reference"] = f"{src} ({fmt(ref[0])}, {fmt(ref[1])})" if ref is not None else src
    ev["hv_method"] = hypervolume_2d(pa, ref, mx) if ref is not None else math.nan
    ev["hv_baseline"] = hypervolume_2d(pb, ref, mx) if ref is not None else math.nan
    su = 1.0 if mx[0] else -1.0
    sr = 1.0 if mx[1] else -1.0
    ev["reach_method"] = float(pa[np.argmax(su * pa[:, 0]), 0])
    ev["reach_baseline"] = float(pb[np.argmax(su * pb[:, 0]), 0])
    ia, ib = pareto_front(pa, mx), pareto_front(pb, mx)
    fa, fb = pa[ia], pb[ib]
    lo, hi = max(fa[:, 0].min(), fb[:, 0].min()), min(fa[:, 0].max(), fb[:, 0].max())
    if lo > hi:
        ev.update(verdict=NOT_ENOUGH_DATA, reason=f"the fronts' {axis[0]} ranges do not overlap", levels=[])
        return ev
    levels = np.array([lo]) if lo == hi else np.linspace(lo, hi, n_levels)
    ra, rb = interpolate_front(fa, levels), interpolate_front(fb, levels)
    # stderr of the interpolated retention, interpolated the same way (a reading aid, not used in the verdict)
    ea = interpolate_front(np.column_stack([fa[:, 0], sa[ia, 1]]), levels)
    eb = interpolate_front(np.column_stack([fb[:, 0], sb[ib, 1]]), levels)
    diff = sr * (ra - rb)
    tol = 1e-9 * np.maximum(1.0, np.maximum(np.abs(ra), np.abs(rb)))
    ev.update(levels=[float(v) for v in levels], retention_method=[float(v) for v in ra],
              retention_baseline=[float(v) for v in rb], stderr_method=[float(v) for v in ea],
              stderr_baseline=[float(v) for v in eb], better=int(np.sum(diff > tol)), worse=int(np.sum(diff < -tol)))
    return ev


def _is_kl_like(metric: str) -> bool:
    return any(k in metric.lower() for k in _KL_LIKE)


def _kl_axes(td: TaskData, formulation: str) -> list[Axis]:
    pairs = {(e.get("unlearning_metric"), e.get("retention_metric"))
             for r in td.ok for f, e in oracle_fronts(r).items() if f == formulation}
    axes = [a for a in td.axes if a in pairs]
    if not axes:
        axes = [a for a in td.axes if _is_kl_like(a[0])]
    return axes or td.axes[:1]


def _neutral_axes(td: TaskData) -> list[Axis]:
    return [a for a in td.axes if not _is_kl_like(a[0])] or list(td.axes)


def _verdict(evidence: list[dict]) -> str:
    with_data = [e["verdict"] for e in evidence if e["verdict"] != NOT_ENOUGH_DATA]
    if not with_data:
        return NOT_ENOUGH_DATA
    return DOES_NOT_HOLD if DOES_NOT_HOLD in with_data else HOLDS


def _dominance(ev: dict) -> None:
    if "verdict" in ev:  # already decided: not enough data
        return
    hv_ok = not (ev["hv_method"] < ev["hv_baseline"] - 1e-12 * max(1.0, abs(ev["hv_baseline"])))
    ok = hv_ok and ev["worse"] == 0 and ev["better"] >= 1
    ev["verdict"] = HOLDS if ok else DOES_NOT_HOLD
    if not ok:
        why = []
        if not hv_ok:
            why.append("smaller hypervolume")
        if ev["worse"]:
            why.append(f"worse retention at {ev['worse']} matched level(s)")
        if not ev["better"]:
            why.append("better retention at no matched level")
        ev["reason"] = "; ".join(why)


def _match_and_preserve(ev: dict, td: TaskData, axis: Axis) -> None:
    if "verdict" in ev:
        return
    su = 1.0 if td.maximize(axis)[0] else -1.0
    u = td.all_points(axis)[:, 0]
    span = float(u.max() - u.min()) if u.size else 0.0
    matches = su * ev["reach_method"] >= su * ev["reach_baseline"] - MATCH_TOLERANCE * span
    ok = matches and ev["worse"] == 0 and ev["better"] >= 1
    ev["verdict"] = HOLDS if ok else DOES_NOT_HOLD
    if not ok:
        why = []
        if not matches:
            why.append(f"{ev['method']} does not reach {ev['baseline']}'s strongest unlearning")
        if ev["worse"]:
            why.append(f"worse retention at {ev['worse']} matched level(s)")
        if not ev["better"]:
            why.append("better retention at no matched level")
        ev["reason"] = "; ".join(why)


def check_claims(records: Iterable[dict]) -> list[Claim]:
    """Check the paper's three claims on trial records (the newest record per task and trial_id counts).

    Returns:
        Three :class:`Claim` objects, in the order of ``CLAIMS``.
    """
    tasks = collect_tasks(records)
    out = []
    for key, kind, method, baselines, statement in CLAIMS:
        evidence: list[dict] = []
        for td in tasks.values():
            if td.kind != kind or method not in td.methods:
                continue
            present = [b for b in baselines if b in td.methods]
            axes = _neutral_axes(td) if key == "lik-preserves-retained" else _kl_axes(td, method)
            for baseline in present:
                for axis in axes:
                    ev = compare_fronts(td, axis, method, baseline)
                    if key == "lik-preserves-retained":
                        _match_and_preserve(ev, td, axis)
                    else:
                        _dominance(ev)
                    evidence.append(ev)
        if not evidence:
            evidence_note = [{"task": "-", "axes": "-", "method": method, "baseline": "/".join(baselines),
                              "verdict": NOT_ENOUGH_DATA,
                              "reason": f"no {kind} task with {method} and any of {', '.join(baselines)}"}]
            out.append(Claim(key, statement, NOT_ENOUGH_DATA, evidence_note))
            continue
        out.append(Claim(key, statement, _verdict(evidence), evidence))
    return out


def format_claims(claims: list[Claim]) -> str:
    """Plain-text report: one block per claim with its verdict and the numbers behind it."""
    blocks = []
    for i, c in enumerate(claims, 1):
        blocks.append("\n".join([f"({i}) {c.statement}", f"    verdict: {c.verdict}"]
                                + [f"    {line}" for line in c.evidence_lines()]))
    return "\n\n".join(blocks)

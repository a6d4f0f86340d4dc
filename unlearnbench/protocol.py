"""The comparison protocol's fixed points: where unlearning starts and where it should stop, per task and metric.

**The retrained model is the target.** On every unlearning axis a task has two anchors: the pretrained model's value
(``m_pretrained`` companions that every trial records) and the retrained model's (the network trained without the
forget set, scored by the task's own evaluation: ``unlearnbench attack`` records it as a ``reference`` trial; a task
without one declares the value in ``Task.retrained_targets``). From them, before any method's results are looked at:

- **levels**: retention is read and compared at fixed fractions (:data:`FRACTIONS`, 25/50/75/100 %) of the way from
  the pretrained value to the retrained one;
- **clipping**: a value past the retrained one earns nothing more: fronts and hypervolumes use
  :meth:`Anchor.clip`; how far past it a model went is its own column (:meth:`Anchor.overshoot`, in units of the
  pretrained-to-retrained distance);
- **diverged**: a trial more than ``Task.overshoot_limit`` (default 10) such distances past the retrained value on
  any unlearning axis has left the regime the benchmark measures: :func:`rejudge` marks it ``diverged``, like a
  trial outside the task's sane ranges (which are re-applied too, so records made before a range was tightened are
  judged by today's rule).

Constrained trials carry one more judgement, :func:`settled`: the duals changed by at most 5 % over the last 20 % of
the steps *and* every constraint is met within 5 % of its threshold. An unsettled trial is still a point on the
leaderboard's fronts (counted apart), but never enters a claim as a result of its formulation.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Iterable

logger = logging.getLogger(__name__)

FRACTIONS = (0.25, 0.5, 0.75, 1.0)
SETTLE_TOL = 0.05  # relative dual change over the last 20 % of steps
DEFAULT_OVERSHOOT_LIMIT = 10.0
REJUDGED = "_rejudged"  # record key: why the analysis changed an ok trial's status


@dataclass(frozen=True)
class Anchor:
    """One unlearning metric's two references: ``pretrained`` (nothing unlearned) and ``retrained`` (the target)."""

    metric: str
    pretrained: float
    retrained: float
    source: str  # where the retrained value comes from: "reference (n seeds)" | "declared by the task"
    near: float | None = None  # the edge of the retrained value's 95 % interval toward the pretrained value

    @property
    def reached_at(self) -> float:
        """A value this far along counts as the retrained model's: matching it within its own uncertainty."""
        if self.near is None or not math.isfinite(self.near) or not 0.0 < self.progress(self.near) <= 1.0:
            return self.retrained
        return self.near

    @property
    def span(self) -> float:
        """Signed distance from the pretrained value to the retrained one."""
        return self.retrained - self.pretrained

    @property
    def usable(self) -> bool:
        return math.isfinite(self.pretrained) and math.isfinite(self.retrained) and self.span != 0.0

    def progress(self, value: float) -> float:
        """How far ``value`` went from the pretrained value toward the retrained one: 0 = pretrained, 1 = retrained,
        above 1 = past it."""
        return (value - self.pretrained) / self.span

    def levels(self, fractions: Iterable[float] = FRACTIONS) -> list[float]:
        return [self.pretrained + f * self.span for f in fractions]

    def clip(self, value):
        """``value`` (a number or an array), or the retrained value where it reached it (within the retrained value's
        interval) or went past it; NaN stays NaN."""
        import numpy as np

        v = np.asarray(value, dtype=float)
        with np.errstate(invalid="ignore"):
            out = np.where(self.progress(v) >= self.progress(self.reached_at), self.retrained, v)
        return float(out) if out.ndim == 0 else out

    def overshoot(self, value: float) -> float:
        """Distance past the retrained value in units of the pretrained-to-retrained distance (0 when short of it)."""
        return max(0.0, self.progress(value) - 1.0) if math.isfinite(value) else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "pretrained": self.pretrained, "retrained": self.retrained,
                "source": self.source, "reached_at": self.reached_at}


def task_class(name: str):
    """The registered task class of a leaderboard key (``task`` or ``task-forgetset``), or None."""
    from unlearnbench.tasks import TASKS

    for key in (name, name.rsplit("-", 1)[0]):
        try:
            return TASKS.get(key)
        except (KeyError, ValueError):
            continue
    return None


def declared(name: str, attr: str, default: Any) -> Any:
    """A protocol constant a task class declares (``retrained_targets``, ``equivalence_margins``,
    ``overshoot_limit``, ``sane_ranges``), ``default`` for an unknown task."""
    cls = task_class(name)
    return getattr(cls, attr, default) if cls is not None else default


def anchors(td) -> dict[str, Anchor]:
    """Per unlearning metric of the task's axes, its anchor (where both ends are known)."""
    out: dict[str, Anchor] = {}
    targets = declared(td.name, "retrained_targets", {}) or {}
    for metric in sorted({a[0] for a in td.axes}):
        pre = td.pretrained_value(metric)
        ref = td.reference_value("retrained", metric)
        near = None
        if ref is not None and math.isfinite(ref[0]):
            retrained, source = float(ref[0]), f"retrained reference ({ref[3]} seed{'s' if ref[3] != 1 else ''})"
            lo, hi = ref[1], ref[2]
            if pre is not None and math.isfinite(lo) and math.isfinite(hi):
                near = hi if pre[0] > retrained else lo
        elif metric in targets:
            retrained, source = float(targets[metric]), "declared by the task"
        else:
            continue
        if pre is None or not math.isfinite(pre[0]):
            continue
        anchor = Anchor(metric, float(pre[0]), retrained, source, near)
        if anchor.usable:
            out[metric] = anchor
    return out


def _out_of_range(task, metrics: dict) -> str | None:
    """The first of a record's metrics outside today's sane range of ``task`` (``Task.insane_metrics``), or None."""
    from unlearnbench.tasks.base import MetricValue

    values = {}
    for metric, m in metrics.items():
        try:
            v = float(m.get("value") if isinstance(m, dict) else m)
        except (TypeError, ValueError):
            continue
        role = m.get("role") if isinstance(m, dict) and m.get("role") in ("unlearning", "retention") else "info"
        values[metric] = MetricValue(v, role=role)
    bad = task.insane_metrics(values)
    return f"{bad[0]}: outside the task's sane range" if bad else None


def rejudge(name: str, trials: list[dict], anchor_map: dict[str, Anchor]) -> int:
    """Mark ok trials ``diverged`` (in place; the reason under :data:`REJUDGED`) where an unlearning metric went more
    than the task's ``overshoot_limit`` past the retrained value, or a metric left the task's sane range. Returns
    how many it marked."""
    limit = float(declared(name, "overshoot_limit", DEFAULT_OVERSHOOT_LIMIT))
    cls = task_class(name)
    task = cls.__new__(cls) if cls is not None else None  # today's class-level sane ranges; no task is built
    n = 0
    for r in trials:
        if r.get("status") != "ok":
            continue
        metrics = r.get("metrics") if isinstance(r.get("metrics"), dict) else {}
        why = _out_of_range(task, metrics) if task is not None else None
        for metric, a in sorted(anchor_map.items()):
            m = metrics.get(metric)
            v = m.get("value") if isinstance(m, dict) else None
            over = a.overshoot(float(v)) if why is None and isinstance(v, (int, float)) else 0.0
            if over > limit:
                why = (f"{metric} = {float(v):.6g} is {over:.3g}x the pretrained-to-retrained distance past the "
                       f"retrained model's {a.retrained:.6g} (limit {limit:g})")
        if why is not None:
            r["status"], r[REJUDGED] = "diverged", why
            n += 1
    return n


def settled(record: dict) -> bool | None:
    """Whether a constrained trial ended settled: dual change <= 5 % over the last 20 % of steps and every constraint
    met within 5 % (``train.convergence``). None for an unconstrained trial (no duals)."""
    train = record.get("train") if isinstance(record.get("train"), dict) else {}
    conv = train.get("convergence") if isinstance(train.get("convergence"), dict) else {}
    if isinstance(conv.get("settled"), bool):  # recorded by the runner since the stop rule
        return conv["settled"]
    change = conv.get("dual_rel_change")
    met = conv.get("constraints_met", train.get("constraints_met"))
    if change is None and met is None:
        return None
    try:
        return bool(met) and float(change) <= SETTLE_TOL
    except (TypeError, ValueError):
        return False

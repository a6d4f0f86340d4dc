"""One trial spec -> one record: dispatch by kind (a training trial to :mod:`unlearnbench.runner`, an attack trial of
the robustness ladder to :mod:`unlearnbench.robustness`); a failure becomes a record. With the shared work done once
before the trials (:func:`prepare_task`) and the sweep's console between them (:class:`Heartbeat`)."""
from __future__ import annotations

import logging
import time
import traceback
from typing import Any, Callable

from unlearnbench.config import SweepPlan
from unlearnbench.progress import EVERY_S
from unlearnbench.records import base_record
from unlearnbench.robustness.plan import prepare as prepare_attacks
from unlearnbench.robustness.trial import run_attack_trial
from unlearnbench.runner import Report, run_trial
from unlearnbench.tasks import TASKS

logger = logging.getLogger(__name__)


def execute_trial(spec: dict[str, Any], report: Report | None = None) -> dict[str, Any]:
    """Run a trial; an exception becomes a failed record (the sweep goes on). ``report``: see
    :func:`unlearnbench.runner.train`."""
    t0 = time.perf_counter()
    try:
        if spec.get("attack"):  # a robustness-ladder trial (unlearnbench attack): same executor, same records
            return run_attack_trial(spec)
        return run_trial(spec, report)
    except Exception as e:  # noqa: BLE001 - every failure is recorded, never lost
        logger.warning("trial %s failed: %s", spec["trial_id"], e)
        record = base_record(spec)
        tb = traceback.format_exc().strip().splitlines()
        record.update(status="failed", error=f"{type(e).__name__}: {e}", traceback="\n".join(tb[-12:]),
                      timing={"total_s": time.perf_counter() - t0})
        return record


def prepare_task(plan: SweepPlan) -> None:
    """Expensive shared work (pretraining, reference statistics) once, in the driver, before any trial."""
    cache_dir = plan.trials[0].get("cache_dir") if plan.trials else None
    TASKS.get(plan.task)(plan.task_options, cache_dir=cache_dir).prepare()
    if any(t.get("attack") for t in plan.trials):  # the robustness ladder's retrained references
        prepare_attacks(plan)


def progress_line(done: int, total: int, rec: dict, eta_s: float | None = None) -> str:
    eta = f"  (sweep ETA {_duration(eta_s)})" if eta_s is not None and done < total else ""
    if rec["status"] != "ok":
        return f"[{done}/{total}] {rec['trial_id']:<28} {rec['status'].upper()}  {rec.get('error')}{eta}"
    axes = (rec.get("task") or {}).get("axes") or []
    shown = []
    for name in dict.fromkeys(n for pair in axes[:2] for n in pair):
        m = rec["metrics"].get(name)
        if m is not None and m["value"] is not None:
            shown.append(f"{name}={m['value']:.4g}")
    duals = (rec.get("train") or {}).get("final_duals")
    if duals:
        shown.append("lambda=[" + ",".join(f"{d:.3g}" for d in duals) + "]")
    t = (rec.get("timing") or {}).get("total_s") or 0.0
    return f"[{done}/{total}] {rec['trial_id']:<28} ok {t:6.1f}s  " + "  ".join(shown) + eta


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class Heartbeat:
    """The sweep's console between finished trials: a line per finished trial with the running count and the sweep's
    ETA (elapsed time per finished trial, times what is left), and, when nothing finished for ``every_s``, a line with
    each running trial's latest intermediate result (step, objective, duals) so a long trial is never silent."""

    def __init__(self, echo: Callable[[str], None], total: int, every_s: float | None = None):
        self.echo, self.total, self.every_s = echo, total, EVERY_S if every_s is None else every_s
        self.done, self.running = 0, {}
        self.t0 = self.last = time.monotonic()

    def note(self, trial_id: str, row: dict) -> None:
        """An intermediate result of a running trial (:func:`unlearnbench.runner.progress_row`)."""
        self.running[trial_id] = row
        self.tick()

    def finished(self, rec: dict) -> None:
        self.done += 1
        self.running.pop(rec["trial_id"], None)
        elapsed = time.monotonic() - self.t0
        self.echo(progress_line(self.done, self.total, rec, elapsed / self.done * (self.total - self.done)))
        self.last = time.monotonic()

    def tick(self) -> None:
        """Print the running trials' state if the console has been silent for ``every_s``."""
        if time.monotonic() - self.last < self.every_s:
            return
        parts = []
        for tid, row in sorted(self.running.items()):
            loss = row.get("loss") or {}
            obj = loss.get("objective", next(iter(loss.values()), None))
            lam = row.get("lambda")
            parts.append(f"{tid} step {row.get('step')}/{row.get('steps')}"
                         + (f" objective={obj:.4g}" if obj is not None else "")
                         + (" lambda=[" + ",".join(f"{v:.3g}" for v in lam.values()) + "]" if lam else ""))
        what = "; ".join(parts) if parts else "trials starting or evaluating"
        self.echo(f"      [{self.done}/{self.total} done, {_duration(time.monotonic() - self.t0)}] running: {what}")
        self.last = time.monotonic()

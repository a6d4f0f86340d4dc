"""Execute a sweep plan: trials as Ray Tune trials (local Ray by default, a cluster with ``address``; see
:mod:`unlearnbench.raytune`) or one after another in this process (``executor="serial"``: debugging, and the baseline
for Ray's overhead). Every finished trial is appended to ``records.jsonl`` at once, so a killed sweep loses nothing
finished and ``resume`` re-runs only the rest."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

from unlearnbench.cache import atomic_write_bytes
from unlearnbench.config import SweepPlan
from unlearnbench.records import RECORDS, append_record, iter_latest, read_records
from unlearnbench.runner import execute_trial, set_default_env, summary_row

logger = logging.getLogger(__name__)


class TuneOptions(NamedTuple):
    """Where and how Ray Tune runs the trials."""
    address: str | None = None
    num_cpus: int | None = None
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    max_concurrent: int | None = None
    callbacks: list[str] | None = None


FINISHED = ("ok", "diverged")  # diverged: a deterministic outcome (the method broke the model), not re-run on resume


def finished_ok(run_dir: str, statuses: tuple[str, ...] = FINISHED) -> set[str]:
    """Trial ids whose newest record in ``run_dir`` has one of ``statuses``."""
    path = Path(run_dir) / RECORDS
    if not path.exists():
        return set()
    return {r["trial_id"] for r in iter_latest(read_records([path])) if r.get("status") in statuses}


PLAN = "plan.json"
RESUME_KEYS = ("task", "task_options", "method", "method_config", "grid", "seed", "save_models")  # what a trial is


def check_resume(plan: SweepPlan) -> None:
    """``ConfigError`` unless ``plan`` is the sweep its run directory holds (its ``plan.json``): the same trials with
    the same settings. A resumed sweep that ran other trials would count records made under other settings as
    done and mix them into one table."""
    from unlearnbench.settings import ConfigError, read_small_file

    path = Path(plan.run_dir) / PLAN
    if not path.exists():
        return  # stopped before planning (or made by an older version): args.json alone defines it
    try:
        held = json.loads(read_small_file(path, PLAN, 64 << 20))  # MAX_TRIALS trials of ~1 kB each
        old = _trial_keys(held["trials"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(f"--resume {plan.run_dir}: {path} cannot be read ({e}); is it a run directory?") from None
    new = _trial_keys(json.loads(json.dumps(plan.trials, sort_keys=True)))
    if old == new:
        return
    added, dropped = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    changed = sorted(t for t in set(old) & set(new) if old[t] != new[t])
    what = [f"{len(added)} new trial(s) ({', '.join(added[:3])})" if added else "",
            f"{len(dropped)} of its trial(s) left out ({', '.join(dropped[:3])})" if dropped else "",
            f"other settings for {len(changed)} trial(s) ({changed[0]}: "
            f"{', '.join(k for k in RESUME_KEYS if old[changed[0]][k] != new[changed[0]][k])})" if changed else ""]
    raise ConfigError(f"--resume {plan.run_dir} continues the sweep there, but this one has "
                      f"{'; '.join(w for w in what if w)}; start a new run (--out) for new settings, seeds, grids or "
                      f"methods")


def _trial_keys(trials: list[dict]) -> dict[str, dict]:
    return {str(t["trial_id"]): {k: t.get(k) for k in RESUME_KEYS} for t in trials}


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
        from unlearnbench.progress import EVERY_S

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


def prepare_task(plan: SweepPlan) -> None:
    """Expensive shared work (pretraining, reference statistics) once, in the driver, before any trial."""
    from unlearnbench.tasks import TASKS

    cache_dir = plan.trials[0].get("cache_dir") if plan.trials else None
    TASKS.get(plan.task)(plan.task_options, cache_dir=cache_dir).prepare()
    if any(t.get("attack") for t in plan.trials):  # the robustness ladder's retrained references
        from unlearnbench.attack import prepare

        prepare(plan)


def run_sweep(plan: SweepPlan, executor: str = "ray", resume: bool = False, address: str | None = None,
              num_cpus: int | None = None, cpus_per_trial: float = 1, gpus_per_trial: float = 0,
              max_concurrent: int | None = None, echo: Callable[[str], None] = print,
              tune_callbacks: list[str] | None = None, rerun_diverged: bool = False) -> list[dict]:
    """Run the plan's trials not yet finished ok; returns the latest record of every trial in the run dir.
    ``rerun_diverged`` (with ``resume``) runs diverged trials again too: after a task's sane ranges changed, the new
    record (same seed, same draws) supersedes the old one.

    Raises ``RecordWriteError`` (the sweep stops; finished records are kept) when a record cannot be written, and
    ``ClusterError`` when the cluster cannot be reached or cannot hold one trial."""
    from unlearnbench.cluster import check_resources

    set_default_env()
    check_resources(cpus_per_trial, gpus_per_trial, num_cpus, local=address is None)
    run_dir = Path(plan.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / RECORDS).exists() and not resume:
        done_before = finished_ok(str(run_dir))
        if done_before:
            raise FileExistsError(f"{run_dir} already holds records of {len(done_before)} finished trial(s); "
                                  f"use --resume to continue it or --out to start a new run")
    skip = finished_ok(str(run_dir), ("ok",) if rerun_diverged else FINISHED) if resume else set()
    todo = [t for t in plan.trials if t["trial_id"] not in skip]
    atomic_write_bytes(run_dir / PLAN, json.dumps({"task": plan.task, "task_options": plan.task_options,
                                                          "trials": plan.trials}, indent=1, sort_keys=True).encode())
    if skip:
        echo(f"resuming {run_dir}: {len(skip)} trial(s) already done, {len(todo)} to run")
    for t in todo:
        t["threads"] = max(1, int(cpus_per_trial))
        t["gpus"] = gpus_per_trial
    if todo and executor == "serial":
        prepare_task(plan)
        _run_serial(todo, str(run_dir), echo)
    elif todo and executor == "ray":
        from unlearnbench.raytune import run_tune

        run_tune(todo, plan, TuneOptions(address, num_cpus, cpus_per_trial, gpus_per_trial, max_concurrent,
                                         tune_callbacks), echo)
    elif todo:
        raise ValueError(f"executor {executor!r}; valid: ray, serial")
    records = sorted(iter_latest(read_records([run_dir / RECORDS])), key=lambda r: r["trial_id"])
    write_summary(str(run_dir), records)  # every trial the folder holds: a row once written is never dropped
    wanted = {t["trial_id"] for t in plan.trials}
    return [r for r in records if r["trial_id"] in wanted]


def _run_serial(todo: list[dict], run_dir: str, echo) -> None:
    beat = Heartbeat(echo, len(todo))
    for spec in todo:
        rec = execute_trial(spec, report=lambda row, tid=spec["trial_id"]: beat.note(tid, row))
        append_record(run_dir, rec)
        beat.finished(rec)


def write_summary(run_dir: str, records: list[dict]) -> Path:
    import pandas as pd

    path = Path(run_dir) / "summary.csv"
    df = pd.DataFrame([summary_row(r) for r in records])
    atomic_write_bytes(path, df.to_csv(index=False, float_format="%.6g").encode())
    return path


def format_table(records: list[dict], max_metrics: int = 4) -> str:
    """A compact text table of the trials: method, value, seed, status and the task's primary-axis metrics."""
    if not records:
        return "(no trials)"
    axes = (records[0].get("task") or {}).get("axes") or []
    names = list(dict.fromkeys(n for pair in axes for n in pair))[:max_metrics]
    head = ["method", "param", "value", "seed", "status"] + names + ["gap", "time_s"]
    rows = []
    for r in records:
        g = r.get("grid") or {}
        met = r.get("metrics") or {}
        fronts = (r.get("oracle") or {}).get("fronts") or {}
        own = fronts.get(r["method"]) or next(iter(fronts.values()), {})
        gap = own.get("gap")
        rows.append([r["method"], str(g.get("param")), f"{g.get('value'):g}", str(r["seed"]), r["status"]]
                    + [f"{met[n]['value']:.4g}" if n in met and met[n]["value"] is not None else "-" for n in names]
                    + [f"{gap:.3g}" if gap is not None else "-", f"{(r.get('timing') or {}).get('total_s') or 0:.1f}"])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use the CLI: unlearnbench run ...")

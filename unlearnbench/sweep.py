"""Execute a sweep plan: trials as Ray Tune trials (local Ray by default, a cluster with ``address``; see
:mod:`unlearnbench.raytune`) or one after another in this process (``executor="serial"``: debugging, and the baseline
for Ray's overhead). Every finished trial is appended to ``records.jsonl`` at once, so a killed sweep loses nothing
finished and ``resume`` re-runs only the rest."""
from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

from unlearnbench.cache import atomic_write_bytes
from unlearnbench.config import SweepPlan, as_dict
from unlearnbench.raytune import TuneOptions
from unlearnbench.records import RECORDS, append_record, iter_latest, read_records
from unlearnbench.runner import set_default_env
from unlearnbench.trials import Heartbeat, execute_trial, prepare_task

logger = logging.getLogger(__name__)


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
    new = _trial_keys(json.loads(json.dumps([as_dict(t) for t in plan.trials], sort_keys=True)))
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


def with_resources(spec: Mapping[str, Any], threads: int, gpus: float) -> Mapping[str, Any]:
    """The spec with the executor's threads and GPUs per trial (a frozen spec is copied, a dict updated)."""
    if hasattr(spec, "replace"):
        return spec.replace(threads=threads, gpus=gpus)
    return {**spec, "threads": threads, "gpus": gpus}


def longest_first(todo: list) -> list:
    """Trials in order of their step budget, largest first (stable among equals): with several running at once,
    a long trial started last would leave the other workers idle at the end of the sweep. The budget is the stop
    rule's cap where there is one, else ``steps``; a trial without resolved settings (an attack trial) keeps its
    place after those with them."""
    def budget(spec) -> float:
        settings = spec.get("settings") or {}
        steps = settings.get("max_steps") or settings.get("steps")
        return -float(steps) if isinstance(steps, (int, float)) else 0.0

    return sorted(todo, key=budget)


def _trial_keys(trials: list[dict]) -> dict[str, dict]:
    return {str(t["trial_id"]): {k: t.get(k) for k in RESUME_KEYS} for t in trials}


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs: the executor (``ray`` or ``serial``), whether it resumes its run directory (and then runs
    diverged trials again too: ``rerun_diverged``, after a task's sane ranges changed; the new record, same seed and
    draws, supersedes the old one), where its console lines go, and where and how wide Ray Tune runs the trials."""

    executor: str = "ray"
    resume: bool = False
    rerun_diverged: bool = False
    echo: Callable[[str], None] = print
    tune: TuneOptions = TuneOptions()

    @classmethod
    def of(cls, **settings: Any) -> SweepOptions:
        """Options from flat settings: this class's fields and :class:`~unlearnbench.raytune.TuneOptions`' (``address``,
        ``num_cpus``, ``cpus_per_trial``, ``gpus_per_trial``, ``max_concurrent``, ``tune_callbacks``)."""
        tune = {("callbacks" if k == "tune_callbacks" else k): settings.pop(k) for k in list(settings)
                if k in TuneOptions._fields or k == "tune_callbacks"}
        unknown = set(settings) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"run_sweep: unknown setting(s) {', '.join(sorted(unknown))}")
        return cls(**settings, tune=TuneOptions(**tune))


def run_sweep(plan: SweepPlan, options: SweepOptions | None = None, **settings: Any) -> list[dict]:
    """Run the plan's trials not yet finished ok (see :class:`SweepOptions`; ``settings``, the same as flat keywords,
    for a caller that sets one or two); returns the latest record of every trial in the run dir.

    Raises ``RecordWriteError`` (the sweep stops; finished records are kept) when a record cannot be written, and
    ``ClusterError`` when the cluster cannot be reached or cannot hold one trial."""
    from unlearnbench.cluster import check_resources

    if options is None:
        options = SweepOptions.of(**settings)
    elif settings:
        raise TypeError("run_sweep: give the options object or flat settings, not both")
    executor, resume, rerun_diverged, echo, tune = (options.executor, options.resume, options.rerun_diverged,
                                                    options.echo, options.tune)
    set_default_env()
    check_resources(tune.cpus_per_trial, tune.gpus_per_trial, tune.num_cpus, local=tune.address is None)
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
                                                          "trials": [as_dict(t) for t in plan.trials]},
                                                         indent=1, sort_keys=True).encode())
    if skip:
        echo(f"resuming {run_dir}: {len(skip)} trial(s) already done, {len(todo)} to run")
    todo = [with_resources(t, max(1, int(tune.cpus_per_trial)), tune.gpus_per_trial) for t in todo]
    if todo and executor == "serial":
        prepare_task(plan)
        _run_serial(todo, str(run_dir), echo)
    elif todo and executor == "ray":
        from unlearnbench.raytune import run_tune

        run_tune(longest_first(todo), plan, tune, echo)
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


def summary_row(record: dict[str, Any]) -> dict[str, Any]:
    """Flat row for summary.csv."""
    row = {"trial_id": record["trial_id"], "task": record["task"]["name"], "method": record["method"],
           "grid": (record.get("grid") or {}).get("name"), "param": (record.get("grid") or {}).get("param"),
           "value": (record.get("grid") or {}).get("value"), "seed": record["seed"], "status": record["status"],
           "error": record.get("error")}
    for name, m in sorted(record.get("metrics", {}).items()):
        row[name] = m["value"]
        row[f"{name}_stderr"] = m.get("stderr")  # the evaluation's own uncertainty, n samples
        row[f"{name}_n"] = m.get("n")
    train = record.get("train") or {}
    if train.get("final_duals") is not None:
        row["duals"] = " ".join(f"{d:.4g}" for d in train["final_duals"])
        row["constraints_met"] = train.get("constraints_met")
    fronts = (record.get("oracle") or {}).get("fronts") or {}
    for fname, f in sorted(fronts.items()):
        if f.get("gap") is not None:
            row[f"gap_{fname}"] = f["gap"]
    row["total_s"] = (record.get("timing") or {}).get("total_s")
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}

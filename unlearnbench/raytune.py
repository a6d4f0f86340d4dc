"""Ray Tune glue: every trial is a Tune trial that reports its training curve as intermediate results (step, loss
terms, duals, constraint estimates every ``log_every`` steps: Tune's loggers, callbacks and schedulers see curves) and
at the end flat numeric metrics (``metrics/<name>``, so ``ResultGrid`` tables see them) together with its record; the
records file stays the source of truth.

* The experiment lives in ``<run dir>/ray_results/<run id>`` (``-resume<n>`` for each ``--resume``) with Tune's
  JSON and CSV results, so ``Tuner.restore(path, trainable=unlearnbench.raytune.trainable).get_results()`` reopens it
  (one row per trial in ``get_dataframe()``, each trial's curve in ``Result.metrics_dataframe``).

* A local sweep's worker appends its record itself the moment the trial ends (a killed driver loses nothing
  finished); on a cluster the driver appends what the workers report.
* A trial whose worker process died is retried (``FailureConfig``) before it is recorded as failed, with the error
  text and traceback Ray kept for it. Python exceptions inside a trial are results (a failed record), not retried.
* A record that cannot be written (full disk) stops the whole sweep with that message; nothing finished is lost.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from unlearnbench.records import RecordWriteError, append_record

if TYPE_CHECKING:
    from unlearnbench.config import SweepPlan

logger = logging.getLogger(__name__)

MAX_RETRIES = 2  # a worker that died (OOM kill, lost node) is restarted this often before the trial is failed
TUNE_DIR = "ray_results"  # under the run directory: the Tune experiments of the run, restorable


def experiment_name(plan: SweepPlan) -> str:
    """The run id for the first sweep of a run directory, ``<run id>-resume<n>`` for the n-th ``--resume`` (each
    Tune experiment holds the trials that one invocation ran; ``records.jsonl`` holds them all)."""
    root = os.path.join(plan.run_dir, TUNE_DIR)
    name, n = plan.run_id, 0
    while os.path.exists(os.path.join(root, name)):
        n += 1
        name = f"{plan.run_id}-resume{n}"
    return name


def flat_metrics(rec: dict) -> dict[str, Any]:
    """What Tune sees of a record: status flags, finite metric values, duals and timings, all numbers."""
    out: dict[str, Any] = {"trial_ok": int(rec.get("status") == "ok"), "trial_diverged":
                           int(rec.get("status") == "diverged")}
    metrics = {name: m.get("value") for name, m in (rec.get("metrics") or {}).items() if isinstance(m, dict)}
    out["metrics"] = {k: float(v) for k, v in metrics.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    duals = (rec.get("train") or {}).get("final_duals") or []
    out["lambda"] = {str(i): float(d) for i, d in enumerate(duals) if d is not None}
    out["trial_s"] = float((rec.get("timing") or {}).get("total_s") or 0.0)
    value = (rec.get("grid") or {}).get("value")
    if isinstance(value, (int, float)):
        out["grid_value"] = float(value)
    return out


def trainable(config: dict) -> None:
    """Run one trial and report it; a local worker writes the record first (a failed write is passed on to the
    driver, which stops the sweep)."""
    from ray import tune

    from unlearnbench.trials import execute_trial

    waited = [0.0]

    def timed_report(row: dict) -> None:  # Tune's function API blocks here until the driver has taken the result
        t0 = time.perf_counter()
        tune.report(row)
        waited[0] += time.perf_counter() - t0

    rec = execute_trial(config["spec"], report=timed_report)  # intermediate results: runner.progress_row
    rec.setdefault("timing", {})["report_s"] = waited[0]
    report = flat_metrics(rec)
    if config.get("worker_writes"):
        try:
            append_record(config["run_dir"], rec)
        except RecordWriteError as e:
            report["write_error"] = str(e)
    report["record"] = json.dumps(rec, default=str)
    tune.report(report)


def _trial_name(trial) -> str:
    return trial.config["spec"]["trial_id"]


def error_text(trial) -> tuple[str, str | None]:
    """(one-line error, full text) of a trial Ray gave up on, read from Ray's error file before it is removed."""
    text = None
    try:  # Ray writes the error into the trial's local staging folder; the storage copy (get_error) is synced later
        local = trial.error_file
        if local and os.path.isfile(local):
            with open(local, encoding="utf-8", errors="replace") as f:
                text = f.read()
        text = text or trial.get_error()
    except Exception:  # noqa: BLE001 - the message below still says what happened
        text = None
    if not text:
        return "Ray trial error: the worker process died", None
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip() and not ln.startswith("Failure #")]
    last = next((ln.strip() for ln in reversed(lines) if not ln[0].isspace()), "worker died")
    if len(last) > 200:  # Ray's dead-actor text runs on with generic advice; the full text is in the traceback
        last = last[:200].rsplit(" ", 1)[0] + " ..."
    return f"Ray trial error (after {trial.num_failures} attempt(s)): {last}", "\n".join(lines[-60:])


def _callback_classes():
    from ray import tune

    class Recorder(tune.Callback):
        """Writes records (cluster mode, failed trials), prints one progress line per finished trial and, between
        them, the running trials' latest intermediate results (:class:`~unlearnbench.trials.Heartbeat`), notes a
        write failure."""

        def __init__(self, plan: SweepPlan, total: int, local: bool, echo: Callable[[str], None]):
            from unlearnbench.trials import Heartbeat

            self.plan, self.total, self.local, self.echo = plan, total, local, echo
            self.beat = Heartbeat(echo, total)
            self.written, self.abort = set(), None

        def _write(self, rec: dict) -> None:
            try:
                append_record(self.plan.run_dir, rec)
            except RecordWriteError as e:
                self.abort = self.abort or str(e)

        def on_trial_result(self, iteration, trials, trial, result, **info):
            if "record" not in result:  # an intermediate result: the trial's curve so far
                self.beat.note(_trial_name(trial), result)
                return
            rec = json.loads(result["record"])
            if not self.local or result.get("write_error"):  # on a cluster the driver owns the records file
                self._write(rec)
            self.written.add(rec["trial_id"])
            self.beat.finished(rec)

        def on_step_end(self, iteration, trials, **info):
            self.beat.tick()  # a line at least every EVERY_S while trials run (evaluation reports nothing)

        def on_trial_recover(self, iteration, trials, trial, **info):
            self.echo(f"      {_trial_name(trial)}: worker lost ({error_text(trial)[0]}); retrying "
                      f"({trial.num_failures}/{MAX_RETRIES})")

        def on_trial_error(self, iteration, trials, trial, **info):
            from unlearnbench.records import base_record

            spec = trial.config["spec"]
            if spec["trial_id"] in self.written:
                return
            rec = base_record(spec)
            rec["error"], rec["traceback"] = error_text(trial)
            self._write(rec)
            self.beat.finished(rec)

    class StopOnWriteError(tune.stopper.Stopper):
        """Ends the whole experiment once a record could not be written (the next ones would fail the same way)."""

        def __init__(self, recorder: Recorder):
            self.recorder = recorder

        def __call__(self, trial_id, result) -> bool:
            return self.recorder.abort is not None

        def stop_all(self) -> bool:
            return self.recorder.abort is not None

    return Recorder, StopOnWriteError


def run_tune(todo: list[dict], plan: SweepPlan, opts: TuneOptions, echo: Callable[[str], None]):
    """The trials as one Tune experiment; returns Tune's ``ResultGrid``. Raises ``RecordWriteError`` when a record
    could not be written (the sweep stopped there) and ``ClusterError`` when the cluster cannot run a trial."""
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # JSON and CSV below; TensorBoard on request
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_RESULT_BUFFER_LENGTH", "1")
    import ray
    from ray import tune

    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from unlearnbench.cluster import check_cluster_resources, ray_is_local, ray_session, tune_callbacks
    from unlearnbench.config import as_dict
    from unlearnbench.trials import prepare_task

    t0 = time.perf_counter()
    with ray_session(opts.address, opts.num_cpus, opts.gpus_per_trial):
        logger.info("ray.init took %.1fs", time.perf_counter() - t0)
        local = opts.address is None and ray_is_local()  # workers on this machine write their records themselves
        logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
        check_cluster_resources(ray.cluster_resources(), opts.cpus_per_trial, opts.gpus_per_trial)
        prepare_task(plan)  # once, in the driver, after the cluster is known to fit a trial
        recorder_cls, stopper_cls = _callback_classes()
        recorder = recorder_cls(plan, len(todo), local, echo)
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}),
            param_space={"spec": tune.grid_search([as_dict(t) for t in todo]), "run_dir": plan.run_dir, "worker_writes": local},
            tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=opts.max_concurrent,
                                        trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
            run_config=tune.RunConfig(
                name=experiment_name(plan), storage_path=os.path.join(plan.run_dir, TUNE_DIR), verbose=0,
                callbacks=[recorder, JsonLoggerCallback(), CSVLoggerCallback(), *tune_callbacks(opts.callbacks)],
                failure_config=tune.FailureConfig(max_failures=MAX_RETRIES),
                stop=stopper_cls(recorder)),
        )
        grid = tuner.fit()
    if recorder.abort:
        raise RecordWriteError(recorder.abort)
    return grid


class TuneOptions(NamedTuple):
    """Where and how Ray Tune runs the trials."""
    address: str | None = None
    num_cpus: int | None = None
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    max_concurrent: int | None = None
    callbacks: list[str] | None = None

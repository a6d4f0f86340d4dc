"""``unlearnbench run``: a sweep of methods x grid values x seeds, through Ray Tune or serially."""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

DEFAULT_TASK = "digits-concept"
DEFAULT_GRID, DEFAULT_SEEDS = "eps", "0"
SWEEP_FLAGS = ("task", "methods", "grid", "seeds", "config", "sets", "steps", "model", "allow_download", "save_models")

EPILOG = """examples:
  unlearnbench run --methods rkl,esd --grid eps
  unlearnbench run --task gmm-concept --methods rkl,esd --grid eps --seeds 0,1
  unlearnbench run --task gmm-data --methods fkl,siss --grid my_grid.yaml --set methods.fkl.lr=3e-4
  unlearnbench run --task digits-concept --methods all --grid eps --address auto --gpus-per-trial 0.25
  unlearnbench run --task sd-concept --model ~/models/sd-v1-4 --methods rkl,esd --grid eps --gpus-per-trial 1 --save-models
  unlearnbench run --task ddpm-data --config scripts/paper/ddpm-data.yaml --methods fkl,siss --set task.forget_dir=forget/
  unlearnbench run --resume runs/gmm-concept-20261122-101500
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", default=None, help=f"task name (default: {DEFAULT_TASK}; `unlearnbench ls tasks`)")
    p.add_argument("--methods", default=None, help="comma-separated method names or 'all' (`unlearnbench ls methods`)")
    p.add_argument("--grid", default=None, help=f"grid name of the task (default: {DEFAULT_GRID}) or a YAML grid file")
    p.add_argument("--seeds", default=None, help=f"comma-separated seeds (default: {DEFAULT_SEEDS})")
    p.add_argument("--config", default=None, help="YAML with sections methods:, task:, grids:")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. methods.rkl.lr=1e-4 or task.forget=one (repeatable)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per trial (default: the task's)")
    p.add_argument("--cache-dir", default=None, help="cache of pretrained models and references "
                                                     "(default: $UNLEARNBENCH_CACHE or ~/.cache/unlearnbench)")
    p.add_argument("--model", default=None, metavar="PATH", help="sd-concept / ddpm-data: a save_pretrained folder or a "
                                                                 "HF repo id in the local cache (task.model)")
    p.add_argument("--allow-download", action="store_true", help="let --model download a repo id missing from the cache")


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a sweep: methods x grid values x seeds",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    _common(p)
    p.add_argument("--out", default=None, help="run directory (default: runs/<task>-<timestamp>)")
    p.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR: run the trials without an ok "
                   "or diverged record")
    p.add_argument("--rerun-diverged", action="store_true", help="with --resume: run the diverged trials again too "
                   "(after a task's sane ranges changed; same seeds, so the new record replaces the old verdict)")
    p.add_argument("--executor", choices=["ray", "serial"], default="ray", help="Ray Tune (default) or in-process")
    p.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: start local Ray")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--cpus-per-trial", type=float, default=1, help="CPUs per trial (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0, help="GPUs per trial, fractions allowed (default 0)")
    p.add_argument("--tune-callback", action="append", default=None, metavar="NAME",
                   help="a Ray Tune logger callback: tensorboard, mlflow or wandb (its package must be installed; "
                        "Tune writes every sweep under DIR/ray_results, JSON and CSV always); repeatable")
    p.add_argument("--max-concurrent", type=int, default=None, help="bound on concurrently running trials")
    p.add_argument("--dry-run", action="store_true", help="print the trial table and exit")
    p.add_argument("--no-leaderboard", action="store_true", help="skip the per-run leaderboard under DIR/leaderboard")
    p.add_argument("--save-models", action="store_true", help="each ok trial saves its unlearned weights beside its "
                                                              "record (LoRA adapters or a state dict)")
    p.set_defaults(func=run)


def _plan(args, run_dir: str):
    from unlearnbench.config import ConfigError, load_yaml, plan_trials

    if not args.methods:
        raise ConfigError("--methods is required, e.g. --methods rkl,esd (see `unlearnbench ls methods`)")
    config = load_yaml(args.config) if args.config else {}
    config = _model_options(args, config)
    plan = plan_trials(args.task or DEFAULT_TASK, args.methods, args.grid or DEFAULT_GRID, args.seeds or DEFAULT_SEEDS,
                       run_dir=run_dir, config=config,
                       sets=args.sets, steps=args.steps, cache_dir=args.cache_dir,
                       threads=max(1, int(getattr(args, "cpus_per_trial", 1))))
    plan.trials = [t.replace(save_models=bool(getattr(args, "save_models", False))) for t in plan.trials]
    return plan


def _model_options(args, config: dict) -> dict:
    """--model / --allow-download as task options (absolute paths: trials may run elsewhere)."""
    if not (args.model or args.allow_download):
        return config  # nothing to add; the config's shape is checked when the sweep is planned
    task = dict(config.get("task") or {})
    if args.model:
        task["model"] = os.path.abspath(os.path.expanduser(args.model)) if os.path.exists(
            os.path.expanduser(args.model)) else args.model
    if args.allow_download:
        task["allow_download"] = True
        os.environ["HF_HUB_OFFLINE"] = "0"
    return {**config, "task": task} if task else config


def _resume_args(args) -> None:
    """--resume DIR: the sweep's settings come from DIR/args.json; a flag that defines the sweep (:data:`SWEEP_FLAGS`)
    may be given again only with the value the sweep has (``ConfigError`` otherwise: the run directory's records,
    args.json and summary.csv stay those of one sweep)."""
    import json

    from unlearnbench.config import ConfigError
    from unlearnbench.settings import read_small_file

    path = os.path.join(args.resume, "args.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"--resume {args.resume}: no args.json there; is it a run directory?")
    try:
        saved = json.loads(read_small_file(path, "args.json"))
    except ValueError as e:  # ConfigError (not a small regular text file) or JSON
        raise ValueError(f"--resume {args.resume}: {path} cannot be read ({e}); is it a run directory?") from None
    if not isinstance(saved, dict):
        raise ValueError(f"--resume {args.resume}: {path} does not hold the saved arguments; is it a run directory?")
    if args.out and os.path.abspath(args.out) != os.path.abspath(args.resume):
        raise ConfigError(f"--resume {args.resume} continues the sweep there; --out {args.out} names another folder")
    changed = []
    for k in SWEEP_FLAGS:
        given, had = getattr(args, k, None), saved.get(k)
        if _unset(given):
            setattr(args, k, had if had is not None else given)
        elif not _same_flag(k, given, had):
            flag = "--set" if k == "sets" else f"--{k.replace('_', '-')}"
            changed.append(f"{flag} {_shown(given)} (the sweep has {_shown(had)})")
    if changed:
        raise ConfigError(f"--resume {args.resume} continues the sweep there with its own settings; "
                          f"{'; '.join(changed)}: start a new run (--out) for new settings, seeds, grids or methods")
    if getattr(args, "cache_dir", None) is None and saved.get("cache_dir") is not None:
        args.cache_dir = saved["cache_dir"]  # where its models live; another cache may be given (same keys)
    args.out = args.resume


def _unset(value) -> bool:
    """A flag left out: None, an empty --set list or an unset switch (``--steps 0`` is set)."""
    return value is None or value is False or value == []


def _shown(value) -> str:
    if _unset(value):
        return "none"
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def _same_flag(flag: str, given, had) -> bool:
    """Whether a flag given again on --resume says what the sweep's args.json says (list spacing and, for the
    task, aliases aside)."""
    if flag in ("methods", "seeds") and isinstance(given, str) and isinstance(had, str):
        return [x.strip() for x in given.split(",") if x.strip()] == [x.strip() for x in had.split(",") if x.strip()]
    if flag == "task" and isinstance(had, str):
        from unlearnbench.tasks import TASKS

        try:
            return TASKS.canonical(given) == TASKS.canonical(had)
        except KeyError:
            return False
    if flag in ("config", "model") and isinstance(given, str) and isinstance(had, str):
        return os.path.abspath(os.path.expanduser(given)) == os.path.abspath(os.path.expanduser(had)) or given == had
    return given == had


def check_run_flags(args, run_dir: str) -> None:
    """Counts are positive and the run and cache directories writable, before anything is planned or written."""
    from unlearnbench.cache import default_cache_dir
    from unlearnbench.config import ConfigError, check_writable_dir

    for flag in ("num_cpus", "max_concurrent"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} {value}: must be a whole number >= 1 (or left out)")
    if args.steps is not None and args.steps < 0:
        raise ConfigError(f"--steps {args.steps}: must be a whole number >= 0 (0 evaluates the pretrained model)")
    if getattr(args, "rerun_diverged", False) and not args.resume:
        raise ConfigError("--rerun-diverged re-runs the diverged trials of an existing run: give it with --resume DIR")
    check_writable_dir(run_dir, "--out")
    check_writable_dir(args.cache_dir or default_cache_dir(), "--cache-dir" if args.cache_dir else
                       "cache directory ($UNLEARNBENCH_CACHE or ~/.cache/unlearnbench)")


def _check_resources(args) -> None:
    """Resource flags, Tune callbacks and the cluster address, refused before any work (a cluster address by a short
    probe: Ray's own connection retries would hang for minutes)."""
    from unlearnbench.cluster import check_resources, check_tune_callbacks, probe_address

    check_resources(args.cpus_per_trial, args.gpus_per_trial, args.num_cpus, local=args.address is None)
    check_tune_callbacks(args.tune_callback)
    if args.address is not None and args.executor == "ray":
        probe_address(args.address)


def run(args) -> int:
    from unlearnbench.config import ConfigError

    try:
        if args.resume:
            _resume_args(args)
        task = args.task or DEFAULT_TASK
        run_dir = args.out or os.path.join("runs", f"{task}-{dt.datetime.now():%Y%m%d-%H%M%S}")
        check_run_flags(args, run_dir)
        plan = _plan(args, run_dir)
        if args.resume:
            from unlearnbench.sweep import check_resume

            check_resume(plan)
    except (ConfigError, KeyError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        _check_resources(args)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for t in plan.trials:
            g = t["grid"]
            print(f"{t['trial_id']:32s} {t['method']:6s} {g['param']}={g['value']:g} seed={t['seed']}")
        print(f"{len(plan.trials)} trials, task {plan.task}, run dir {plan.run_dir}")
        return 0
    from unlearnbench.rundir import RunDirBusy, RunDirLock, refuse_existing

    try:  # refused before anything is written: the directory stays byte-identical
        refuse_existing(plan.run_dir, resume=bool(args.resume))
        lock = RunDirLock(plan.run_dir).acquire()
    except (FileExistsError, RunDirBusy) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write the run directory {plan.run_dir}: {e.strerror or e}", file=sys.stderr)
        return 2
    with lock:
        return _sweep(args, plan)


def _sweep(args, plan) -> int:
    """Run the plan in its (locked) run directory, then print the table and build the run's leaderboard."""
    from unlearnbench.pipelines import ModelPathError
    from unlearnbench.rundir import write_args
    from unlearnbench.raytune import TuneOptions
    from unlearnbench.sweep import SweepOptions, format_table, run_sweep

    if not args.resume:  # a resumed sweep keeps the settings it was started with
        saved = {k: getattr(args, k) for k in (*SWEEP_FLAGS, "cache_dir")}
        saved.update(task=plan.task, grid=args.grid or DEFAULT_GRID, seeds=args.seeds or DEFAULT_SEEDS)
        write_args(plan.run_dir, saved)
    print(f"{len(plan.trials)} trials of {plan.task} -> {plan.run_dir}", flush=True)
    try:
        tune = TuneOptions(args.address, args.num_cpus, args.cpus_per_trial, args.gpus_per_trial,
                           args.max_concurrent, args.tune_callback)
        records = run_sweep(plan, SweepOptions(args.executor, bool(args.resume), args.rerun_diverged,
                                               lambda s: print(s, flush=True), tune))
    except (RuntimeError, ModelPathError) as e:  # a model that passed the checks but does not load in the driver
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(format_table(records))
    print(f"\nrecords: {os.path.join(plan.run_dir, 'records.jsonl')}\nsummary: {os.path.join(plan.run_dir, 'summary.csv')}")
    if not args.no_leaderboard:
        try:
            from unlearnbench.leaderboard import build_leaderboard

            build_leaderboard([plan.run_dir], os.path.join(plan.run_dir, "leaderboard"), own=True)
            print(f"leaderboard: {os.path.join(plan.run_dir, 'leaderboard', 'index.html')}")
        except ImportError:
            pass
    diverged = [r["trial_id"] for r in records if r["status"] == "diverged"]
    if diverged:
        print(f"{len(diverged)} trial(s) diverged (a result, kept off the fronts): {', '.join(diverged)}")
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        print(f"{len(failed)} of {len(records)} trial(s) failed; rerun them with --resume {plan.run_dir}", file=sys.stderr)
        return 1
    return 0



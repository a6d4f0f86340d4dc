"""``unlearnbench evaluate``: score a model unlearned elsewhere with a task's own evaluation and seeds
(:mod:`unlearnbench.external`)."""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

EPILOG = """examples:
  unlearnbench evaluate --task gmm-concept --model runs/x/artifacts/rkl-eps30-s0/model --name my-method
  unlearnbench evaluate --task digits-concept --model unlearned.safetensors --name my-method --seeds 0,1,2 --out runs/mine
  unlearnbench evaluate --task sd-concept --model ~/my-unlearned-sd --name my-method   # a diffusers folder
  unlearnbench evaluate --task sd-concept --model adapters/ --set task.model=~/sd-v1-4 --name my-lora
then: unlearnbench leaderboard --runs runs/mine ...   unlearnbench attack runs/mine
"""


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="score a model unlearned elsewhere (a trial of entry NAME, method external)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("--task", required=True, help="task name (`unlearnbench ls tasks`)")
    p.add_argument("--model", required=True, metavar="PATH",
                   help="the unlearned model: a .safetensors state dict (or a folder with model.safetensors), peft "
                        "adapters, a trial's folder as `run --save-models` writes it, or (sd-concept, ddpm-data) a "
                        "diffusers folder")
    p.add_argument("--name", required=True, help="the entry's name on the leaderboard")
    p.add_argument("--seeds", default="0", help="comma-separated seeds of the task's evaluation (default: 0)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="task.KEY=VALUE",
                   help="a task option, e.g. task.forget=one (the same as the run that it is compared with)")
    p.add_argument("--out", default=None, help="run directory (default: runs/<task>-<name>-<timestamp>); a new "
                                               "folder or one holding earlier evaluations of the same task")
    p.add_argument("--cache-dir", default=None, help="cache of pretrained models and references")
    p.set_defaults(func=evaluate)


def evaluate(args) -> int:
    from unlearnbench.config import check_writable_dir
    from unlearnbench.external import evaluate_external, plan_external
    from unlearnbench.rundir import RunDirBusy, RunDirLock
    from unlearnbench.settings import ConfigError

    run_dir = args.out or os.path.join("runs", f"{args.task}-{args.name}-{dt.datetime.now():%Y%m%d-%H%M%S}")
    try:
        check_writable_dir(run_dir, "--out")
        plan = plan_external(args.task, args.model, args.name, args.seeds, run_dir, args.sets, args.cache_dir)
        check_run_folder(plan)
    except (ConfigError, KeyError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        lock = RunDirLock(plan.run_dir).acquire()
    except (RunDirBusy, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with lock:
        records = evaluate_external(plan)
        from unlearnbench.records import RECORDS, iter_latest, read_records
        from unlearnbench.sweep import write_summary

        write_summary(plan.run_dir, list(iter_latest(read_records([os.path.join(plan.run_dir, RECORDS)]))))
    axes = plan.task.axes
    names = list(dict.fromkeys(n for pair in axes for n in pair))
    for r in records:
        met = r.get("metrics") or {}
        shown = ", ".join(f"{n} {met[n]['value']:.4g}" for n in names if n in met and met[n]["value"] is not None)
        print(f"{r['trial_id']} seed {r['seed']}: {r['status']}{': ' + shown if shown else ''}"
              f"{' (' + r['error'] + ')' if r.get('error') else ''}")
    print(f"records: {os.path.join(plan.run_dir, RECORDS)}")
    return 0 if all(r["status"] == "ok" for r in records) else 1


def check_run_folder(plan) -> None:
    """``--out`` may hold earlier records only of the same task (one leaderboard per task); refused otherwise."""
    from unlearnbench.records import RECORDS, read_records
    from unlearnbench.settings import ConfigError

    path = os.path.join(plan.run_dir, RECORDS)
    if os.path.exists(path):
        tasks = sorted({r["task"]["name"] for r in read_records([path])})
        if tasks and tasks != [plan.task.name]:
            raise ConfigError(f"--out {plan.run_dir} holds records of {', '.join(tasks)}, not {plan.task.name}; "
                              f"choose another --out")

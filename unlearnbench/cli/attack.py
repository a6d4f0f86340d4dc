"""``unlearnbench attack RUN_DIR``: the robustness ladder on a run's saved unlearned models (see
:mod:`unlearnbench.robustness`)."""
from __future__ import annotations

import argparse
import os
import sys

EPILOG = """examples:
  unlearnbench run --task gmm-concept --methods rkl,esd --grid eps --save-models --out runs/gc
  unlearnbench attack runs/gc                                   # the task's attacks at the default ladders
  unlearnbench attack runs/gc --attacks relearn --budgets 0,10,50,200
  unlearnbench attack runs/gc --seeds 0 --methods rkl           # one seed's rkl models only
  unlearnbench attack runs/gd --attacks all --budgets relearn=0,5,20 --executor serial
"""


def add_parser(sub) -> None:
    p = sub.add_parser("attack", help="robustness ladder (relearn, embedding, mia) on a run's saved models",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made with `unlearnbench run --save-models`")
    p.add_argument("--attacks", default=None,
                   help="comma-separated: relearn, embedding, mia, or 'all', or 'none' (only the retrained reference "
                        "scored by the task's evaluation: the anchor of `unlearnbench compare`) (default: "
                        "relearn,embedding on concept tasks, relearn,mia on data tasks)")
    p.add_argument("--budgets", action="append", default=None, metavar="[ATTACK=]K,K,...",
                   help="the ladder of optimisation steps (default 0,10,50,200), for every ladder attack or, with "
                        "ATTACK=, one of them; repeatable")
    p.add_argument("--seeds", default=None, help="only the saved models of these seeds, comma-separated (default: all)")
    p.add_argument("--methods", default=None,
                   help="only the saved models of these methods, comma-separated (default: all)")
    p.add_argument("--cache-dir", default=None, help="cache of pretrained and retrained models (default: the run's)")
    p.add_argument("--executor", choices=["ray", "serial"], default="ray", help="Ray Tune (default) or in-process")
    p.add_argument("--address", default=None, help="Ray cluster address (e.g. auto); default: start local Ray")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--cpus-per-trial", type=float, default=1, help="CPUs per trial (default 1)")
    p.add_argument("--gpus-per-trial", type=float, default=0, help="GPUs per trial, fractions allowed (default 0)")
    p.add_argument("--max-concurrent", type=int, default=None, help="bound on concurrently running trials")
    p.add_argument("--dry-run", action="store_true", help="print the attack trials and exit")
    p.add_argument("--no-leaderboard", action="store_true", help="skip rebuilding RUN_DIR/leaderboard")
    p.set_defaults(func=run)


def run(args) -> int:
    from unlearnbench.robustness.plan import plan_attacks
    from unlearnbench.config import ConfigError, check_writable_dir

    try:
        for flag in ("num_cpus", "max_concurrent"):
            value = getattr(args, flag)
            if value is not None and value < 1:
                raise ConfigError(f"--{flag.replace('_', '-')} {value}: must be a whole number >= 1 (or left out)")
        plan = plan_attacks(args.run_dir, args.attacks, args.budgets, cache_dir=args.cache_dir,
                            threads=max(1, int(args.cpus_per_trial)), seeds=args.seeds, methods=args.methods)
        check_writable_dir(plan.run_dir, "RUN_DIR/attack")
        from unlearnbench.cluster import check_resources, probe_address

        check_resources(args.cpus_per_trial, args.gpus_per_trial, args.num_cpus, local=args.address is None)
        if args.address is not None and args.executor == "ray":
            probe_address(args.address)
    except (ConfigError, KeyError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.dry_run:
        for t in plan.trials:
            print(f"{t['trial_id']:48s} {t['method']:10s} seed={t['seed']}")
        print(f"{len(plan.trials)} attack trials, task {plan.task}, records in {plan.run_dir}")
        return 0
    from unlearnbench.rundir import RunDirBusy, RunDirLock

    try:
        lock = RunDirLock(plan.run_dir).acquire()
    except RunDirBusy as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write {plan.run_dir}: {e.strerror or e}", file=sys.stderr)
        return 2
    with lock:
        return _attack(args, plan)


def _attack(args, plan) -> int:
    from unlearnbench.raytune import TuneOptions
    from unlearnbench.sweep import SweepOptions, run_sweep

    print(f"{len(plan.trials)} attack trials of {plan.task} -> {plan.run_dir}", flush=True)
    try:
        tune = TuneOptions(args.address, args.num_cpus, args.cpus_per_trial, args.gpus_per_trial, args.max_concurrent)
        records = run_sweep(plan, SweepOptions(args.executor, resume=True, echo=lambda s: print(s, flush=True),
                                               tune=tune))
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(format_ladders(records))
    print(f"\nrecords: {os.path.join(plan.run_dir, 'records.jsonl')}")
    if not args.no_leaderboard:
        from unlearnbench.leaderboard import build_leaderboard

        run_dir = os.path.dirname(plan.run_dir)
        build_leaderboard([run_dir], os.path.join(run_dir, "leaderboard"), own=True)
        print(f"leaderboard: {os.path.join(run_dir, 'leaderboard', 'index.html')}")
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        print(f"{len(failed)} of {len(records)} attack trial(s) failed; rerun `unlearnbench attack {args.run_dir}` "
              f"to retry them", file=sys.stderr)
        return 1
    return 0


def format_ladders(records: list[dict]) -> str:
    """One line per attack trial: the measure at each budget (or the MIA numbers) and its cost."""
    lines = []
    for r in records:
        a = r.get("attack") or {}
        head = f"{r['trial_id']:48s} {r['status']:6s}"
        if r["status"] != "ok":
            lines.append(f"{head} {r.get('error')}")
            continue
        if a.get("values") is not None:
            ladder = "  ".join(f"k={k}:{v:.3g}" for k, v in zip(a["budgets"], a["values"]))
            half = a.get("steps_to_half")
            body = f"{a.get('measure')}  {ladder}  half@{'-' if half is None else f'{half:.3g}'}"
        else:
            body = "  ".join(f"{k}={m['value']:.3g}" for k, m in sorted((r.get("metrics") or {}).items()))
        lines.append(f"{head} {body}  {(r.get('timing') or {}).get('total_s', 0):.1f}s")
    return "\n".join(lines)

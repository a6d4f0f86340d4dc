"""``unlearnbench compare``: two entries of a task, one verdict per axis pair (see :mod:`unlearnbench.compare`)."""
from __future__ import annotations

import argparse
import json
import math
import sys

EPILOG = """examples:
  unlearnbench compare --runs leaderboards/records --task gmm-concept --a rkl --b rkl-fixed
  unlearnbench compare --runs runs/gc --task gmm-concept --a lik --b esd --axis forgotten_mass/kl_pretrained --json
  unlearnbench compare --runs leaderboards/records --task digits-concept --a "rkl [trainable=full]" --b esd \\
      --axis acc_forget/acc_kept --axis acc_forget/kid_kept          # two axes: Holm-adjusted together

verdicts: a_better, b_better (Holm-adjusted paired t test p < 0.05 and at least the task's minimum effect),
equivalent (TOST within the task's equivalence margin), inconclusive (with the seeds that would settle it).
"""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare", help="compare two entries at fixed unlearning levels: a verdict with p-value and interval",
        description="Paired comparison of two entries of one task at unlearning levels fixed from the pretrained "
                    "and retrained models (25/50/75/100 % of the way), per seed both ran: the retention difference "
                    "A - B (positive = A retains more), its 95 % t interval, a paired t test, TOST against the "
                    "task's equivalence margin. Records only: nothing is re-run.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", metavar="DIR", nargs="+", action="extend", default=None,
                   help="run directories or records.jsonl files (default: every run under ./runs/)")
    p.add_argument("--task", required=True, help="leaderboard task key, e.g. gmm-concept")
    p.add_argument("--a", required=True, metavar="ENTRY", help="the first entry, as the leaderboard names it")
    p.add_argument("--b", required=True, metavar="ENTRY", help="the second entry")
    p.add_argument("--axis", action="append", default=None, metavar="U/R",
                   help="unlearning/retention metric pair (default: the task's primary pair); repeatable")
    p.add_argument("--all-trials", action="store_true",
                   help="count unsettled trials of constrained entries too (default: settled ones only)")
    p.add_argument("--json", action="store_true", help="print JSON: one object (a list with several --axis)")
    p.set_defaults(func=run)


def _clean(x):
    """JSON without NaN (null instead)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def run(args) -> int:
    from unlearnbench.cli.leaderboard import resolve_runs
    from unlearnbench.compare import compare, describe
    from unlearnbench.records import read_records
    from unlearnbench.results import collect_tasks

    try:
        runs = resolve_runs(args.runs)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tasks = collect_tasks(read_records(runs))
    td = tasks.get(args.task)
    if td is None:
        print(f"error: task {args.task!r} has no records in {', '.join(map(str, runs))}; tasks there: "
              f"{', '.join(tasks) or 'none'}", file=sys.stderr)
        return 2
    for flag, entry in (("--a", args.a), ("--b", args.b)):
        if entry not in td.entries:
            print(f"error: {flag} {entry!r} is not an entry of {td.name}; entries: {', '.join(td.entries)}",
                  file=sys.stderr)
            return 2
    if args.a == args.b:
        print(f"error: --a and --b are the same entry {args.a!r}", file=sys.stderr)
        return 2
    axes = []
    for spec in args.axis or []:
        pair = tuple(spec.split("/"))
        if pair not in {tuple(a) for a in td.axes}:
            print(f"error: --axis {spec!r} is not an axis pair of {td.name}; pairs: "
                  f"{', '.join('/'.join(a) for a in td.axes)}", file=sys.stderr)
            return 2
        axes.append(pair)
    found = compare(td, args.a, args.b, axes or None, settled_only=not args.all_trials)
    if args.json:
        out = [_clean(c.to_dict()) for c in found]
        print(json.dumps(out[0] if len(out) == 1 else out, indent=1, sort_keys=True))
    else:
        for c in found:
            print(describe(c))
    return 0

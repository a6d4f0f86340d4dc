"""Equal tuning effort (issue 20, item 8): the same small learning-rate x steps search for every entry of a task, on
validation seeds that no leaderboard uses, scored by the task's own primary criterion.

For each (lr, steps) pair every entry runs its grid (the task's ``eps`` grid unless ``--grid``) on ``--seeds``; the
score is the entry's hypervolume on the task's primary axis pair, clipped at the retrained model, the number the
leaderboard ranks by (``unlearnbench.leaderboard.stats.hypervolume_ci``, with the retrained anchors of the committed
reference trials under ``--references``). The table printed has one row per entry, one column per setting, the
setting the entry's defaults use marked ``*`` and the best marked ``<``; ``--json`` writes the same numbers.

    python scripts/tune_defaults.py --task gmm-concept --methods rkl,lik,esd,rkl-fixed \\
        --lrs 3e-4,1e-3,3e-3 --steps 400,800 --seeds 100 --out runs/tune-gmm-concept

Every setting is one run directory under ``--out`` (``lr<lr>-steps<steps>``); a second call resumes them, so the
search can be stopped and continued, and re-scored without training (``--score-only``). A search on further seeds
goes to its own ``--out`` and is scored together with the first by ``--merge FIRST_OUT`` (seed-mean fronts). With ``--steps`` the task's
stop-rule caps scale with the steps, as ``unlearnbench run --steps`` does.
"""
from __future__ import annotations

import argparse
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from unlearnbench.config import plan_trials  # noqa: E402
from unlearnbench.records import read_records  # noqa: E402
from unlearnbench.results import collect_tasks  # noqa: E402
from unlearnbench.sweep import run_sweep  # noqa: E402


def setting_dir(out: str, lr: float, steps: int) -> str:
    return os.path.join(out, setting_name(lr, steps))


def method_name(entry: str) -> str:
    return entry.split(" [", 1)[0]


def score(run_dirs: list[str], references: list[str], task: str) -> dict[str, float]:
    """Per entry of ``task`` in ``run_dirs`` (one setting, one or more seed batches): the hypervolume of its seed-mean
    front (clipped at the retrained model) on the primary axes."""
    from pathlib import Path

    from unlearnbench.leaderboard.stats import hypervolume_ci

    files = [Path(d) / "records.jsonl" for d in run_dirs] + [p for r in references for p in Path(r).rglob("records.jsonl")]
    tds = collect_tasks(read_records([f for f in files if f.exists()]))
    td = next((t for name, t in tds.items() if name.split(" ")[0] == task), None)
    if td is None or not td.axes:
        return {}
    return {e: hypervolume_ci(td, e, td.axes[0])[0] for e in td.entries}


def setting_name(lr: float, steps: int) -> str:
    return f"lr{lr:g}-steps{steps}"


def compare_settings(scores: dict[str, dict[str, float]], defaults: dict[str, tuple[float, int]]) -> dict[str, dict]:
    """Per entry: its score under every setting, the best setting, the setting its defaults use (None when the
    search did not include it) and the defaults' score as a share of the best."""
    out = {}
    for e in sorted({e for sc in scores.values() for e in sc}):
        row = {c: scores[c].get(e, math.nan) for c in scores}
        finite = {c: v for c, v in row.items() if math.isfinite(v)}
        best = max(finite, key=finite.get) if finite else None
        d = defaults.get(method_name(e))
        mine = setting_name(*d) if d and setting_name(*d) in row else None
        share = row[mine] / finite[best] if mine and best and finite[best] > 0 else None
        out[e] = {"scores": row, "best": best, "defaults": mine, "defaults_share_of_best": share}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="gmm-concept")
    ap.add_argument("--methods", default="rkl,lik,esd,rkl-fixed")
    ap.add_argument("--grid", default="eps")
    ap.add_argument("--lrs", default="3e-4,1e-3,3e-3")
    ap.add_argument("--steps", default="400,800")
    ap.add_argument("--seeds", default="100", help="validation seeds (none of the leaderboards' 0-9)")
    ap.add_argument("--references", default=None,
                    help="folders with the task's reference trials (default: leaderboards/records/robustness)")
    ap.add_argument("--out", default=None, help="default: runs/tune-<task>")
    ap.add_argument("--executor", default="ray", choices=["ray", "serial"])
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--score-only", action="store_true", help="score the runs already under --out")
    ap.add_argument("--merge", action="append", default=[], metavar="DIR",
                    help="another --out of the same search on other seeds: scored together with this one")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    out = args.out or os.path.join("runs", f"tune-{args.task}")
    refs = [args.references or os.path.join("leaderboards", "records", "robustness")]
    lrs = [float(x) for x in args.lrs.split(",")]
    steps = [int(x) for x in args.steps.split(",")]
    settings = [(lr, s) for lr in lrs for s in steps]
    # the defaults each method would run with: the setting marked in the table
    base = plan_trials(args.task, args.methods, args.grid, args.seeds, run_dir=os.path.join(out, "defaults"))
    defaults = {}
    for t in base.trials:
        m = t["method"] if isinstance(t["method"], str) else t["method"]["name"]
        cfg = t.get("settings") or {}
        defaults.setdefault(m, (float(cfg["lr"]), int(cfg["steps"])))
    scores: dict[str, dict[str, float]] = {}
    for lr, s in settings:
        run_dir = setting_dir(out, lr, s)
        if not args.score_only:
            sets = [f"methods.{m}.lr={lr:g}" for m in defaults]
            plan = plan_trials(args.task, args.methods, args.grid, args.seeds, run_dir=run_dir, sets=sets, steps=s)
            print(f"== lr {lr:g}, steps {s}: {len(plan.trials)} trials -> {run_dir}", flush=True)
            run_sweep(plan, executor=args.executor, num_cpus=args.num_cpus, resume=True,
                      echo=lambda line: print(line, flush=True) if line.startswith("[") else None)
        scores[setting_name(lr, s)] = score([run_dir] + [setting_dir(m, lr, s) for m in args.merge], refs, args.task)
    table = compare_settings(scores, defaults)
    cols = list(scores)
    print(f"\n{args.task}: hypervolume on the primary axes (clipped at the retrained model), seeds {args.seeds}; "
          f"* = the entry's defaults, < = best")
    print(f"{'entry':16s}" + "".join(f"{c:>20s}" for c in cols))
    for e, t in table.items():
        cells = [f"{t['scores'][c]:.4g}{'*' if c == t['defaults'] else ''}{'<' if c == t['best'] else ''}"
                 for c in cols]
        print(f"{e:16s}" + "".join(f"{x:>20s}" for x in cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"task": args.task, "seeds": args.seeds, "settings": cols, "defaults": defaults, "entries": table},
                      f, indent=1)


if __name__ == "__main__":
    main()

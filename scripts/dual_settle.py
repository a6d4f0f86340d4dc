"""How often a constrained method's trials settle, under given dual settings: trains (no evaluation) each grid value x
seed and prints, per trial, the duals' relative change over the last 20 % of steps, the worst relative slack and
whether the trial is settled (issue 20: <= 5 % dual change and every constraint met within 5 %).

    python scripts/dual_settle.py --task gmm-concept --method rkl --seeds 0,1,2 \\
        [--values 25,36] [--set dual_decay=20 --set final_estimates=4] [--steps 800] [--json out.json]

The trials are the ones ``unlearnbench run`` would run (``plan_trials``: the task's method defaults, then ``--set``),
trained by the runner's own loop; only the evaluation is skipped. Use it to choose a task's dual defaults before the
leaderboard runs, and report the settled share it prints.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from unlearnbench.config import build_method_config, plan_trials  # noqa: E402
from unlearnbench.methods import METHODS  # noqa: E402
from unlearnbench.runner import seed_everything, train  # noqa: E402
from unlearnbench.tasks import TASKS  # noqa: E402


def worst_relative_slack(train_info: dict, eps: float) -> float:
    """The most negative slack over the constraints, relative to ``|eps|`` (>= -0.05 counts as met)."""
    return min(train_info["constraint_slack"]) / max(abs(eps), 1e-12)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="gmm-concept")
    ap.add_argument("--method", default="rkl")
    ap.add_argument("--grid", default="eps")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--values", default=None, help="comma-separated grid values (default: the whole grid)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="method setting, e.g. dual_decay=20")
    ap.add_argument("--task-set", action="append", default=[], metavar="KEY=VALUE", help="task option, e.g. forget=one")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the per-trial rows here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sets = [f"methods.{args.method}.{s}" for s in args.set] + [f"task.{s}" for s in args.task_set]
    with tempfile.TemporaryDirectory() as tmp:
        plan = plan_trials(args.task, args.method, args.grid, args.seeds, run_dir=os.path.join(tmp, "run"), sets=sets,
                           steps=args.steps)
    keep = None if args.values is None else {float(v) for v in args.values.split(",")}
    task = TASKS.get(plan.task)(plan.task_options)
    rows, t0 = [], time.perf_counter()
    for spec in plan.trials:
        if keep is not None and spec["grid"]["value"] not in keep:
            continue
        gen = seed_everything(int(spec["seed"]))
        bundle = task.build(int(spec["seed"]))
        cfg = build_method_config(task, spec["method"], spec["method_config"], spec["grid"])
        info = train(METHODS.get(spec["method"])(cfg, bundle, gen))
        c = info["convergence"]
        row = {"value": spec["grid"]["value"], "seed": spec["seed"], "steps": info["steps"],
               "diverged": info["diverged"], "dual_rel_change": c["dual_rel_change"], "met": c["constraints_met"], "met_strict": info.get("constraints_met_strict"),
               "settled": bool(c["settled"]), "final_duals": info["final_duals"],
               "worst_rel_slack": None if info["diverged"] else worst_relative_slack(info, cfg.eps)}
        rows.append(row)
        print(f"{spec['grid']['value']:>8g} s{spec['seed']}  steps {row['steps']:>5}  "
              f"dual change {row['dual_rel_change'] if row['dual_rel_change'] is None else round(row['dual_rel_change'], 3)!s:>6}  "
              f"worst slack {row['worst_rel_slack'] if row['worst_rel_slack'] is None else round(row['worst_rel_slack'], 3)!s:>7}  "
              f"{'settled' if row['settled'] else 'UNSETTLED'}{'' if row['met_strict'] in (None, row['met']) else ' (strict: unmet)'}  duals {[round(d, 4) for d in info['final_duals']]}",
              flush=True)
    n = sum(r["settled"] for r in rows)
    strict = sum(r["settled"] and r["met_strict"] is not False for r in rows)
    print(f"{args.task} {' '.join(args.task_set)} {args.method} {' '.join(args.set) or '(task defaults)'}: settled {n}/{len(rows)} "
          f"(strictly within 5 %: {strict}) "
          f"({time.perf_counter() - t0:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"task": args.task, "method": args.method, "set": args.set, "steps": args.steps, "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()

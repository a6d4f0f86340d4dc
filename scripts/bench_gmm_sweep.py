"""Benchmark: the default GMM sweep (6-point eps grid x 2 methods) under Ray Tune vs the same trials one after
another in one process. Reports wall time (Ray start-up included), the per-trial split (setup, training, evaluation)
and Ray's parallel efficiency and per-trial overhead.

    python scripts/bench_gmm_sweep.py [--task gmm-concept] [--methods rkl,esd] [--num-cpus 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from unlearnbench.config import plan_trials  # noqa: E402
from unlearnbench.sweep import run_sweep  # noqa: E402
from unlearnbench.trials import prepare_task  # noqa: E402


def split(records):
    keys = ("setup_s", "train_s", "eval_s", "total_s")
    return {k: sum((r.get("timing") or {}).get(k) or 0.0 for r in records) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="gmm-concept")
    ap.add_argument("--methods", default="rkl,esd")
    ap.add_argument("--grid", default="eps")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    ap.add_argument("--skip-serial", action="store_true")
    args = ap.parse_args()
    root = tempfile.mkdtemp(prefix="ub-bench-")
    results = {}
    # warm the cache (distilled model, oracle) once, outside both timings, as a second `run` would find it
    prepare_task(plan_trials(args.task, args.methods, args.grid, "0", run_dir=os.path.join(root, "warm")))
    for executor in (["ray"] if args.skip_serial else ["ray", "serial"]):
        plan = plan_trials(args.task, args.methods, args.grid, "0", run_dir=os.path.join(root, executor))
        t0 = time.perf_counter()
        recs = run_sweep(plan, executor=executor, num_cpus=args.num_cpus, echo=lambda s: None)
        wall = time.perf_counter() - t0
        results[executor] = (wall, recs)
        s = split(recs)
        ok = sum(r["status"] == "ok" for r in recs)
        print(f"{executor:6s}: {len(recs)} trials ({ok} ok) in {wall:6.1f}s wall | summed per-trial: setup {s['setup_s']:.1f}s, "
              f"train {s['train_s']:.1f}s, eval {s['eval_s']:.1f}s, total {s['total_s']:.1f}s")
    if "serial" in results:
        (rw, rrecs), (sw, _) = results["ray"], results["serial"]
        n = len(rrecs)
        eff = sw / (rw * args.num_cpus)
        overhead = (rw * args.num_cpus - split(rrecs)["total_s"]) / n
        print(f"speed-up {sw / rw:.2f}x on {args.num_cpus} CPUs, parallel efficiency {eff:.0%}, "
              f"Ray overhead ≈ {overhead:.2f} CPU-s per trial (Ray wall x CPUs - summed trial time, / trials)")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Profile one trial of a task where it spends its time: set-up, training (with constraint estimates) and evaluation,
plus the top functions by cumulative time. The numbers behind the speed work on `make run`.

    python scripts/profile_trial.py --task digits-concept --method rkl [--value 35] [--seed 0] [--top 25]

Runs exactly what a sweep trial runs (``runner.run_trial``, one torch thread) in a temporary run directory.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from unlearnbench.config import plan_trials  # noqa: E402
from unlearnbench.runner import run_trial  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="digits-concept")
    ap.add_argument("--method", default="rkl")
    ap.add_argument("--value", type=float, default=None, help="grid value (default: the middle of the eps grid)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plan = plan_trials(args.task, args.method, "eps", str(args.seed), run_dir=os.path.join(tmp, "run"))
        specs = plan.trials
        spec = specs[len(specs) // 2] if args.value is None else next(
            s for s in specs if s["grid"]["value"] == args.value)
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        record = run_trial(spec)
        prof.disable()
        wall = time.perf_counter() - t0
    t = record["timing"]
    print(f"{args.task} {args.method} {spec['grid']['param']}={spec['grid']['value']:g} seed {args.seed}: "
          f"total {wall:.1f}s = setup {t['setup_s']:.1f} + train {t['train_s']:.1f} + eval {t['eval_s']:.1f}")
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(args.top)
    print(buf.getvalue())


if __name__ == "__main__":
    main()

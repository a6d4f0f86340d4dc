"""How many seeds (and evaluation samples) each claim comparison needs, from the spread the committed records show.

For every comparison behind the claims (``unlearnbench claims``), the per-seed retention differences give a spread
``sd``. Where the retention metric is a rate ``k/n``, part of that spread is one evaluation's binomial noise (the
floor of :func:`unlearnbench.compare.noise_floor`) and shrinks with more evaluation samples; the rest is
seed-to-seed variation and only shrinks with seeds. For a target 95 % interval half-width (default: the task's
equivalence margin for the retention metric, so that an "equivalent" verdict is reachable), the script prints the
smallest seed count at today's evaluation size and at 2x and 4x the samples, and the seeds at which the observed
difference would turn into a verdict.

    python scripts/power.py                       # leaderboards/records
    python scripts/power.py --runs runs/gmm-* --target 0.02
"""
from __future__ import annotations

import argparse
import math
import sys

import numpy as np


def seeds_for(half_width: float, seed_var: float, eval_var: float, factor: float, cap: int = 200) -> int | None:
    """The smallest seed count (>= 3) whose t interval half-width is below ``half_width`` when the evaluation noise is
    divided by ``factor`` (``factor`` x the samples)."""
    from scipy.stats import t as student_t

    var = seed_var + eval_var / factor
    if var <= 0:
        return 3
    for n in range(3, cap + 1):
        if student_t.ppf(0.975, n - 1) * math.sqrt(var / n) < half_width:
            return n
    return None


def main(argv: list[str] | None = None) -> int:
    from unlearnbench.claims import task_evidence
    from unlearnbench.compare import from_dict, noise_floor
    from unlearnbench.records import read_records
    from unlearnbench.results import collect_tasks

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=["leaderboards/records"])
    p.add_argument("--target", type=float, default=None,
                   help="95 %% half-width to reach, in the retention metric's units (default: its equivalence margin)")
    args = p.parse_args(argv)
    tasks = collect_tasks(read_records(args.runs))
    print(f"{'comparison':64s} {'seeds':>5s} {'sd':>9s} {'eval sd':>9s} {'target':>8s} "
          f"{'seeds@1x':>8s} {'@2x':>5s} {'@4x':>5s} {'verdict at':>10s}")

    def show(n):
        return "-" if n is None else str(n)

    for name, td in tasks.items():
        for ev in task_evidence(td):
            c = from_dict(ev)
            label = f"{name} [{'/'.join(c.axis)}] {c.a} vs {c.b}"
            if len(c.per_seed) < 2:
                print(f"{label:64s} {len(c.per_seed):5d}  ({c.reason or 'no spread'})")
                continue
            sd = float(np.std(c.per_seed, ddof=1))
            floor = noise_floor(td, c.axis[1], (c.a, c.b))
            eval_var = min(floor ** 2, sd ** 2)
            seed_var = max(sd ** 2 - eval_var, 0.0)
            target = args.target if args.target is not None else c.margin
            cols = [seeds_for(target, seed_var, eval_var, f) if target else None for f in (1, 2, 4)]
            print(f"{label:64s} {len(c.per_seed):5d} {sd:9.3g} {math.sqrt(eval_var):9.3g} "
                  f"{(target if target is not None else math.nan):8.3g} {show(cols[0]):>8s} {show(cols[1]):>5s} "
                  f"{show(cols[2]):>5s} {show(c.seeds_needed):>10s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

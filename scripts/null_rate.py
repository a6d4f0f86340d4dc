"""How often does ``unlearnbench compare`` call a difference where there is none, on the committed records?

For every entry with at least 3 seeds, a *null twin* is built from its own trials: within each grid value the seeds
are permuted at random, independently per grid value, so the twin's per-seed fronts mix points of different seeds
while the twin as a whole is drawn from exactly the entry's distribution. The entry is then compared with its twin
on each of the task's axis pairs (each comparison alone, as ``unlearnbench compare`` with one ``--axis`` does), and
every verdict other than ``inconclusive`` or ``equivalent`` is a false verdict. ``--json`` keeps each comparison's
estimate: averaged over permutations it should sit near 0. Where it does not, the twin itself is off, not the test:
each grid value's point comes from another seed, and a front of points from different seeds is not distributed as
one seed's front (gmm-concept's rkl-fixed, 100 permutations: -0.296, sd 0.049, on forgotten mass / KL to the
pretrained model, every permutation on the twin's side; the other entries -0.001 to 0.004).

    python scripts/null_rate.py                                  # leaderboards/records, 40 permutations per entry
    python scripts/null_rate.py --runs runs/gmm-concept --permutations 200 --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter

import numpy as np


def twin_records(trials: list[dict], rng: np.random.Generator, suffix: str = "~twin") -> list[dict]:
    """The entry's trials with seeds permuted within each grid value, renamed ``<method><suffix>``."""
    by_grid: dict[str, list[dict]] = {}
    for r in trials:
        by_grid.setdefault(json.dumps((r.get("grid") or {}).get("value")), []).append(r)
    out = []
    for group in by_grid.values():
        seeds = [r.get("seed") for r in group]
        for r, s in zip(group, rng.permutation(len(seeds))):
            twin = {k: v for k, v in r.items() if not k.startswith("_")}
            twin.update(method=f"{r.get('method')}{suffix}", seed=seeds[s], trial_id=f"{r.get('trial_id')}{suffix}")
            out.append(twin)
    return out


def main(argv: list[str] | None = None) -> int:
    from unlearnbench.compare import A_BETTER, B_BETTER, compare
    from unlearnbench.records import read_records
    from unlearnbench.results import collect_tasks, task_key

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", default=["leaderboards/records"])
    p.add_argument("--permutations", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write every verdict here")
    args = p.parse_args(argv)
    records = read_records(args.runs)
    tasks = collect_tasks(records)
    rng = np.random.default_rng(args.seed)
    rows, total = [], Counter()
    for name, td in tasks.items():
        task_records = [r for r in records if isinstance(r, dict) and task_key(r) == name]  # with its references
        for entry in td.entries:
            trials = [r for r in td.trials if r["_entry"] == entry and r.get("status") == "ok"]
            if len({json.dumps(r.get("seed")) for r in trials}) < 3:
                continue
            counts: Counter = Counter()
            for _ in range(args.permutations):
                twin = collect_tasks(task_records + twin_records(trials, rng))[name]
                label = next(e for e in twin.entries if e.startswith(f"{td.method_of(entry)}~twin"))
                for axis in td.axes:
                    c = compare(twin, entry, label, [axis])[0]
                    counts[c.verdict] += 1
                    rows.append({"task": name, "entry": entry, "axes": "/".join(axis), "verdict": c.verdict,
                                 "p_value": c.p_value, "estimate": c.estimate})
            false = counts[A_BETTER] + counts[B_BETTER]
            total.update(counts)
            print(f"{name:16s} {entry:24s} {sum(counts.values()):4d} comparisons: {false:3d} false verdicts "
                  f"({false / max(1, sum(counts.values())):.1%}); {dict(sorted(counts.items()))}", flush=True)
    n = sum(total.values())
    false = total[A_BETTER] + total[B_BETTER]
    print(f"all: {n} comparisons of an entry with its null twin, {false} false verdicts ({false / max(1, n):.1%}); "
          f"{dict(sorted(total.items()))}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does a new run reproduce the committed leaderboard? Compare each (task, forget set, entry, grid value, metric) that
a new run and the reference records share, seed values against seed values.

    python scripts/reproduce_check.py runs/digits-concept-20261201-205819 [--reference leaderboards/records]
                                      [--roles unlearning,retention] [--alpha 0.05]

First, trial by trial: the values of every (entry, grid value, seed, metric) both sides ran, and how many are identical
to the last bit. With the shipped pretrained networks (``unlearnbench/pretrained/``) a run on the same kind of machine
can reproduce the committed trials exactly. On another machine, or after a cache rebuild, runs are not
bit-identical: other CPUs and thread counts reorder float sums, and training amplifies that. So the main question is
statistical. A
metric is compared with Welch's t-test over seeds where both sides have two seeds or more (and some spread). Else a
rate (``k/n`` of evaluation samples) is compared with Fisher's exact test on the pooled counts, which ignores
seed-to-seed variation and so says "differs" too readily (two seeds of one committed run already differ at
p = 0.05 on rkl b = 15). Seeds without any spread on both sides (a deterministic metric) are compared exactly;
anything else is not testable. With many comparisons about ``alpha`` of them differ by
chance alone: the summary prints that expectation next to the count.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

KEYS = ["task", "forget_set", "entry", "grid_value", "metric"]


def compare(new, ref, roles: set[str], alpha: float):
    """Rows (dicts) of one comparison each."""
    from scipy.stats import fisher_exact, ttest_ind

    from unlearnbench.pareto import is_rate, mean_interval

    new = new[(new["status"] == "ok") & new["role"].isin(roles)]
    ref = ref[(ref["status"] == "ok") & ref["role"].isin(roles)]
    both = pd.concat([new, ref])
    rates = {k: is_rate(g["value"].to_numpy(float), g["n"].to_numpy()) for k, g in both.groupby(["task", "metric"])}
    out = []
    ref_groups = dict(tuple(ref.groupby(KEYS, dropna=False)))
    for key, g in new.groupby(KEYS, dropna=False):
        r = ref_groups.get(key)
        if r is None:
            continue
        g, r = g[np.isfinite(g["value"].astype(float))], r[np.isfinite(r["value"].astype(float))]
        x, y = g["value"].to_numpy(float), r["value"].to_numpy(float)
        if not x.size or not y.size:
            continue
        rate = rates[(key[0], key[-1])] and bool(g["n"].all()) and bool(r["n"].all())
        if x.size >= 2 and y.size >= 2 and (x.std() > 0 or y.std() > 0):
            with warnings.catch_warnings():  # nearly identical seeds: scipy warns of precision loss, p is still fine
                warnings.simplefilter("ignore", RuntimeWarning)
                p = float(ttest_ind(x, y, equal_var=False).pvalue)
            test = "welch"
        elif x.size >= 2 and y.size >= 2:  # no spread on either side (a deterministic metric): equal or not
            p, test = (1.0 if np.isclose(x.mean(), y.mean(), rtol=1e-9, atol=1e-12) else 0.0), "exact"
        elif rate:
            kx, nx = int(round(float((g["value"] * g["n"]).sum()))), int(g["n"].sum())
            ky, ny = int(round(float((r["value"] * r["n"]).sum()))), int(r["n"].sum())
            p = float(fisher_exact([[kx, nx - kx], [ky, ny - ky]])[1])
            test = "fisher"
        else:
            p, test = math.nan, "-"
        m, lo, hi, _, _ = mean_interval(y, r["stderr"].to_numpy(float), r["n"].to_numpy() if rate else None)
        out.append({**dict(zip(KEYS, key)), "ref_mean": m, "ref_lo": lo, "ref_hi": hi, "ref_seeds": int(y.size),
                    "new_mean": float(x.mean()), "new_seeds": int(x.size), "test": test, "p": p,
                    "verdict": "-" if math.isnan(p) else "differs" if p < alpha else "consistent"})
    return out


def identical(new, ref, roles: set[str]) -> tuple[int, int, float]:
    """(shared values, values identical to the last bit, largest relative difference) over the (task, forget set,
    entry, grid value, seed, metric) that both sides have, ok trials only."""
    keys = KEYS[:-1] + ["seed", "metric"]
    pick = [(d[(d["status"] == "ok") & d["role"].isin(roles)].drop_duplicates(keys, keep="last")
             .set_index(keys)["value"].astype(float)) for d in (new, ref)]
    a, b = pick[0].align(pick[1], join="inner")
    if not len(a):
        return 0, 0, 0.0
    same = (a.to_numpy() == b.to_numpy()) | (np.isnan(a.to_numpy()) & np.isnan(b.to_numpy()))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.abs(a.to_numpy() - b.to_numpy()) / np.maximum(np.abs(b.to_numpy()), 1e-12)
    return len(a), int(same.sum()), float(np.nanmax(np.where(same, 0.0, rel)))


def main(argv: list[str] | None = None) -> int:
    import unlearnbench
    from unlearnbench.results import fmt

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("new", nargs="+", help="run folders (or records.jsonl files) to check")
    ap.add_argument("--reference", default="leaderboards/records", help="the records to compare against")
    ap.add_argument("--roles", default="unlearning,retention", help="metric roles to compare (comma-separated)")
    ap.add_argument("--alpha", type=float, default=0.05)
    args = ap.parse_args(argv)
    if not 0 < args.alpha < 1:
        ap.error(f"--alpha {args.alpha} is out of range; valid: 0 < alpha < 1")
    new_df, ref_df = unlearnbench.load_results(args.new), unlearnbench.load_results([args.reference])
    roles = set(args.roles.split(","))
    rows = compare(new_df, ref_df, roles, args.alpha)
    if not rows:
        print(f"nothing in common between {', '.join(args.new)} and {args.reference} (task, forget set, entry, grid "
              f"value and metric must match)", file=sys.stderr)
        return 1
    print(f"{'task':15s} {'entry':10s} {'value':>7s} {'metric':14s} {'reference mean [95 % CI] (seeds)':>38s} "
          f"{'new (seeds)':>16s} {'test':>6s} {'p':>7s}  verdict")
    for r in rows:
        ref = f"{fmt(r['ref_mean'])} [{fmt(r['ref_lo'])}, {fmt(r['ref_hi'])}] ({r['ref_seeds']})"
        print(f"{r['task']:15s} {r['entry']:10s} {fmt(r['grid_value']):>7s} {r['metric']:14s} {ref:>38s} "
              f"{fmt(r['new_mean']) + ' (' + str(r['new_seeds']) + ')':>16s} {r['test']:>6s} {fmt(r['p']):>7s}  "
              f"{r['verdict']}")
    tested = [r for r in rows if r["verdict"] != "-"]
    differ = sum(r["verdict"] == "differs" for r in tested)
    print(f"\n{differ} of {len(tested)} comparisons differ at p < {args.alpha:g} (by chance alone about "
          f"{args.alpha * len(tested):.1f}); {len(rows) - len(tested)} not testable (fewer than two seeds, or no "
          f"spread)")
    shared, same, worst = identical(new_df, ref_df, roles)
    print(f"trial by trial: {same} of {shared} values that both ran (same entry, grid value and seed) are identical "
          f"to the last bit" + (f"; the others differ by up to {worst:.3g} relative" if same < shared else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

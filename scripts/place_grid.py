"""Place every entry's grid by one rule, before the reported seeds are run: grid values that land at fixed fractions
of the way from the pretrained model to the retrained one on the task's primary unlearning axis.

The comparison protocol (``unlearnbench.protocol``) reads retention at 25/50/75/100 % of that way. An entry whose
grid lies mostly past the retrained model (gmm-concept's rkl had 5 of 6 values there, rkl-fixed and ESD 3 to 4) has
few points where the levels are read, and a level is then answered by a point that unlearned more than it needs. The
rule here is the same for every entry (issue 20, item 8): from one run of the entry over a wide grid (a pilot on
validation seeds, or committed records), take the seed-mean progress ``(U - U_pretrained) / (U_retrained -
U_pretrained)`` of each grid value, make it monotone in the value's strength (a running maximum from weak to strong),
and interpolate the value (in log space) that reaches each target fraction; a target past the strongest value tried
or short of the weakest is extrapolated from the nearest two and marked.

    python scripts/place_grid.py --task gmm-concept --methods rkl,lik,esd,rkl-fixed
    python scripts/place_grid.py --runs runs/pilot --task gmm-concept --fractions 0.3,0.55,0.8,1.05,1.3,1.6

The default fractions put one value just past each level (network noise moves a point around its target; a level is
read from points at or past it) and two past the retrained model, where overshoot is shown but earns nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

FRACTIONS = (0.3, 0.55, 0.8, 1.05, 1.3, 1.6)


def place(values: list[float], progress: list[float], stronger_is_larger: bool,
          fractions=FRACTIONS) -> list[tuple[float, bool]]:
    """Grid values reaching each fraction: ``(value, extrapolated)``. ``values`` are positive grid values,
    ``progress`` their seed-mean progress; ``stronger_is_larger`` says which way unlearning grows with the value."""
    order = np.argsort(values) if stronger_is_larger else np.argsort(values)[::-1]
    logv = np.log(np.asarray(values, dtype=float)[order])
    prog = np.maximum.accumulate(np.asarray(progress, dtype=float)[order])  # monotone in strength
    out = []
    for f in fractions:
        above = np.nonzero(prog >= f)[0]
        if above.size and above[0] > 0:  # between two values tried
            j = int(above[0])
            lo, hi = prog[j - 1], prog[j]
            w = 0.0 if hi == lo else (f - lo) / (hi - lo)
            out.append((float(np.exp(logv[j - 1] + w * (logv[j] - logv[j - 1]))), False))
            continue
        # outside the values tried: extrapolate from the nearest two (log value linear in progress)
        a, b = (0, 1) if above.size else (-2, -1)
        d = prog[b] - prog[a] if prog.size > 1 else 0.0
        slope = (logv[b] - logv[a]) / d if d > 0 else math.nan
        end = a if above.size else b
        out.append((float(np.exp(logv[end] + (f - prog[end]) * slope)) if math.isfinite(slope) else math.nan, True))
    return out


def rounded(x: float) -> float:
    """Three significant digits: a grid value as a person would write it."""
    return float(f"{x:.3g}") if math.isfinite(x) else x


def main(argv: list[str] | None = None) -> int:
    from unlearnbench.protocol import anchors
    from unlearnbench.records import read_records
    from unlearnbench.results import collect_tasks

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=["leaderboards/records"])
    ap.add_argument("--task", required=True, help="leaderboard task key, e.g. gmm-concept")
    ap.add_argument("--methods", default=None, help="comma-separated entries (default: every entry)")
    ap.add_argument("--fractions", default=",".join(map(str, FRACTIONS)))
    ap.add_argument("--seeds", default=None, help="comma-separated seeds to use (default: all)")
    ap.add_argument("--json", default=None, help="also write {entry: [values]} here")
    args = ap.parse_args(argv)
    tasks = collect_tasks(read_records(args.runs))
    if args.task not in tasks:
        raise SystemExit(f"task {args.task!r}: not in the records under {' '.join(args.runs)}; "
                         f"found: {', '.join(sorted(tasks)) or 'none'}")
    td = tasks[args.task]
    axis = td.axes[0]
    anchor = anchors(td).get(axis[0])
    if anchor is None or not anchor.usable:
        raise SystemExit(f"{args.task}: no pretrained and retrained value of {axis[0]} in the records (run "
                         f"`unlearnbench attack RUN --attacks none` for the retrained reference)")
    fractions = [float(f) for f in args.fractions.split(",")]
    keep = None if args.seeds is None else {int(s) for s in args.seeds.split(",")}
    entries = td.entries if args.methods is None else [e for e in args.methods.split(",")]
    print(f"{args.task}: {axis[0]} from {anchor.pretrained:.4g} (pretrained) to {anchor.retrained:.4g} (retrained); "
          f"targets {', '.join(f'{f:.0%}' for f in fractions)} of the way")
    result = {}
    for entry in entries:
        if entry not in td.entries:
            raise SystemExit(f"entry {entry!r} not in {args.task}; entries: {', '.join(td.entries)}")
        ps = td.points(entry, axis)
        vals = ps.values[:, :, 0]
        if keep is not None:
            vals = vals[:, [i for i, s in enumerate(ps.seeds) if s in keep]]
        grid = [float(g) for g in ps.grid]
        prog = [float(anchor.progress(np.nanmean(v))) for v in vals]
        up = np.corrcoef(grid, prog)[0, 1] >= 0 if len(grid) > 1 else True
        placed = place(grid, prog, bool(up), fractions)
        result[entry] = [rounded(v) for v, _ in placed]
        tried = ", ".join(f"{g:g}->{p:.2f}" for g, p in zip(grid, prog))
        print(f"  {entry:12s} tried {tried}")
        print(f"  {'':12s} placed {', '.join(f'{rounded(v):g}' + ('*' if x else '') for v, x in placed)}"
              f"   (* extrapolated past the values tried)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

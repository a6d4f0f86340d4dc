"""Why a task's constrained trials do or do not settle, read from committed records: per entry, the settled share,
the duals' relative change over the last 20 % of steps (the settle rule allows 5 %), the noise of one constraint
estimate relative to its threshold, and what settling would cost.

    python scripts/settle_budget.py leaderboards/records [--task digits-concept]

For each constrained trial, the estimates of the last half of training (``train.estimates``: one value per
constraint every ``dual_every`` steps) are taken as draws around the level the duals hold; their standard deviation
over the threshold ``|b|`` is the estimate's relative noise. A dual step ``eta (b - KLhat)`` moves the dual by
``eta * sd`` per update from noise alone, so the relative dual change over the last 20 % scales with the estimate's
standard error: bringing a trial's measured change ``c`` under 5 % needs its estimates ``(c / 0.05)^2`` times larger
(or as many more updates averaged), the "sample factor" printed (the median over the unsettled trials). It is the
factor by which the constraint estimates' cost (their samples) would grow at the same dual step.
"""
from __future__ import annotations

import argparse
import collections
import math
from pathlib import Path

import numpy as np

from unlearnbench.protocol import SETTLE_TOL, settled
from unlearnbench.records import read_records


def _name(x) -> str:
    return x.get("name") if isinstance(x, dict) else str(x)


def trial_noise(rec: dict) -> float | None:
    """Median over constraints of sd(estimates over the last half) / |threshold|; None without estimates."""
    train = rec.get("train") or {}
    est = train.get("estimates") or []
    b = (rec.get("grid") or {}).get("value")
    if len(est) < 4 or not isinstance(b, (int, float)) or b == 0:
        return None
    steps = train.get("steps") or est[-1][0]
    late = np.array([v for s, v in est if s >= steps / 2], dtype=float)
    if late.ndim != 2 or late.shape[0] < 3:
        return None
    return float(np.median(late.std(axis=0, ddof=1) / abs(float(b))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--task", default=None)
    args = ap.parse_args()
    files = [p for r in args.runs for p in Path(r).rglob("records.jsonl")]
    rows = collections.defaultdict(list)
    for rec in read_records(files):
        if rec.get("attack") or rec.get("status") not in ("ok", "unconverged"):
            continue
        s = settled(rec)
        if s is None:
            continue
        task = _name(rec.get("task"))
        if args.task and task != args.task:
            continue
        conv = (rec.get("train") or {}).get("convergence") or {}
        rows[(task, _name(rec.get("method")))].append(
            (s, conv.get("dual_rel_change"), bool(conv.get("constraints_met")), trial_noise(rec),
             (rec.get("train") or {}).get("steps")))
    print(f"{'task':16s}{'entry':10s}{'settled':>10s}{'change med':>12s}{'met':>8s}{'est. noise':>12s}"
          f"{'steps':>10s}{'sample factor':>15s}")
    for (task, method), v in sorted(rows.items()):
        n, ns = len(v), sum(x[0] for x in v)
        ch = [x[1] for x in v if isinstance(x[1], (int, float)) and math.isfinite(x[1])]
        noise = [x[3] for x in v if x[3] is not None]
        unset = [x[1] for x in v if not x[0] and isinstance(x[1], (int, float)) and math.isfinite(x[1])
                 and x[1] > SETTLE_TOL]
        factor = float(np.median([(c / SETTLE_TOL) ** 2 for c in unset])) if unset else 1.0
        steps = sorted({x[4] for x in v if x[4]})
        span = f"{steps[0]}-{steps[-1]}" if len(steps) > 1 else str(steps[0]) if steps else ""
        print(f"{task:16s}{method:10s}{f'{ns}/{n}':>10s}{np.median(ch) if ch else math.nan:>12.3f}"
              f"{sum(x[2] for x in v):>8d}{np.median(noise) if noise else math.nan:>12.3f}"
              f"{span:>10s}{factor:>15.1f}")


if __name__ == "__main__":
    main()

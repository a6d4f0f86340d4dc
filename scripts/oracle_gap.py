"""What the exact optimum says a comparison on gmm-concept can find: rkl's exact front against the equal-weight family
(ESD / rkl-fixed in expectation) at the protocol's fixed levels, next to the spread the committed records show.

On gmm-concept both fronts are known in closed form (``unlearnbench.oracle``), so the true difference between the
formulations at each level of the comparison protocol (25/50/75/100 % of the way from the pretrained model's
``kl_concept_min`` to the retrained model's) is a number, not an estimate. Set against the task's minimum effect for
"better" and the per-seed spread of ``unlearnbench compare``'s statistic on the committed records, it says whether
"rkl a_better than rkl-fixed" is a verdict the benchmark can reach at any seed count.

    python scripts/oracle_gap.py                       # leaderboards/records, the pair forget set
    python scripts/oracle_gap.py --runs runs/gc --beyond 25,30,45
"""
from __future__ import annotations

import argparse
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    from unlearnbench.compare import compare, margins
    from unlearnbench.protocol import FRACTIONS, anchors
    from unlearnbench.records import read_records
    from unlearnbench.results import collect_tasks
    from unlearnbench.tasks import TASKS

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=["leaderboards/records"])
    ap.add_argument("--a", default="rkl")
    ap.add_argument("--b", default="rkl-fixed")
    ap.add_argument("--beyond", default="22,25,28", help="kl_concept_min values past the retrained model to show")
    args = ap.parse_args(argv)

    task = TASKS.get("gmm-concept")({})
    curves = task.oracle()
    rkl, equal = np.asarray(curves["rkl"]["curve"]), np.asarray(curves["esd"]["curve"])
    tds = collect_tasks(read_records(args.runs))
    td = tds.get("gmm-concept")
    if td is None:
        raise SystemExit(f"no gmm-concept records under {' '.join(args.runs)}")
    anchor = anchors(td)["kl_concept_min"]
    margin = margins("gmm-concept", "kl_pretrained")[1]  # the minimum effect for "better"

    def gap(u: float) -> tuple[float, float, float]:
        """Both exact fronts' KL at kl_concept_min ``u`` (NaN past the end a front is tabulated to)."""
        def at(curve):
            return float(np.interp(u, curve[:, 0], curve[:, 1])) if curve[0, 0] <= u <= curve[-1, 0] else math.nan
        r, e = at(rkl), at(equal)
        return r, e, e - r

    print(f"gmm-concept (forget set {task.forget_name}): kl_concept_min from {anchor.pretrained:.3f} (pretrained) to "
          f"{anchor.retrained:.3f} (retrained, {anchor.source})")
    print(f"{'level':>7} {'kl_concept_min':>15} {'exact rkl KL':>13} {'exact equal KL':>15} {'gap (nats)':>11}")
    gaps = []
    for f, u in zip(FRACTIONS, anchor.levels()):
        r, e, g = gap(u)
        gaps.append(g)
        print(f"{f:>7.0%} {u:>15.3f} {r:>13.4f} {e:>15.4f} {g:>11.4f}")
    for u in (float(v) for v in args.beyond.split(",") if v):
        r, e, g = gap(u)
        print(f"{'past':>7} {u:>15.3f} {r:>13.4f} {e:>15.4f} {g:>11.4f}")
    c = compare(td, args.a, args.b, axes=[("kl_concept_min", "kl_pretrained")])[0]
    true = float(np.mean(gaps))
    sd = float(np.std(c.per_seed, ddof=1)) if len(c.per_seed) > 1 else math.nan
    print(f"\nexact gap averaged over the levels (what compare's statistic estimates): {true:.4f} nats; "
          f"minimum effect for 'better': {margin}")
    print(f"committed records, {args.a} vs {args.b}: {c.verdict}, estimate {c.estimate:+.4f} "
          f"[{c.interval[0]:+.4f}, {c.interval[1]:+.4f}], p {c.p_value:.3g}, {len(c.per_seed)} seeds, "
          f"per-seed sd {sd:.4f}")
    if math.isfinite(sd) and true > 0:
        n = math.ceil(((1.96 + 0.84) * sd / true) ** 2)
        print(f"seeds for 80 % power to see the exact gap at this spread (two-sided 5 %): about {n}")
    if margin is not None and true < margin:
        print(f"the exact gap is below the minimum effect {margin}: even exact models would not be 'a_better' here")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Is an unsettled constrained trial short of its threshold, or did its verdict draw badly? Re-estimate the
constraints of the saved models of a run (``run --save-models``) with many fresh estimates, and set them against
each trial's recorded verdict (``final_estimates`` draws, met within ``met_tol`` of ``|b|`` or two standard errors).

    python scripts/verdict_audit.py runs/dcs-s012 [--trials rkl-eps35-s0,rkl-eps25-s1] [--method rkl]
        [--draws 64] [--unsettled-only]

For each trial: the recorded final estimate and its standard error, and the mean of ``--draws`` fresh estimates on
the saved model with its standard error (the model's constraint value to that precision), the shortfall in units of
``|b|``, and whether the model meets ``b`` within the verdict's relative tolerance (``met_tol``) by the many-draw
mean. A trial whose many-draw mean meets its threshold but whose recorded verdict said unmet drew badly; one whose
many-draw mean is short by more than the tolerance is short. The draws come from the trial's own method code
(``estimate_constraints``) with a generator seeded apart from the trial's.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from unlearnbench.methods import METHODS  # noqa: E402
from unlearnbench.methods._constrained import ConstrainedMethod  # noqa: E402
from unlearnbench.methods.base import make_config  # noqa: E402
from unlearnbench.records import artifact_path, read_records  # noqa: E402
from unlearnbench.saving import load_weights  # noqa: E402
from unlearnbench.tasks import TASKS  # noqa: E402

AUDIT_SEED = 987_654  # fresh draws, apart from every trial seed


def audit(spec: dict, rec: dict, draws: int) -> dict:
    """Many fresh constraint estimates of the trial's saved model: their mean and standard error per constraint."""
    torch.set_num_threads(1)
    task = TASKS.get(spec["task"])(spec.get("task_options"), cache_dir=spec.get("cache_dir"))
    bundle = task.build(int(spec["seed"]), device=torch.device("cpu"))
    model = artifact_path(rec, "model")  # inside the run folder only (records.artifact_path)
    if model is None:
        raise FileNotFoundError(f"{spec['trial_id']}: no saved model inside its run folder (run with --save-models)")
    load_weights(bundle.net, model)
    cls = METHODS.get(spec["method"])
    cfg = make_config(cls.Config, dict(spec["settings"]), spec["method"])
    method = cls(cfg, bundle, torch.Generator().manual_seed(AUDIT_SEED + int(spec["seed"])))
    if not isinstance(method, ConstrainedMethod):
        raise ValueError(f"{spec['trial_id']}: {spec['method']} has no constraints to audit")
    est = torch.stack([method.estimate_constraints().to(torch.float64).cpu() for _ in range(draws)])
    mean, se = est.mean(0), est.std(0) / draws ** 0.5
    return {"mean": mean.tolist(), "se": se.tolist(), "sd": est.std(0).tolist(),
            "short_rel": (method.violation(mean) / abs(cfg.eps)).tolist(),
            "met": method.constraints_met(mean)}  # within met_tol of |b|: the many-draw mean needs no 2-se slack


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", help="a run directory made with --save-models")
    ap.add_argument("--trials", default=None, help="comma-separated trial ids (default: every constrained trial)")
    ap.add_argument("--method", default=None)
    ap.add_argument("--draws", type=int, default=64)
    ap.add_argument("--unsettled-only", action="store_true")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    run = Path(args.run)
    plan = json.loads((run / "plan.json").read_text())
    specs = {s["trial_id"]: s for s in plan["trials"]}
    wanted = set(args.trials.split(",")) if args.trials else None
    rows = []
    print(f"{'trial':24s}{'b':>8s}{'recorded':>18s}{'verdict':>9s}{f'{args.draws} fresh':>20s}{'short':>8s}"
          f"{'met':>6s}{'s':>6s}")
    for rec in read_records([run / "records.jsonl"]):
        tid = rec.get("trial_id")
        conv = ((rec.get("train") or {}).get("convergence") or {})
        if rec.get("attack") or rec.get("status") != "ok" or conv.get("settled") is None or tid not in specs:
            continue
        if (wanted and tid not in wanted) or (args.method and rec.get("method") != args.method):
            continue
        if args.unsettled_only and conv["settled"]:
            continue
        if artifact_path(rec, "model") is None:
            print(f"{tid:24s} no saved model (run without --save-models)")
            continue
        t0 = time.perf_counter()
        out = audit(specs[tid], rec, args.draws)
        train = rec["train"]
        recorded = f"{train['constraint_estimates'][0]:.4g} ± {train['constraint_se'][0]:.2g}"
        fresh = f"{out['mean'][0]:.4g} ± {out['se'][0]:.2g}"
        b = rec["grid"]["value"]
        print(f"{tid:24s}{b:8.4g}{recorded:>18s}{'settled' if conv['settled'] else 'unset.':>9s}{fresh:>20s}"
              f"{out['short_rel'][0]:8.3f}{str(out['met']):>6s}{time.perf_counter() - t0:6.0f}", flush=True)
        rows.append({"trial_id": tid, "b": b, "settled": conv["settled"], "recorded": train["constraint_estimates"],
                     "recorded_se": train["constraint_se"], **out})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

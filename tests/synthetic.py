"""Synthetic trial records for the results, leaderboard, claims and browser tests (no training, no torch)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

GMM_AXES = [["kl_concept_min", "kl_pretrained"], ["forgotten_mass", "kl_pretrained"]]
TOY_AXES = [["regen_rate", "kid_retain"], ["forget_nll", "retain_nll"]]
METRICS = {  # name -> (role, higher_is_better)
    "kl_concept_min": ("unlearning", True), "forgotten_mass": ("unlearning", True),
    "kl_pretrained": ("retention", False),
    "regen_rate": ("unlearning", False), "forget_nll": ("unlearning", True),
    "kid_retain": ("retention", False), "retain_nll": ("retention", False),
}
PRETRAINED = {"kl_concept_min": 0.0, "forgotten_mass": 0.0, "kl_pretrained": 0.0, "regen_rate": 1.0,
              "forget_nll": 1.0, "kid_retain": 0.0, "retain_nll": 1.0}
ORACLE_CURVE = [[0.0, 0.0], [0.5, 0.02], [1.0, 0.05], [2.0, 0.11], [4.0, 0.25]]
SEED_NOISE = (-0.01, 0.01, 0.0, 0.02)


def _metric(name: str, value: float, n: int = 1000) -> dict:
    role, hib = METRICS[name]
    return {"value": value, "stderr": 0.001, "n": n, "role": role, "higher_is_better": hib}


def make_record(task: str, method: str, value: float, seed: int, *, status: str = "ok", cost: float = 1.0,
                created_at: str = "2026-01-01T00:00:00.000+00:00", samples: str | None = None,
                lr: float = 1e-3) -> dict:
    """One synthetic trial. ``cost`` scales the retention damage (lower = a better method)."""
    kind = "concept" if "concept" in task else "data"
    noise = SEED_NOISE[seed % len(SEED_NOISE)]
    constrained = method in ("rkl", "fkl", "lik")
    rec = {
        "schema_version": 1, "run_id": f"run-{task}", "trial_id": f"{method}-g{value:g}-s{seed}",
        "created_at": created_at, "status": status, "error": None,
        "task": {"name": task, "kind": kind, "forget_set": "pair", "options": {},
                 "axes": GMM_AXES if "concept" in task else TOY_AXES},
        "method": method, "method_config": {"lr": lr, "b": value}, "grid": {"name": "eps", "param": "b", "value": value},
        "seed": seed, "metrics": {}, "oracle": None,
        "train": {"steps": 100 + seed, "final_duals": None, "duals": [], "constraint_estimates": None,
                  "constraint_slack": None, "constraints_met": None},
        "timing": {"setup_s": 0.5, "train_s": 2.0, "eval_s": 1.0, "total_s": 3.5 + seed},
        "config_hash": f"h-{method}-{value:g}",
        "env": {"unlearnbench": "0.1.0", "git_sha": "abc123", "torch": "2.14.1", "numpy": "2.4.6",
                "platform": "Linux", "gpu": None},
        "artifacts": {},
    }
    if status == "failed":
        rec["error"] = f"RuntimeError: synthetic failure of {method} at {value:g} <seed {seed}>"
        return rec
    if "concept" in task:
        rec["metrics"] = {
            "kl_concept_min": _metric("kl_concept_min", value * 1.0 + noise),
            "forgotten_mass": _metric("forgotten_mass", 1 - math.exp(-value) + noise),
            "kl_pretrained": _metric("kl_pretrained", cost * 0.06 * value ** 1.2 + 0.5 * abs(noise)),
        }
        rec["oracle"] = {"fronts": {"rkl": {"unlearning_metric": "kl_concept_min",
                                            "retention_metric": "kl_pretrained", "level": value,
                                            "front_value": 0.05 * value, "gap": 0.01 * cost * value,
                                            "lambda_star": [0.1, 0.2], "curve": ORACLE_CURVE}},
                         "lambda": [0.1, 0.2]}
    else:
        rec["metrics"] = {
            "regen_rate": _metric("regen_rate", round(math.exp(-value) + noise, 3)),
            "forget_nll": _metric("forget_nll", 1 + value + noise),
            "kid_retain": _metric("kid_retain", cost * 0.01 * value + 0.5 * abs(noise)),
            "retain_nll": _metric("retain_nll", 1 + cost * 0.1 * value),
        }
        if samples:
            rec["artifacts"] = {"samples": samples}
    for name in list(rec["metrics"]):
        rec["metrics"][f"{name}_pretrained"] = {"value": PRETRAINED[name], "stderr": None, "n": 1000, "role": "info",
                                                "higher_is_better": METRICS[name][1]}
    if status == "diverged":
        rec["error"] = "diverged: kl_pretrained 1e+50 outside its sane range [0, 100]"
        rec["metrics"][next(iter(rec["metrics"]))]["value"] = 1e50
    if constrained:
        duals = [[s, [0.1 * value * (1 - math.exp(-s / 30)), 0.05 * value * (1 - math.exp(-s / 50))]]
                 for s in range(0, 101, 20)]
        met = bool(value < 2 or seed == 0)
        rec["train"].update(duals=duals, final_duals=duals[-1][1], constraints_met=met,
                            convergence={"dual_rel_change": 0.01, "converged": value < 2, "final_slack": [0.0],
                                         "constraints_met": met})
    return rec


RETRAINED = {"kl_concept_min": 2.0, "forgotten_mass": 0.8, "kl_pretrained": 0.1, "regen_rate": 0.1, "forget_nll": 2.5,
             "kid_retain": 0.02, "retain_nll": 1.1}


def reference_record(task: str, seed: int, shift: float = 0.0) -> dict:
    """The retrained reference scored by the task's evaluation (an ``unlearnbench attack`` record named
    ``reference``): the anchor of the comparison protocol's levels."""
    names = [m for a in (GMM_AXES if "concept" in task else TOY_AXES) for m in a]
    return {"schema_version": 1, "run_id": f"ref-{task}", "trial_id": f"reference--retrained-s{seed}",
            "created_at": "2026-01-01T00:00:00.000+00:00", "status": "ok", "error": None,
            "task": {"name": task, "kind": "concept" if "concept" in task else "data", "forget_set": "pair",
                     "options": {}},
            "method": "retrained", "method_config": {}, "grid": None, "seed": seed,
            "metrics": {m: _metric(m, RETRAINED[m] + shift * (seed - 1)) for m in dict.fromkeys(names)},
            "attack": {"name": "reference", "reference": "retrained", "budgets": []}}


def write_records(path: Path, records: list[dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "records.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    return path


def grid_records(task: str, costs: dict[str, float], seeds=(0, 1, 2), values=(0.5, 1.0, 2.0), references=False,
                 **kw) -> list[dict]:
    """Every method x grid value x seed, plus the retrained reference's evaluation at each seed (``references``)."""
    out = [make_record(task, m, v, s, cost=c, **kw) for m, c in costs.items() for v in values for s in seeds]
    return out + ([reference_record(task, s) for s in seeds] if references else [])


def synthetic_runs(tmp_path: Path) -> list[Path]:
    """2 tasks x 2 methods x 3 grid values x 3 seeds; one failed and one diverged trial, one superseded failure,
    sample grids on the data task."""
    import matplotlib.image

    sample_dir = tmp_path / "runs" / "b" / "artifacts"  # inside the run folder: records name them relative to it
    sample_dir.mkdir(parents=True, exist_ok=True)
    gmm = grid_records("toy-concept", {"rkl": 1.0, "esd": 1.6}, references=True)
    toy = []
    for method, cost in (("fkl", 1.0), ("siss", 1.5)):
        for v in (0.5, 1.0, 2.0):
            for s in (0, 1, 2):
                png = sample_dir / f"{method}-{v:g}-{s}.png"
                matplotlib.image.imsave(png, np.full((8, 24), v / 2.0), cmap="gray", vmin=0, vmax=1)
                toy.append(make_record("toy-data", method, v, s, cost=cost, samples=f"artifacts/{png.name}"))
    # esd at 2.0 seed 1 failed (newest record); rkl at 0.5 seed 0 failed first and was resumed later
    gmm = [r for r in gmm if r["trial_id"] != "esd-g2-s1"]
    gmm.append(make_record("toy-concept", "esd", 2.0, 1, status="failed", created_at="2026-01-02T00:00:00.000+00:00"))
    gmm.insert(0, make_record("toy-concept", "rkl", 0.5, 0, status="failed",
                              created_at="2025-12-31T00:00:00.000+00:00"))
    toy = [r for r in toy if r["trial_id"] != "siss-g2-s2"]
    toy.append(make_record("toy-data", "siss", 2.0, 2, status="diverged", cost=1.5))
    return [write_records(tmp_path / "runs" / "a", gmm), write_records(tmp_path / "runs" / "b", toy)]

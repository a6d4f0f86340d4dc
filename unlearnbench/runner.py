"""One trial, end to end: build the task's models, run the method's loop with its dual updates, evaluate, and return
the record. The runner owns the loop; methods own the maths (STYLE.md section 4)."""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
import traceback
from typing import Any

import numpy as np
import torch

from unlearnbench.cache import config_hash
from unlearnbench.methods import METHODS
from unlearnbench.methods._constrained import ConstrainedMethod
from unlearnbench.methods.base import make_config
from unlearnbench.records import SCHEMA_VERSION, environment, now_iso
from unlearnbench.tasks import TASKS

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def build_method_config(task, method: str, overrides: dict[str, Any], grid: dict | None):
    """Method defaults < the task's defaults for that method < user overrides < the grid value."""
    cls = METHODS.get(method)
    values = dict(getattr(task, "method_defaults", {}).get(method, {}))
    values.update(overrides or {})
    if grid is not None:
        values[grid["param"]] = grid["value"]
    if values.get("steps") is None:
        values["steps"] = task.default_steps
    return make_config(cls.Config, values, method)


def train(method, log_every: int = 50) -> dict[str, Any]:
    """The loop: Adam on the method's trainable parameters, clipping, dual updates on a running estimate."""
    cfg = method.cfg
    params = list(method.trainable_parameters())
    if not params:
        raise ValueError(f"method {method.name}: no trainable parameters (trainable={cfg.trainable})")
    opt = torch.optim.Adam(params, lr=cfg.lr)
    method.setup()
    constrained = isinstance(method, ConstrainedMethod)
    duals: list = [[0, method.duals.tolist()]] if constrained else []
    estimates: list = []
    history: list = []
    accum = int(method.bundle.extras.get("grad_accum", 1))  # micro-batches per optimizer step (paper-scale tasks)
    for step in range(cfg.steps):
        method.step = step
        for _ in range(accum):
            losses = method.losses()
            obj = method.backward(losses)
            if not torch.isfinite(obj):
                raise FloatingPointError(f"method {method.name}: objective became {obj.item()} at step {step}")
        if accum > 1:
            for p in params:
                if p.grad is not None:
                    p.grad.div_(accum)
        method.after_backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if constrained and step + 1 >= cfg.dual_warmup and (step + 1) % cfg.dual_every == 0:
            est = method.estimate_constraints()
            new = method.dual_step(est)
            estimates.append([step + 1, est.tolist()])
            duals.append([step + 1, new.tolist()])
        if step % log_every == 0 or step == cfg.steps - 1:
            row = {k: float(v.detach().float().mean()) for k, v in losses.items()}
            row["objective"] = float(obj)
            history.append([step, row])
            logger.debug("step %d %s", step, row)
    out: dict[str, Any] = {"steps": cfg.steps, "history": history}
    if constrained:
        final = method.estimate_constraints()
        out.update(final_duals=method.duals.tolist(), duals=duals, estimates=estimates,
                   constraint_estimates=final.tolist(), constraint_slack=(-method.violation(final.double())).tolist(),
                   constraints_met=method.constraints_met(final))
    else:
        out.update(final_duals=None, duals=[], constraint_estimates=None, constraint_slack=None, constraints_met=None)
    return out


def run_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one trial spec (see :func:`unlearnbench.config.plan_trials`) and return its record (status ok)."""
    t0 = time.perf_counter()
    torch.set_num_threads(int(spec.get("threads") or 1))
    gen = seed_everything(int(spec["seed"]))
    task = TASKS.get(spec["task"])(spec.get("task_options"), cache_dir=spec.get("cache_dir"))
    device = torch.device(spec.get("device") or ("cuda" if torch.cuda.is_available() and spec.get("gpus") else "cpu"))
    bundle = task.build(int(spec["seed"]), device=device)
    if spec.get("artifact_dir"):
        bundle.extras["artifact_dir"] = spec["artifact_dir"]
    cfg = build_method_config(task, spec["method"], spec.get("method_config", {}), spec.get("grid"))
    method = METHODS.get(spec["method"])(cfg, bundle, gen)
    t1 = time.perf_counter()
    train_info = train(method)
    t2 = time.perf_counter()
    bundle.net.eval()
    seed_everything(int(spec["seed"]) + 10_000)  # evaluation noise independent of the training length
    metrics = task.evaluate(bundle, int(spec["seed"]))
    t3 = time.perf_counter()
    oracle = None
    if hasattr(task, "oracle_report"):
        oracle = task.oracle_report(metrics, spec["method"], train_info.get("final_duals"))
    record = base_record(spec, task)
    bad = sorted(k for k, v in metrics.items() if v.role != "info" and not math.isfinite(v.value))
    if spec.get("save_models") and not bad and spec.get("artifact_dir"):
        from unlearnbench.saving import save_unlearned

        saved = save_unlearned(bundle.net, os.path.join(spec["artifact_dir"], "model"))
        bundle.extras.setdefault("artifacts", {}).update(saved)
    record.update(
        status="diverged" if bad else "ok",
        error=f"diverged: non-finite {', '.join(bad)} (the unlearned model broke down)" if bad else None,
        method_config=dataclasses.asdict(cfg),
        metrics={k: v.to_dict() for k, v in sorted(metrics.items())},
        oracle=oracle,
        train=train_info,
        timing={"setup_s": t1 - t0, "train_s": t2 - t1, "eval_s": t3 - t2, "total_s": t3 - t0,
                "gpu_s": (t3 - t0) * float(spec.get("gpus") or 1) if device.type == "cuda" else 0.0,
                "train_images_per_s": cfg.steps * cfg.batch_size * int(bundle.extras.get("grad_accum", 1))
                / max(t2 - t1, 1e-9)},
        artifacts=relative_artifacts(bundle.extras.get("artifacts", {}), spec.get("run_dir")),
    )
    return record


def relative_artifacts(artifacts: dict[str, str], run_dir: str | None) -> dict[str, str]:
    """Artifact paths relative to the run directory (so a run directory can be moved or committed)."""
    out = {}
    for k, v in artifacts.items():
        if run_dir and os.path.isabs(v) and os.path.commonpath([os.path.abspath(v), run_dir]) == run_dir:
            v = os.path.relpath(v, run_dir)
        out[k] = v
    return out


def base_record(spec: dict[str, Any], task=None) -> dict[str, Any]:
    task_info: dict[str, Any] = {"name": spec["task"], "options": spec.get("task_options") or {}}
    if task is not None:
        task_info.update(task.describe())
        task_info["axes"] = [list(a) for a in task.axes]
    return {
        "schema_version": SCHEMA_VERSION, "run_id": spec.get("run_id"), "trial_id": spec["trial_id"],
        "created_at": now_iso(), "status": "failed", "error": None, "task": task_info, "method": spec["method"],
        "method_config": spec.get("method_config", {}), "grid": spec.get("grid"), "seed": spec["seed"],
        "metrics": {}, "oracle": None, "train": None, "timing": None, "config_hash": spec_hash(spec),
        "env": environment(), "artifacts": {},
    }


def spec_hash(spec: dict[str, Any]) -> str:
    keys = ("task", "task_options", "method", "method_config", "grid", "seed")
    return config_hash({k: spec.get(k) for k in keys})


def execute_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Run a trial; an exception becomes a failed record (the sweep goes on)."""
    t0 = time.perf_counter()
    try:
        return run_trial(spec)
    except Exception as e:  # noqa: BLE001 - every failure is recorded, never lost
        logger.warning("trial %s failed: %s", spec["trial_id"], e)
        record = base_record(spec)
        tb = traceback.format_exc().strip().splitlines()
        record.update(status="failed", error=f"{type(e).__name__}: {e}", traceback="\n".join(tb[-12:]),
                      timing={"total_s": time.perf_counter() - t0})
        return record


def summary_row(record: dict[str, Any]) -> dict[str, Any]:
    """Flat row for summary.csv."""
    row = {"trial_id": record["trial_id"], "task": record["task"]["name"], "method": record["method"],
           "grid": (record.get("grid") or {}).get("name"), "param": (record.get("grid") or {}).get("param"),
           "value": (record.get("grid") or {}).get("value"), "seed": record["seed"], "status": record["status"],
           "error": record.get("error")}
    for name, m in sorted(record.get("metrics", {}).items()):
        row[name] = m["value"]
    train = record.get("train") or {}
    if train.get("final_duals") is not None:
        row["duals"] = " ".join(f"{d:.4g}" for d in train["final_duals"])
        row["constraints_met"] = train.get("constraints_met")
    fronts = (record.get("oracle") or {}).get("fronts") or {}
    for fname, f in sorted(fronts.items()):
        if f.get("gap") is not None:
            row[f"gap_{fname}"] = f["gap"]
    row["total_s"] = (record.get("timing") or {}).get("total_s")
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


def set_default_env() -> None:
    """Offline-friendly defaults for every process that runs trials."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

"""One trial, end to end: build the task's models, run the method's loop with its dual updates, evaluate, and return
the record. The runner owns the loop; methods own the maths (STYLE.md section 4)."""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
import time
from typing import Any, Callable

import numpy as np
import torch

from unlearnbench.methods import METHODS
from unlearnbench.methods._constrained import ConstrainedMethod
from unlearnbench.methods.base import make_config
from unlearnbench.protocol import SETTLE_TOL
from unlearnbench.config import build_method_config
from unlearnbench.records import base_record, relative_artifacts
from unlearnbench.tasks import TASKS

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class LossExploded(Exception):
    """A training loss became non-finite or exploded; the trial is ``diverged``, not failed."""


def check_losses(losses: dict[str, torch.Tensor], obj: torch.Tensor, step: int, scale: dict[str, list[float]],
                 factor: float) -> None:
    """Raise :class:`LossExploded` when the objective is non-finite or a loss term's batch mean exceeds ``factor``
    times max(1, its median over the first 10 steps)."""
    if not torch.isfinite(obj):
        raise LossExploded(f"objective became {obj.item()} at step {step}")
    for k, v in losses.items():
        m = float(v.detach().float().mean())
        if not math.isfinite(m):
            raise LossExploded(f"loss term {k!r} became {m} at step {step}")
        first = scale.setdefault(k, [])
        if len(first) < 10:
            first.append(abs(m))
            continue
        ref = max(1.0, float(np.median(first)))
        if abs(m) > factor * ref:
            raise LossExploded(f"loss term {k!r} reached {m:.3g} at step {step}, over {factor:g} x its early scale "
                               f"{ref:.3g}")


def convergence(cfg, duals: list, slack: list[float] | None, met: bool | None,
                steps: int | None = None, floor: float = 0.0) -> dict[str, Any]:
    """How settled the duals are: ``dual_rel_change = ||lambda_T - lambda_0.8T||_1 / max(||lambda_T||_1,
    ||lambda_0.8T||_1, floor)`` over the last 20% of the ``steps`` run (default ``cfg.steps``; 0 when all are 0;
    ``floor``: the method's :meth:`~ConstrainedMethod.dual_floor`),
    ``converged`` when it is at most ``cfg.converge_tol``, ``settled`` when it is at most ``cfg.settle_tol`` and the
    constraints are met; with the final constraint slack."""
    if not duals:
        return {"dual_rel_change": None, "converged": None, "settled": None, "final_slack": slack,
                "constraints_met": met}
    start = 0.8 * (steps or cfg.steps)
    before = [d for s, d in duals if s <= start] or [duals[0][1]]
    a, b = np.asarray(before[-1], dtype=float), np.asarray(duals[-1][1], dtype=float)
    denom = max(np.abs(a).sum(), np.abs(b).sum(), floor)
    rel = float(np.abs(b - a).sum() / denom) if denom > 0 else 0.0
    return {"dual_rel_change": rel, "converged": rel <= cfg.converge_tol,
            "settled": bool(met) and rel <= getattr(cfg, "settle_tol", SETTLE_TOL), "final_slack": slack,
            "constraints_met": met}


def all_finite(params) -> bool:
    """Whether every tensor of ``params`` is finite (no NaN or inf)."""
    return all(bool(torch.isfinite(p).all()) for p in params)


Report = Callable[[dict[str, Any]], None]


def train(method, log_every: int = 50, loss_explosion: float = 1e4, report: Report | None = None) -> dict[str, Any]:
    """The loop: Adam on the method's trainable parameters, clipping, dual updates on a running estimate.

    A loss that explodes (:func:`check_losses`) ends the loop early; the returned ``diverged`` says why (None if not).
    ``report`` gets, every ``log_every`` steps and at the last, :func:`progress_row`: the step, the loss terms, the
    duals and the latest constraint estimates (Ray Tune's intermediate results; the console's progress lines).
    """
    cfg = method.cfg
    params = list(method.trainable_parameters())
    if method.closed_form:  # one edit in setup(); an inference-time method (SLD) edits no weights at all
        return closed_form_edit(method, params)
    if not params:
        raise ValueError(f"method {method.name}: no trainable parameters (trainable={cfg.trainable})")
    opt = torch.optim.Adam(params, lr=cfg.lr)
    method.setup()
    constrained = isinstance(method, ConstrainedMethod)
    duals: list = [[0, method.duals.tolist()]] if constrained else []
    estimates: list = []
    history: list = []
    scale: dict[str, list[float]] = {}
    diverged = None
    accum = int(method.bundle.extras.get("grad_accum", 1))  # micro-batches per optimizer step (paper-scale tasks)
    # the stop rule: a constrained method with max_steps trains past `steps` until it is settled (or the cap)
    total = max(cfg.steps, int(getattr(cfg, "max_steps", None) or 0)) if constrained else cfg.steps
    ran = 0
    for step in range(total):
        ran = step + 1
        method.step = step
        try:
            for _ in range(accum):
                losses = method.losses()
                obj = method.backward(losses)
                check_losses(losses, obj, step, scale, loss_explosion)
        except LossExploded as e:
            diverged = f"method {method.name}: {e}"
            history.append([step, {k: float(v.detach().float().mean()) for k, v in losses.items()}])
            break
        if accum > 1:
            for p in params:
                if p.grad is not None:
                    p.grad.div_(accum)
        method.after_backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        if constrained:  # the primal rate's annealing (ConstrainedConfig.primal_anneal; 1 without it)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * method.primal_lr_scale(step)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if constrained and step + 1 >= cfg.dual_warmup and (step + 1) % cfg.dual_every == 0:
            est = method.estimate_constraints()
            if not bool(torch.isfinite(est).all()):  # the network blew up between loss checks: no dual step on it
                diverged = (f"method {method.name}: the constraint estimate became {est.tolist()} at step {step + 1} "
                            f"(a numerical blow-up)")
                break
            new = method.dual_step(est)
            estimates.append([step + 1, est.tolist()])
            duals.append([step + 1, new.tolist()])
            if total > cfg.steps and step + 1 >= cfg.steps and settled_now(method, cfg, duals, step + 1):
                break
        if step % log_every == 0 or step == total - 1:
            row = {k: float(v.detach().float().mean()) for k, v in losses.items()}
            row["objective"] = float(obj)
            history.append([step, row])
            logger.debug("step %d %s", step, row)
            if report is not None:
                report(progress_row(step + 1, total, row, method.duals.tolist() if constrained else None,
                                    estimates[-1][1] if estimates else None))
    if diverged is None and not all_finite(params):
        diverged = f"method {method.name}: trainable parameters became non-finite (a numerical blow-up)"
    if diverged is None:
        method.finish()
        if not all_finite(method.net.parameters()):
            diverged = f"method {method.name}: its final step (finish) left non-finite weights"
    out: dict[str, Any] = {"steps": ran if total > cfg.steps else cfg.steps, "history": history, "diverged": diverged}
    if constrained and diverged is None:
        final = method.final_estimate()
        slack = (-method.violation(final.double())).tolist()
        met, se = method.constraints_met(final, method.final_se), method.final_se
        out.update(final_duals=method.duals.tolist(), duals=duals, estimates=estimates,
                   constraint_estimates=final.tolist(), constraint_slack=slack, constraints_met=met,
                   constraint_se=None if se is None else se.tolist(),
                   constraints_met_strict=method.constraints_met(final),
                   convergence=convergence(cfg, duals, slack, met, out["steps"], method.dual_floor()))
    else:
        out.update(final_duals=method.duals.tolist() if constrained else None, duals=duals, constraint_estimates=None,
                   constraint_slack=None, constraints_met=None, convergence=convergence(cfg, [], None, None))
    return out


def settled_now(method, cfg, duals: list, steps: int) -> bool:
    """The stop rule's test after a dual update past ``steps``: the duals' change over the last 20 % is within the
    settle tolerance, and the constraints hold on the estimate the final verdict uses (``final_estimates`` fresh draws,
    within two of their standard errors; with ``stop_strict``, meeting each threshold itself): a single estimate
    passed trials whose final verdict then said unmet."""
    if not convergence(cfg, duals, None, True, steps, method.dual_floor())["settled"]:
        return False
    return method.constraints_met(method.final_estimate(), method.final_se, strict=getattr(cfg, "stop_strict", False))


def closed_form_edit(method, params: list) -> dict[str, Any]:
    """A closed-form method's "training": its one edit (``setup``), no optimizer step; the same fields as
    :func:`train` returns, with ``steps`` 0 and ``diverged`` set when the edit left non-finite weights."""
    if method.cfg.steps:
        raise ValueError(f"method {method.name} is a closed-form edit and takes no optimizer steps; got "
                         f"steps={method.cfg.steps}, valid: 0 (or leave it out)")
    method.setup()
    diverged = None if all_finite(params) else (f"method {method.name}: the closed-form edit gave non-finite weights "
                                                f"(an ill-conditioned system)")
    return {"steps": 0, "history": [], "diverged": diverged, "final_duals": None, "duals": [],
            "constraint_estimates": None, "constraint_slack": None, "constraints_met": None,
            "convergence": convergence(method.cfg, [], None, None)}


def progress_row(step: int, steps: int, losses: dict[str, float], duals: list[float] | None,
                 estimates: list[float] | None) -> dict[str, Any]:
    """One intermediate result of a trial: ``step``, ``steps``, ``loss/<term>`` (batch means, ``objective`` too),
    ``lambda/<i>`` and ``constraint/<i>`` (the last dual step's estimate), all plain numbers."""
    out: dict[str, Any] = {"step": step, "steps": steps, "loss": {k: float(v) for k, v in losses.items()}}
    if duals is not None:
        out["lambda"] = {str(i): float(d) for i, d in enumerate(duals)}
    if estimates is not None:
        out["constraint"] = {str(i): float(g) for i, g in enumerate(estimates)}
    return out


def method_config(task, spec) -> Any:
    """The trial's method config: the settings resolved once when it was planned (``spec["settings"]``), or, for a
    spec without them (hand-written, or planned by an older version), resolved now from its overrides and grid."""
    settings = spec.get("settings")
    if settings is not None:
        return make_config(METHODS.get(spec["method"]).Config, dict(settings), spec["method"])
    return build_method_config(task, spec["method"], spec.get("method_config", {}), spec.get("grid"))


def run_trial(spec: dict[str, Any], report: Report | None = None) -> dict[str, Any]:
    """Run one trial spec (see :func:`unlearnbench.config.plan_trials`) and return its record (status ok);
    ``report`` receives the training loop's intermediate results (:func:`train`)."""
    t0 = time.perf_counter()
    torch.set_num_threads(int(spec.get("threads") or 1))
    gen = seed_everything(int(spec["seed"]))
    task = TASKS.get(spec["task"])(spec.get("task_options"), cache_dir=spec.get("cache_dir"))
    device = torch.device(spec.get("device") or ("cuda" if torch.cuda.is_available() and spec.get("gpus") else "cpu"))
    bundle = task.build(int(spec["seed"]), device=device)
    if spec.get("artifact_dir"):
        bundle.extras["artifact_dir"] = spec["artifact_dir"]
    cfg = method_config(task, spec)
    method = METHODS.get(spec["method"])(cfg, bundle, gen)
    t1 = time.perf_counter()
    train_info = train(method, loss_explosion=float(getattr(task, "loss_explosion", 1e4)), report=report)
    t2 = time.perf_counter()
    record = base_record(spec, task)
    record.update(method_config=dataclasses.asdict(cfg), train=train_info)
    hook = getattr(bundle.net, "sampling_hook", None)
    if hook is not None:  # an inference-time method's sampler, applied by every guided sampler of the evaluation
        record["sampling_hook"] = hook.to_dict()
    if train_info["diverged"]:
        record.update(status="diverged", error=f"diverged in training: {train_info['diverged']}",
                      timing={"setup_s": t1 - t0, "train_s": t2 - t1, "eval_s": 0.0, "total_s": t2 - t0})
        return record
    bundle.net.eval()
    seed_everything(int(spec["seed"]) + 10_000)  # evaluation noise independent of the training length
    try:
        metrics = task.evaluate(bundle, int(spec["seed"]))
    except Exception as e:
        if all_finite(bundle.net.parameters()):
            raise
        record.update(status="diverged", error=f"diverged: evaluation raised {type(e).__name__}: {e} on a network "
                                               f"whose weights are non-finite (a numerical blow-up)",
                      timing={"setup_s": t1 - t0, "train_s": t2 - t1, "eval_s": time.perf_counter() - t2,
                              "total_s": time.perf_counter() - t0})
        return record
    t3 = time.perf_counter()
    record["task"].update(task.describe())  # what evaluation recorded about itself (backends, versions, sampler)
    oracle = None
    if hasattr(task, "oracle_report"):
        oracle = task.oracle_report(metrics, spec["method"], train_info.get("final_duals"))
    bad = task.insane_metrics(metrics)
    if spec.get("save_models") and not bad and spec.get("artifact_dir"):
        from unlearnbench.saving import save_unlearned

        saved = save_unlearned(bundle.net, os.path.join(spec["artifact_dir"], "model"))
        bundle.extras.setdefault("artifacts", {}).update(saved)
    record.update(
        status="diverged" if bad else "ok",
        error=f"diverged: {'; '.join(bad)} (the unlearned model broke down)" if bad else None,
        metrics={k: v.to_dict() for k, v in sorted(metrics.items())},
        oracle=oracle,
        timing={"setup_s": t1 - t0, "train_s": t2 - t1, "eval_s": t3 - t2, "total_s": t3 - t0,
                "gpu_s": (t3 - t0) * float(spec.get("gpus") or 1) if device.type == "cuda" else 0.0,
                "train_images_per_s": cfg.steps * cfg.batch_size * int(bundle.extras.get("grad_accum", 1))
                / max(t2 - t1, 1e-9)},
        artifacts=relative_artifacts(bundle.extras.get("artifacts", {}), spec.get("run_dir")),
    )
    return record


def set_default_env() -> None:
    """Offline-friendly defaults for every process that runs trials."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

"""One attack trial: load the attacked model (a saved unlearned network or a reference), climb the ladder (or score
the reference with the task's own evaluation), return the record; called by :func:`unlearnbench.trials.execute_trial`."""
from __future__ import annotations

import copy
import math
import time
from typing import Any

import torch

from unlearnbench.records import base_record
from unlearnbench.results import REFERENCE_EVAL
from unlearnbench.robustness.attacks import ATTACKS, measure, scored_prompts, steps_to_half
from unlearnbench.robustness.references import retrained_net
from unlearnbench.runner import seed_everything
from unlearnbench.saving import load_weights
from unlearnbench.tasks import TASKS
from unlearnbench.tasks.base import MetricValue


def run_attack_trial(spec: dict[str, Any]) -> dict[str, Any]:
    """Load the attacked model, climb the ladder, return the record (status ok)."""
    t0 = time.perf_counter()
    torch.set_num_threads(int(spec.get("threads") or 1))
    seed = int(spec["seed"])
    seed_everything(seed)
    a = spec["attack"]
    task = TASKS.get(spec["task"])(spec.get("task_options"), cache_dir=spec.get("cache_dir"))
    device = torch.device(spec.get("device") or ("cuda" if torch.cuda.is_available() and spec.get("gpus") else "cpu"))
    bundle = task.build(seed, device=device)
    pretrained = copy.deepcopy(bundle.net).eval()
    if a["reference"] == "pretrained":
        net = bundle.net
    elif a["reference"] == "retrained":
        net = retrained_net(task, device)
    else:
        net = load_weights(bundle.net, a["model"]).to(device)
    t1 = time.perf_counter()
    settings, budgets, name = a["settings"], list(a["budgets"]), a["name"]
    metrics: dict[str, MetricValue] = {}
    ladder: dict[str, Any] = {}
    if name == REFERENCE_EVAL:  # the task's evaluation, seeded as run_trial seeds it, of the reference's weights
        bundle.net.load_state_dict(net.state_dict())
        bundle.net.eval()
        seed_everything(seed + 10_000)
        metrics.update(task.evaluate(bundle, seed))
    elif not ATTACKS.get(name).climbs:
        out = ATTACKS.get(name)().score(task, bundle, net, seed, settings)
        if "_intervals" in out:
            ladder["intervals"] = out.pop("_intervals")
        metrics.update(out)
    else:
        level = measure(task, bundle, pretrained, scored_prompts(task, bundle), seed)
        values, secs = ATTACKS.get(name)().climb(task, bundle, net, budgets, seed, settings)
        for k, v in zip(budgets, values):
            metrics[f"{name}_{a['measure']}@{k}"] = v
        half = steps_to_half(budgets, [v.value for v in values], level.value)
        metrics[f"{name}_steps_to_half"] = MetricValue(half if half is not None else math.nan, None, None,
                                                       "robustness", True)
        ladder.update(values=[v.value for v in values], stderr=[v.stderr for v in values],
                      n=[v.n for v in values], pretrained_level=level.value, steps_to_half=half,
                      seconds_at_rung=secs)
    t2 = time.perf_counter()
    record = base_record(spec, task)
    record.update(status="ok", metrics={k: v.to_dict() for k, v in sorted(metrics.items())},
                  timing={"setup_s": t1 - t0, "attack_s": t2 - t1, "total_s": t2 - t0})
    record["attack"] = {**a, **ladder}
    return record

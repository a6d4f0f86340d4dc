"""Retrained references: the network a task would have if its forget set had never been in the training data.

Exact unlearning's gold standard, drawn next to every method by the robustness ladder (:mod:`unlearnbench.attack`).
Each is built by the same code as the task's pretrained network, from the same data minus the forget set, and cached
the same way (:func:`unlearnbench.cache.cached_torch`: keyed by its configuration and the source of its builder):

- ``gmm-concept``: an MLP distilled, like the pretrained one, from the exact retrain distribution: the null prompt's
  mixture without the erased components (renormalised). The erased prompts' rows copy that null row (a model that
  never saw the concept has no meaning for its word); the kept prompts are unchanged.
- ``gmm-data``: distilled from the smoothed mixture of the retained points (the oracle's retrain distribution).
- ``digits-concept``: the class-conditional UNet pretrained with the task's settings on the training split without
  the erased digits.
- ``digits-data``: the base UNet fine-tuned, with the task's settings, on the training set plus the injected copies
  except those of the forgotten images.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable

import torch
from torch import nn

from unlearnbench.cache import cached_torch

logger = logging.getLogger(__name__)

REFERENCES = ("pretrained", "retrained")


def has_retrained(task) -> bool:
    """Whether :func:`retrained_net` can build this task's retrained reference."""
    return task.name in _BUILDERS


def retrained_net(task, device: torch.device | str = "cpu") -> nn.Module:
    """The task's retrained reference network (built and cached on first use), in eval mode on ``device``."""
    if task.name not in _BUILDERS:
        raise ValueError(f"task {task.name} has no retrained reference; tasks with one: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[task.name](task).to(device).eval()


# ------------------------------------------------------------------------------------------------------------------
# mixtures
def _gmm_retrain_exact(task):
    """ExactEps of the task's retrain distribution (see the module docstring)."""
    from unlearnbench.metrics.gmm import ExactEps

    exact = task.exact()
    if task.kind == "concept":
        table = exact.log_table.clone()
        null = table[0].clone()
        null[[k - 1 for k in task.erased]] = -math.inf
        null = null - torch.logsumexp(null, 0)
        table[0] = null
        for k in task.erased:
            table[k] = null
        return ExactEps(exact.mix, table, task.schedule)
    _, keep = task.split()
    sub = exact.mix.subset(keep)
    return ExactEps(sub, sub.log_w[None].clone(), task.schedule)


def _gmm_retrained(task) -> nn.Module:
    from unlearnbench.tasks.gmm import distill

    task.prepare()
    o = task.options
    forget = task.erased if task.kind == "concept" else task.split()[0]
    key = {**task._key(), "retrain_without": list(forget)}

    def build() -> dict:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(o["distill_seed"]))
            net = task._new_net()
        stats = distill(_gmm_retrain_exact(task), net, task.schedule, int(o["distill_steps"]), int(o["distill_batch"]),
                        float(o["distill_lr"]), int(o["distill_seed"]),
                        desc=f"distilling the {task.name} reference retrained without the forget set (once; cached)")
        return {"state_dict": net.state_dict(), "stats": stats}

    obj = cached_torch(task.cache_dir, "gmm-retrained", key, build)
    with torch.random.fork_rng(devices=[]):
        net = task._new_net()
    net.load_state_dict(obj["state_dict"])
    return net


# ------------------------------------------------------------------------------------------------------------------
# digits
def _digits_concept_retrained(task) -> nn.Module:
    from unlearnbench.models import CondUNet, prompt_digit, pretrain_unet

    st = task._base(progress=False)
    cfg = task.cfgs["unet"]
    erased = sorted(prompt_digit(p) for p in task.forget_sets[task.forget_name])
    key = {**cfg, "retrain_without_digits": erased}

    def build() -> dict:
        split = st["split"]
        keep = ~torch.isin(split["y_train"], torch.tensor(erased))
        with torch.random.fork_rng(devices=[]):
            net = pretrain_unet(cfg["train"], split["x_train"][keep], split["y_train"][keep] + 1, cfg["unet"],
                                desc=f"retraining the {task.name} reference without digits {erased} (once; cached)")
        return {"state_dict": net.state_dict(), "train_time_s": net.train_time_s}

    obj = cached_torch(task.cache_dir, "digits-retrained", key, build)
    net = CondUNet(cfg["unet"])
    net.load_state_dict(obj["state_dict"])
    return net.requires_grad_(False)


def _digits_data_retrained(task) -> nn.Module:
    from unlearnbench.models import NULL_PROMPT, CondUNet, pretrain_unet
    from unlearnbench.tasks.digits import INJECT_COPIES

    st = task._base(progress=False)
    names = list(INJECT_COPIES)
    forget = [names.index(n) for n in task.forget_sets[task.forget_name]]
    key = {**task._data_key(), "retrain_without": sorted(task.forget_sets[task.forget_name])}

    def build() -> dict:
        x, tags = task._train_set()
        keep = ~torch.isin(tags, torch.tensor(forget))
        with torch.random.fork_rng(devices=[]):
            net = pretrain_unet(key["finetune"], x[keep], torch.full((int(keep.sum()),), NULL_PROMPT), init=st["unet"],
                                desc=f"retraining the {task.name} reference without the forget images (once; cached)")
        return {"state_dict": net.state_dict(), "train_time_s": net.train_time_s}

    obj = cached_torch(task.cache_dir, "digits-data-retrained", key, build)
    net = CondUNet(task.cfgs["unet"]["unet"])
    net.load_state_dict(obj["state_dict"])
    return net.requires_grad_(False)


_BUILDERS: dict[str, Callable[[Any], nn.Module]] = {
    "gmm-concept": _gmm_retrained, "gmm-data": _gmm_retrained,
    "digits-concept": _digits_concept_retrained, "digits-data": _digits_data_retrained,
}

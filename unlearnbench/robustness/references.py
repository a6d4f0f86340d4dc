"""Retrained references: the network a task would have if its forget set had never been in the training data.

Exact unlearning's gold standard, drawn next to every method by the robustness ladder (:mod:`unlearnbench.robustness`).
Each task that has one builds it in its own file (its :meth:`~unlearnbench.tasks.base.Task.retrained`), by the same
code as its pretrained network, from the same data minus the forget set, and cached the same way
(:func:`unlearnbench.cache.cached_torch`: keyed by its configuration and the source of its builder).
"""
from __future__ import annotations

import torch
from torch import nn

from unlearnbench.tasks.base import has_retrained

REFERENCES = ("pretrained", "retrained")


def retrained_net(task, device: torch.device | str = "cpu") -> nn.Module:
    """The task's retrained reference network (built and cached on first use), in eval mode on ``device``."""
    if not has_retrained(task):
        raise ValueError(f"task {task.name} has no retrained reference (its class does not define retrained())")
    return task.retrained().to(device).eval()


__all__ = ["REFERENCES", "has_retrained", "retrained_net"]

"""Classifier accuracy on generated samples: how often an oracle classifier still sees the prompted class.

On erased prompts it is an unlearning axis (``cls_acc_forget``, lower is better); on kept prompts a retention
axis (``cls_acc_retain``, higher is better). Standard errors are binomial, sqrt(p (1 - p) / n).

Importing this module loads torch only; ``ClassifierAccuracy`` (a torchmetrics Metric) imports torchmetrics on
first use.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from unlearnbench.metrics.base import MetricValue, spec
from unlearnbench.metrics._tm import lazy_classes

spec("cls_acc_forget", "unlearning", False, "classifier",
     "Oracle-classifier accuracy on samples of the erased prompts (fraction still recognised)")
spec("cls_acc_retain", "retention", True, "classifier", "Oracle-classifier accuracy on samples of the kept prompts")

__all__ = ["accuracy", "per_class_accuracy", "ClassifierAccuracy"]


def _default_hib(role: str, higher_is_better: bool | None) -> bool:
    if role not in ("unlearning", "retention", "info"):
        raise ValueError(f"role must be 'unlearning', 'retention' or 'info', got {role!r}")
    return (role != "unlearning") if higher_is_better is None else bool(higher_is_better)


def _predictions(logits: Tensor, labels: Tensor) -> Tensor:
    if labels.ndim != 1:
        raise ValueError(f"labels must be [N], got shape {tuple(labels.shape)}")
    preds = logits.argmax(-1) if logits.ndim == 2 else logits
    if preds.shape != labels.shape:
        raise ValueError(f"logits must be [N, C] (or predictions [N]) with N = {labels.shape[0]}, got "
                         f"{tuple(logits.shape)}")
    return preds


def _binomial(correct: int, n: int, role: str, hib: bool) -> MetricValue:
    if n == 0:
        return MetricValue(float("nan"), None, 0, role, hib)  # type: ignore[arg-type]
    p = correct / n
    return MetricValue(p, math.sqrt(p * (1 - p) / n), n, role, hib)  # type: ignore[arg-type]


def accuracy(logits: Tensor, labels: Tensor, role: str = "unlearning",
             higher_is_better: bool | None = None) -> MetricValue:
    """Top-1 accuracy of ``logits.argmax(-1)`` against ``labels``.

    Args:
        logits: [N, C] scores (or [N] predicted labels).
        labels: [N] target labels (the prompted class of each sample).
        role: ``"unlearning"`` (erased prompts) or ``"retention"`` (kept prompts).
        higher_is_better: defaults to ``role != "unlearning"``.

    Returns:
        MetricValue(p, sqrt(p (1-p) / N), N, role, higher_is_better); value NaN when N = 0.
    """
    hib = _default_hib(role, higher_is_better)
    preds = _predictions(logits, labels)
    return _binomial(int((preds == labels).sum()), int(labels.numel()), role, hib)


def per_class_accuracy(logits: Tensor, labels: Tensor, role: str = "unlearning",
                       higher_is_better: bool | None = None) -> dict[int, MetricValue]:
    """:func:`accuracy` for each label present in ``labels``; ``{label: MetricValue}``."""
    hib = _default_hib(role, higher_is_better)
    preds = _predictions(logits, labels)
    return {int(c): _binomial(int((preds[labels == c] == c).sum()), int((labels == c).sum()), role, hib)
            for c in torch.unique(labels).tolist()}


def _build_classifier_accuracy() -> type:
    from torchmetrics import Metric

    from unlearnbench.metrics._tm import MetricValueCompute

    class ClassifierAccuracy(MetricValueCompute, Metric):
        """Accuracy of a classifier on images: ``update(images, labels)``, ``compute() -> MetricValue``.

        The classifier runs in eval mode without gradients (``classifier(images) -> [B, C]`` logits). States
        ``correct`` and ``total`` are summed across processes.
        """

        __qualname__ = "ClassifierAccuracy"
        is_differentiable = False
        full_state_update = False

        def __init__(self, classifier: nn.Module, role: str = "retention", higher_is_better: bool | None = None,
                     **kwargs: Any):
            super().__init__(**kwargs)
            self.hib = _default_hib(role, higher_is_better)
            self.role = role
            self.classifier = classifier
            self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state("total", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

        def train(self, mode: bool = True) -> ClassifierAccuracy:
            return super().train(False)

        def update(self, images: Tensor, labels: Tensor) -> None:
            was_training = self.classifier.training
            self.classifier.eval()
            try:
                with torch.no_grad():
                    preds = _predictions(self.classifier(images), labels.to(images.device))
            finally:
                self.classifier.train(was_training)
            self.correct += (preds == labels.to(preds.device)).sum().to(self.correct.device)
            self.total += labels.numel()

        def compute(self) -> MetricValue:
            return _binomial(int(self.correct), int(self.total), self.role, self.hib)

    ClassifierAccuracy.__module__ = __name__
    return ClassifierAccuracy


__getattr__ = lazy_classes(globals(), {"ClassifierAccuracy": _build_classifier_accuracy})

"""Metric metadata registry: name -> :class:`MetricSpec` (role, direction, family, one-line description)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from unlearnbench.registry import Registry


@dataclass(frozen=True)
class MetricSpec:
    """What a metric name means. ``family`` is the metrics/ module that computes it."""

    name: str
    role: Literal["unlearning", "retention", "info"]
    higher_is_better: bool
    family: str
    doc: str

    @property
    def __doc__(self) -> str:  # shown by ``unlearnbench ls metrics``
        return self.doc


METRICS: Registry[MetricSpec] = Registry("metric", None, "unlearnbench.metrics")


def spec(name: str, role: str, higher_is_better: bool, family: str, doc: str) -> MetricSpec:
    """Register a metric's metadata (idempotent) and return it."""
    s = MetricSpec(name, role, higher_is_better, family, doc)  # type: ignore[arg-type]
    METRICS.register(name)(s)
    return s

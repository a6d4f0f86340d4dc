"""Metric metadata registry: name -> :class:`MetricSpec` (role, direction, family, one-line description); and
:class:`MetricValue`, one evaluated metric as a record stores it."""
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


# scan_package: a new file in metrics/ that registers its names with spec(...) is found without editing a list
METRICS: Registry[MetricSpec] = Registry("metric", None, "unlearnbench.metrics", scan_package="unlearnbench.metrics")


def spec(name: str, role: str, higher_is_better: bool, family: str, doc: str) -> MetricSpec:
    """Register a metric's metadata (idempotent) and return it."""
    s = MetricSpec(name, role, higher_is_better, family, doc)  # type: ignore[arg-type]
    METRICS.register(name)(s)
    return s


@dataclass(frozen=True)
class MetricValue:
    """One evaluated metric, as stored in the record."""

    value: float
    stderr: float | None = None
    n: int | None = None
    role: Literal["unlearning", "retention", "info"] = "info"
    higher_is_better: bool = False

    def to_dict(self) -> dict:
        return {"value": self.value, "stderr": self.stderr, "n": self.n, "role": self.role,
                "higher_is_better": self.higher_is_better}

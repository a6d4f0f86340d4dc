"""Metric families. Tasks compute metrics with these modules; ``METRICS`` lists every metric name a record can hold,
with its role and direction, so ``unlearnbench ls metrics`` and the leaderboard agree on orientation."""
from unlearnbench.metrics.base import METRICS, MetricSpec

__all__ = ["METRICS", "MetricSpec"]

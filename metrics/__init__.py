"""Metric families. Tasks compute metrics with these modules; ``METRICS`` lists every metric name a record can hold,
with its role and direction, so ``unlearnbench ls metrics`` and the leaderboard agree on orientation."""
from unlearnbench.metrics.base import METRICS, MetricSpec

# each import registers its metric names; these modules import torchmetrics/open_clip/nudenet only on first use
from unlearnbench.metrics import kid_fid  # noqa: E402,F401
from unlearnbench.metrics import classifier  # noqa: E402,F401
from unlearnbench.metrics import memorization  # noqa: E402,F401
from unlearnbench.metrics import clip_score  # noqa: E402,F401
from unlearnbench.metrics import nudity  # noqa: E402,F401
from unlearnbench.metrics import gmm  # noqa: E402,F401

__all__ = ["METRICS", "MetricSpec"]

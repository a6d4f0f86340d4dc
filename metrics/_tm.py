"""Glue for torchmetrics ``Metric`` subclasses whose ``compute()`` returns a :class:`MetricValue`.

torchmetrics post-processes ``compute()`` output with ``apply_to_collection``, which rejects frozen dataclasses;
this mixin passes the value through as a dict and rebuilds the MetricValue after torchmetrics' sync and caching.
No torchmetrics import here: the mixin goes first in the bases, ``class M(MetricValueCompute, Metric)``.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

from unlearnbench.metrics.base import MetricValue


class MetricValueCompute:
    """Mixin: lets ``compute()`` return a MetricValue through torchmetrics' compute wrapper."""

    def _wrap_compute(self, compute: Callable) -> Callable:
        def as_dict(*args: Any, **kwargs: Any) -> Any:
            out = compute(*args, **kwargs)
            return out.to_dict() if isinstance(out, MetricValue) else out

        inner = super()._wrap_compute(as_dict)  # type: ignore[misc]

        @functools.wraps(compute)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            out = inner(*args, **kwargs)
            return MetricValue(**out) if isinstance(out, dict) and set(out) == {
                "value", "stderr", "n", "role", "higher_is_better"} else out

        return wrapped


def lazy_classes(module_globals: dict, builders: dict[str, Callable[[], type]]) -> Callable[[str], Any]:
    """A PEP 562 module ``__getattr__`` that builds torchmetrics-based classes on first use (so importing the module
    stays light) and caches them in the module; pickle resolves the classes through it too."""

    def __getattr__(name: str) -> Any:
        if name in builders:
            cls = builders[name]()
            module_globals[name] = cls
            return cls
        raise AttributeError(f"module {module_globals['__name__']!r} has no attribute {name!r}")

    return __getattr__

"""Progress of long work in the driver (distillation, pretraining, oracle tables, reference models, sample pools):
a tqdm bar on a terminal; elsewhere (a pipe, a log file, CI) a plain log line when the stage starts, at least every
``EVERY_S`` seconds while it runs (a watcher thread writes one even while a single long step, a model load or a
batch of images, is running), and when it ends, with the count, rate and ETA where the total is known. Inside Ray
trials nothing is shown (their progress reaches the driver through Tune's intermediate results)."""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Any, Iterable, Iterator

logger = logging.getLogger(__name__)

EVERY_S = float(os.environ.get("UNLEARNBENCH_PROGRESS_EVERY_S", 30.0))  # longest silence of a line-mode stage


class Progress:
    """``with Progress("distilling", total=6000, unit="step") as p: ... p.update()``, or iterate ``progress(range(n),
    ...)``. ``enabled=False`` shows nothing (workers, tests that ask for quiet)."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", enabled: bool = True,
                 every_s: float | None = None, stream: Any = None):
        self.desc, self.total, self.unit, self.enabled = desc, total, unit, enabled
        self.every_s = EVERY_S if every_s is None else every_s
        self.n, self.postfix = 0, ""
        self.t0 = self.last = time.monotonic()
        stream = stream or sys.stderr
        self.bar = None
        if enabled and getattr(stream, "isatty", lambda: False)():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=stream, leave=False, mininterval=0.5)
        elif enabled:
            logger.info("%s: started%s", desc, f" ({_count(total, unit)})" if total else "")
        self._stop = threading.Event()
        if enabled and self.every_s >= 1:
            threading.Thread(target=self._watch, daemon=True, name=f"progress: {desc}").start()

    def _watch(self) -> None:
        """A line (or a redrawn bar, for its elapsed time) when nothing was shown for ``every_s``."""
        while not self._stop.wait(min(self.every_s, 5.0)):
            if time.monotonic() - self.last < self.every_s:
                continue
            self.last = time.monotonic()
            bar = self.bar
            if bar is not None:
                bar.refresh()
            elif self.enabled:
                logger.info("%s", self.line())

    def update(self, k: int = 1) -> None:
        self.n += k
        if self.bar is not None:
            self.bar.update(k)
            self.last = time.monotonic()
        elif self.enabled and time.monotonic() - self.last >= self.every_s:
            self.last = time.monotonic()
            logger.info("%s", self.line())

    def set_postfix(self, **kw: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kw.items())
        if self.bar is not None:
            self.bar.set_postfix(kw, refresh=False)

    def line(self) -> str:
        """``desc: 40% 2400/6000 step [00:45<01:08, 53.2 step/s]`` (no percentage or ETA without a total)."""
        from tqdm import tqdm

        fmt = ("{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}]"
               if self.total else "{desc}: {n_fmt} {unit} [{elapsed}, {rate_fmt}]")
        text = tqdm.format_meter(self.n, self.total, time.monotonic() - self.t0, prefix=self.desc, unit=self.unit,
                                 bar_format=fmt)
        return f"{text} {self.postfix}" if self.postfix else text

    def close(self) -> None:
        self._stop.set()
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled:
            count = f"{_count(self.n, self.unit)} " if self.n else ""
            logger.info("%s: done, %sin %.1fs", self.desc, count, time.monotonic() - self.t0)
            self.enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _count(n: int, unit: str) -> str:
    """``"6000 steps"``, ``"1 prompt"``, ``"3 batches"``, ``"14 MiB"``."""
    if n == 1 or unit[-1:].isupper():
        return f"{n} {unit}"
    return f"{n} {unit}{'es' if unit.endswith(('ch', 'sh', 's', 'x')) else 's'}"


def progress(iterable: Iterable, desc: str, total: int | None = None, unit: str = "it",
             enabled: bool = True) -> Iterator:
    """Iterate ``iterable`` showing :class:`Progress` (``total`` defaults to ``len(iterable)``)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    with Progress(desc, total, unit, enabled) as p:
        for item in iterable:
            yield item
            p.update()

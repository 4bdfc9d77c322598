"""Counters and histograms in the Prometheus text format, with no dependency.

celery-defer counts a handful of things (triggers fired and failed, blocked
loops, fire lateness, timeouts) and the triggerer serves them over HTTP
(``celery -A proj triggerer --metrics-port N``). A counter is a plain integer
bumped by one thread and read by the HTTP thread: updates stay as cheap as an
attribute increment, which is all the triggerer's hot path may spend.

This module is a leaf: the sweep (which counts timeouts) and the triggerer
both use it without importing each other.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Iterable, Sequence

__all__ = ["TIMED_OUT", "Counter", "Histogram", "counter_text", "gauge_text", "histogram_text"]


class Counter:
    """A monotonically increasing count.

    ``inc()`` from a single thread needs no lock; counters bumped from several
    threads (the sweep, in a threads-pool worker) pass ``shared=True``.
    """

    __slots__ = ("_lock", "value")

    def __init__(self, *, shared: bool = False) -> None:
        self.value = 0
        self._lock = threading.Lock() if shared else None

    def inc(self, amount: int = 1) -> None:
        """Add ``amount`` (>= 0)."""
        if self._lock is None:
            self.value += amount
        else:
            with self._lock:
                self.value += amount


class Histogram:
    """Observations counted into fixed buckets, as Prometheus histograms are."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.count = 0
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose upper bound is >= it."""
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.total += value


#: Deferrals timed out by sweeps run in this process (``celery_defer.sweep``).
TIMED_OUT = Counter(shared=True)


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _head(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


def counter_text(name: str, help_text: str, value: float) -> list[str]:
    """The exposition lines of one counter (``name`` should end in ``_total``)."""
    return [*_head(name, "counter", help_text), f"{name} {_number(value)}"]


def gauge_text(name: str, help_text: str, value: float) -> list[str]:
    """The exposition lines of one gauge."""
    return [*_head(name, "gauge", help_text), f"{name} {_number(value)}"]


def histogram_text(name: str, help_text: str, histogram: Histogram) -> list[str]:
    """The exposition lines of one histogram: cumulative buckets, sum and count."""
    lines = _head(name, "histogram", help_text)
    cumulative = 0
    bounds: Iterable[float] = (*histogram.bounds, math.inf)
    for bound, count in zip(bounds, list(histogram.counts), strict=True):
        cumulative += count
        lines.append(f'{name}_bucket{{le="{_number(bound)}"}} {cumulative}')
    lines.append(f"{name}_sum {_number(histogram.total)}")
    lines.append(f"{name}_count {cumulative}")
    return lines

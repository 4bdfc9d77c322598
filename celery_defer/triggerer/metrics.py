"""What a triggerer counts, and the HTTP endpoint Prometheus scrapes it from.

``celery -A proj triggerer --metrics-port N`` (or ``Triggerer(app,
metrics_port=N)``) serves ``/metrics`` in the Prometheus text format from a
daemon thread with the standard library's ``http.server``:

====================================================  =========  ==========================
name                                                  type       what
====================================================  =========  ==========================
``celery_defer_triggerer_running_triggers``           gauge      triggers running now
``celery_defer_triggerer_capacity``                   gauge      most triggers it runs at once
``celery_defer_triggerer_capacity_left``              gauge      free slots
``celery_defer_triggers_fired_total``                 counter    triggers that fired
``celery_defer_triggers_failed_total``                counter    triggers that failed their tasks
``celery_defer_triggerer_loop_blocked_total``         counter    stalls the watchdog reported
``celery_defer_trigger_fire_lateness_seconds``        histogram  timer triggers: fire - due
====================================================  =========  ==========================

The loop thread only bumps counters; the text is built by the HTTP thread
when scraped. A counter is a plain integer bumped by one thread and read by
the HTTP thread: updates stay as cheap as an attribute increment, which is
all the triggerer's hot path may spend. No dependency: the few primitives
below write the text format themselves.

Only what this process knows is served here. Every triggerer sweeps
(:mod:`celery_defer.triggerer.sweeping`), so
``celery_defer_deferrals_timed_out_total`` counts the deferrals *this*
triggerer timed out (sum it over triggerers); those the beat sweep times out
in a worker are reported by that task (its :class:`~celery_defer.sweep.SweepReport`,
the ``task-succeeded`` result, and a structured log line).
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from celery_defer.exceptions import ConfigurationError
from celery_defer.triggers.base import BaseTrigger, TriggerEvent
from celery_defer.triggers.context import current_clock
from celery_defer.triggers.temporal import DateTimeTrigger

__all__ = [
    "LATENESS_BUCKETS",
    "Counter",
    "Histogram",
    "MetricsServer",
    "TriggererMetrics",
    "counter_text",
    "due_moment",
    "gauge_text",
    "histogram_text",
]

logger = logging.getLogger("celery_defer.triggerer")

#: Upper bounds (seconds) of the fire-lateness histogram's buckets.
LATENESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Counter:
    """A monotonically increasing count.

    ``inc()`` from a single thread needs no lock; a counter bumped from
    another thread than the loop's (the watchdog's) passes ``shared=True``.
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


def due_moment(trigger: BaseTrigger, event: TriggerEvent) -> datetime | None:
    """When a timer trigger was due (its payload is the moment), else None."""
    if isinstance(trigger, DateTimeTrigger) and isinstance(event.payload, datetime):
        return event.payload
    return None


class TriggererMetrics:
    """One triggerer's counters; the gauges are read from its runner when scraped."""

    def __init__(self) -> None:
        self.fired = Counter()
        self.failed = Counter()
        self.timed_out = Counter()
        self.loop_blocked = Counter(shared=True)
        self.lateness = Histogram(LATENESS_BUCKETS)

    def record_fire(self, trigger: BaseTrigger, event: TriggerEvent) -> None:
        """Count a fire; for a timer trigger, how late after its moment it fired."""
        self.fired.inc()
        due = due_moment(trigger, event)
        if due is not None:
            # The triggers' own clock (the runtime's): a test that moved it measures
            # against it too.
            self.lateness.observe(max(0.0, (current_clock().now() - due).total_seconds()))

    def render(self, running: int, capacity: int) -> str:
        """The Prometheus text exposition of every metric."""
        lines = [
            *gauge_text(
                "celery_defer_triggerer_running_triggers",
                "Triggers this triggerer is running now.",
                running,
            ),
            *gauge_text(
                "celery_defer_triggerer_capacity",
                "Most triggers this triggerer runs at once.",
                capacity,
            ),
            *gauge_text(
                "celery_defer_triggerer_capacity_left",
                "Triggers this triggerer could still take.",
                max(0, capacity - running),
            ),
            *counter_text(
                "celery_defer_triggers_fired_total",
                "Triggers that fired (their tasks resume).",
                self.fired.value,
            ),
            *counter_text(
                "celery_defer_triggers_failed_total",
                "Triggers that failed (their tasks fail with TriggerFailed).",
                self.failed.value,
            ),
            *counter_text(
                "celery_defer_deferrals_timed_out_total",
                "Deferrals this triggerer's sweep failed with TriggerTimeout.",
                self.timed_out.value,
            ),
            *counter_text(
                "celery_defer_triggerer_loop_blocked_total",
                "Times the event loop was blocked longer than defer_triggerer_block_warning.",
                self.loop_blocked.value,
            ),
            *histogram_text(
                "celery_defer_trigger_fire_lateness_seconds",
                "Timer triggers: seconds between the due moment and the fire.",
                self.lateness,
            ),
        ]
        return "\n".join(lines) + "\n"


class MetricsServer:
    """Serves ``render()`` at ``/metrics`` from a daemon thread."""

    def __init__(self, port: int, render: Callable[[], str], host: str = "0.0.0.0") -> None:
        handler = _handler(render)
        try:
            self._server = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise ConfigurationError(f"cannot serve metrics on port {port}: {exc}") from exc
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.5},
            name="celery-defer-metrics",
            daemon=True,
        )

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) it listens on; the port is real even when 0 was asked for."""
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Start serving in the background."""
        self._thread.start()
        logger.info("serving metrics on http://%s:%d/metrics", *self.address)

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()


def _handler(render: Callable[[], str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.send_error(404, "metrics are at /metrics")
                return
            try:
                body = render().encode()
            except Exception:
                logger.exception("rendering metrics failed")
                self.send_error(500)
                return
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Scrapes are not worth a log line each."""

    return Handler

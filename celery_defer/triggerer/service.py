"""The embeddable :class:`Triggerer`: a uvloop event loop running triggers.

``run()`` blocks (the CLI uses it, with SIGTERM/SIGINT handled as a clean
stop); ``start()`` runs the same loop in a background thread for embedding
and tests; ``stop()`` cancels every trigger (each one's ``cleanup()`` runs),
stores the events that already arrived and hands the remaining triggers back
so another triggerer can take them at once.

While it runs, a watchdog thread reports a blocked event loop
(:mod:`celery_defer.triggerer.watchdog`), and with ``metrics_port`` its
counters are served to Prometheus (:mod:`celery_defer.triggerer.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from celery_defer.broker.event_hints import event_hint_listener
from celery_defer.broker.notices import notice_listener
from celery_defer.broker.revocations import revoke_listener
from celery_defer.exceptions import CeleryDeferError, ConfigurationError
from celery_defer.settings import Settings
from celery_defer.store import store_for
from celery_defer.store.base import Listener
from celery_defer.triggerer.metrics import MetricsServer
from celery_defer.triggerer.runner import TriggerRunner
from celery_defer.triggerer.watchdog import LoopWatchdog
from celery_defer.triggerer.watchers import Watchers
from celery_defer.triggers.clock import DEFAULT_CLOCK, TriggerClock
from celery_defer.triggers.context import use_runtime

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger("celery_defer.triggerer")


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A uvloop loop where uvloop is installed (not on Windows), else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - Windows
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class Triggerer:
    """Runs triggers for ``app`` until stopped; see the module docstring.

    ``metrics_port``: serve Prometheus metrics at ``http://0.0.0.0:PORT/metrics``
    while running (0 picks a free port; see :attr:`metrics_address`).

    ``clock``: what its timer triggers read the time from and sleep on (a
    :class:`~celery_defer.triggers.clock.TriggerClock`). By default the
    process's :data:`~celery_defer.triggers.clock.DEFAULT_CLOCK`, the wall
    clock that :func:`celery_defer.testing.skip_time` and ``fast_forward``
    move, so a triggerer embedded in a test follows them; the ``celery
    triggerer`` command passes a
    :class:`~celery_defer.triggers.clock.SystemClock`. A test that wants its
    own time passes its own
    :class:`~celery_defer.triggers.clock.ShiftableClock`: moving it moves this
    triggerer's timers and no others.
    """

    def __init__(
        self,
        app: Celery,
        capacity: int | None = None,
        metrics_port: int | None = None,
        *,
        clock: TriggerClock | None = None,
    ) -> None:
        settings = Settings.from_app(app)
        if capacity is None:
            capacity = settings.triggerer_capacity
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity <= 0:
            raise ConfigurationError(f"capacity must be a positive integer, got {capacity!r}")
        if metrics_port is not None and (
            isinstance(metrics_port, bool)
            or not isinstance(metrics_port, int)
            or not 0 <= metrics_port <= 65535
        ):
            raise ConfigurationError(f"metrics_port must be a port number, got {metrics_port!r}")
        self.metrics_port = metrics_port
        #: (host, port) the metrics are served on while running, else None.
        self.metrics_address: tuple[str, int] | None = None
        self.block_warning = settings.triggerer_block_warning
        self.app = app
        self.capacity = capacity
        #: The clock its timer triggers go by.
        self.clock: TriggerClock = DEFAULT_CLOCK if clock is None else clock
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: TriggerRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._listeners: list[Listener] = []

    @property
    def running_triggers(self) -> int:
        """How many triggers this triggerer is running now."""
        return len(self._runner.running) if self._runner else 0

    def run(self) -> None:
        """Run until stopped (``stop()``, SIGTERM or SIGINT); blocks."""
        loop = new_event_loop()
        runner = TriggerRunner(
            self.app, store_for(self.app), self.id, self.capacity, socket.gethostname(), os.getpid()
        )
        runner.registered = self._ready.set
        runner.clock = self.clock

        def to_loop(callback: Callable[..., None], *args: Any) -> None:
            """Hand a listener's message to the loop; one arriving after the stop is dropped."""
            with contextlib.suppress(RuntimeError):  # the loop closed: nothing left to wake
                loop.call_soon_threadsafe(callback, *args)

        def on_notice() -> None:
            to_loop(runner.wake)

        def on_revoke(task_ids: list[str]) -> None:
            to_loop(runner.revoke, task_ids)

        # What TaskResultTrigger and ExternalEventTrigger wait through.
        runtime = Watchers(self.app, runner.store, self.clock)

        def on_event_hint(key: str) -> None:
            to_loop(runtime.hint, key)

        listeners: list[Listener] = [
            notice_listener(self.app, on_notice),
            revoke_listener(self.app, self.id, on_revoke),
            event_hint_listener(self.app, self.id, on_event_hint),
        ]
        woken_by_store = runner.store.new_trigger_listener(on_notice)
        if woken_by_store is not None:
            listeners.append(woken_by_store)
        self._listeners = listeners
        self._loop, self._runner = loop, runner
        in_main_thread = threading.current_thread() is threading.main_thread()
        watchdog = LoopWatchdog(loop, self.block_warning, on_stall=runner.metrics.loop_blocked.inc)
        metrics_server: MetricsServer | None = None
        try:
            asyncio.set_event_loop(loop)
            if in_main_thread:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.add_signal_handler(signum, runner.request_stop)
            for listener in listeners:
                listener.start()
            if self.metrics_port is not None:
                metrics_server = MetricsServer(
                    self.metrics_port,
                    lambda: runner.metrics.render(len(runner.running), runner.capacity),
                )
                metrics_server.start()
                self.metrics_address = metrics_server.address
            # Started by the loop itself, so the watchdog's first heartbeat
            # does not count the time before the loop runs.
            loop.call_soon(watchdog.start, threading.get_ident())
            # Every task of the loop copies this context: triggers find the runtime.
            with use_runtime(runtime):
                loop.run_until_complete(runner.main())
            if runner.failure is not None:
                raise CeleryDeferError(
                    f"triggerer {self.id} stopped: {runner.failure!r} (see the log above)"
                ) from runner.failure
        except BaseException as exc:
            self._error = exc
            raise
        finally:
            watchdog.stop()
            if metrics_server is not None:
                metrics_server.stop()
            for listener in listeners:
                listener.stop()
            if in_main_thread:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(signum)
            loop.run_until_complete(runtime.aclose())
            loop.run_until_complete(loop.shutdown_asyncgens())
            asyncio.set_event_loop(None)
            loop.close()
            self._loop = None
            self._done.set()
            self._ready.set()
            for listener in listeners:
                listener.join(timeout=5)

    def start(self, timeout: float = 30.0) -> Triggerer:
        """Run in a background thread; returns once registered with the store."""
        if self._thread is not None:
            raise CeleryDeferError("this Triggerer was already started")
        self._thread = threading.Thread(
            target=self._run_quietly, name="celery-defer-triggerer", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise CeleryDeferError(f"the triggerer did not start within {timeout}s")
        if self._error is not None:
            raise CeleryDeferError(f"the triggerer failed to start: {self._error}")
        # Give the broker listeners a moment to subscribe, so that a revoke or a
        # notice sent right after start() is heard; without a broker, carry on.
        for listener in self._listeners:
            listener.ready.wait(min(timeout, 5.0))
        return self

    def _run_quietly(self) -> None:
        try:
            self.run()
        except BaseException:
            logger.exception("triggerer %s crashed", self.id)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop cleanly: cleanup() every trigger, hand the rest back; thread-safe."""
        loop, runner = self._loop, self._runner
        if loop is not None and runner is not None and not self._done.is_set():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(runner.request_stop)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Triggerer:
        """Start the triggerer for the ``with`` block."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the triggerer, handing its triggers back."""
        self.stop()

    def __repr__(self) -> str:
        """Its id and capacity."""
        return f"<Triggerer {self.id} capacity={self.capacity}>"

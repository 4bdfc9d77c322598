"""A thread that notices, while it happens, that the triggerer's event loop is blocked.

One loop runs every trigger, so a trigger that blocks it (``time.sleep``, a
synchronous HTTP call, heavy CPU work) stalls every other trigger. Airflow's
triggerer measures the stall from inside the loop, so it can only say so after
the stall ended, and cannot say who caused it. Here a separate thread asks the
loop for a heartbeat, a no-op callback queued with ``call_soon_threadsafe``
every few hundredths of a second (one wake-up of the loop, no per-trigger
work). When the answer is late by more than ``defer_triggerer_block_warning``
seconds, the watchdog logs a WARNING naming the trigger, its id and where it
is stuck, once per stall; when the loop answers again it logs the stall's
total duration.

Which trigger: the runner sets :data:`RUNNING_TRIGGER`, a context variable,
inside each trigger's task (:func:`running_trigger`); whatever that trigger
runs (a helper however deep, a task it created) sees it, since asyncio tasks
copy the context they are created in. From its own thread the watchdog asks
the loop for its current task (``asyncio.current_task(loop)``) and reads the
variable in that task's context. Where: the innermost Python frame of the
loop thread (``sys._current_frames()``).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType

from celery_defer.triggers.base import BaseTrigger
from celery_defer.triggers.execution import describe

__all__ = [
    "RUNNING_TRIGGER",
    "Culprit",
    "LoopWatchdog",
    "RunningTrigger",
    "find_culprit",
    "running_in",
    "running_trigger",
]

logger = logging.getLogger("celery_defer.triggerer.watchdog")


@dataclass(frozen=True)
class RunningTrigger:
    """The trigger a task runs for: its stored id and class path."""

    trigger_id: int
    trigger: str


#: The trigger the current asyncio task runs for (None outside a trigger's task).
RUNNING_TRIGGER: contextvars.ContextVar[RunningTrigger | None] = contextvars.ContextVar(
    "celery_defer_running_trigger", default=None
)

# Before Python 3.12 a task does not hand out its context (Task.get_context);
# running_trigger() keeps a snapshot of it per task instead.
_snapshots: weakref.WeakKeyDictionary[asyncio.Task[object], contextvars.Context] = (
    weakref.WeakKeyDictionary()
)


@contextmanager
def running_trigger(trigger_id: int, trigger: BaseTrigger) -> Iterator[RunningTrigger]:
    """Mark the current asyncio task (and the tasks it creates) as running ``trigger``.

    Enter it inside the trigger's own task: a context variable set there is
    the task's alone.
    """
    running = RunningTrigger(trigger_id, describe(trigger))
    token = RUNNING_TRIGGER.set(running)
    task = asyncio.current_task()
    if sys.version_info < (3, 12) and task is not None:
        _snapshots[task] = contextvars.copy_context()
    try:
        yield running
    finally:
        RUNNING_TRIGGER.reset(token)
        if task is not None:
            _snapshots.pop(task, None)


def running_in(loop: asyncio.AbstractEventLoop) -> RunningTrigger | None:
    """The trigger whose task ``loop`` is running now; callable from any thread.

    None when the loop runs no task, or a task that runs no trigger. Reading
    another thread's current task is a dictionary lookup in asyncio, and a
    task's context is read-only here.
    """
    task = asyncio.current_task(loop)
    if task is None:
        return None
    if sys.version_info >= (3, 12):
        context: contextvars.Context | None = task.get_context()
    else:
        context = _snapshots.get(task)
    return None if context is None else context.get(RUNNING_TRIGGER)


@dataclass(frozen=True)
class Culprit:
    """What the loop thread was running when it was found blocked."""

    trigger: str | None  # class path of the trigger, when the loop runs a trigger's task
    trigger_id: int | None  # the stored trigger's id, likewise
    where: str  # the innermost Python frame: "file:line in function"

    def name(self) -> str:
        """Which trigger it was, or that it was not one."""
        if self.trigger is None:
            return "code that is not a trigger"
        if self.trigger_id is None:
            return f"trigger {self.trigger}"
        return f"trigger {self.trigger} (id {self.trigger_id})"

    def describe(self) -> str:
        """The name and where it is stuck, for the log line."""
        return f"{self.name()}, at {self.where}"


def find_culprit(frame: FrameType | None, running: RunningTrigger | None = None) -> Culprit:
    """The culprit: the trigger ``running`` (see :func:`running_in`) stuck at ``frame``.

    ``frame`` is the loop thread's innermost frame; nothing is read from its
    variables, so no name in the runner or the trigger matters.
    """
    if frame is None:
        where = "an unknown place (the loop thread has no Python frame)"
    else:
        code = frame.f_code
        where = f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"
    if running is None:
        return Culprit(None, None, where)
    return Culprit(running.trigger, running.trigger_id, where)


class LoopWatchdog:
    """Watches one event loop from a thread of its own; see the module docstring.

    ``on_stall`` is called once per reported stall (the triggerer counts them).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        threshold: float,
        on_stall: Callable[[], None] = lambda: None,
    ) -> None:
        self.loop = loop
        self.threshold = threshold
        self.on_stall = on_stall
        # Often enough that a stall is seen soon after the threshold, rarely
        # enough to cost nothing (10 heartbeats a second at the default 0.5s).
        self.check_every = min(max(threshold / 5, 0.005), 0.25)
        self._loop_thread_id: int | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._answered_at: float | None = None

    def start(self, loop_thread_id: int | None = None) -> None:
        """Start watching; call it from the loop thread (or pass that thread's id)."""
        self._loop_thread_id = loop_thread_id or threading.get_ident()
        self._thread = threading.Thread(
            target=self._watch, name="celery-defer-watchdog", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (idempotent)."""
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)

    def _answer(self) -> None:
        # Runs on the loop: the loop is free again.
        self._answered_at = time.monotonic()

    def _watch(self) -> None:
        sent_at: float | None = None
        culprit: Culprit | None = None  # set while a reported stall lasts
        while not self._stopped.wait(self.check_every):
            if sent_at is not None:
                answered_at = self._answered_at
                if answered_at is None:
                    lag = time.monotonic() - sent_at
                    if culprit is None and lag >= self.threshold:
                        culprit = self._report(lag)
                    continue
                if culprit is not None:
                    self._report_end(answered_at - sent_at, culprit)
                    culprit = None
            self._answered_at = None
            sent_at = time.monotonic()
            try:
                self.loop.call_soon_threadsafe(self._answer)
            except RuntimeError:
                return  # the loop is closed: nothing left to watch
        # Stopped within a check of a stall's end (a triggerer stopping right
        # after it): still say how long it lasted.
        answered_at = self._answered_at
        if culprit is not None and sent_at is not None and answered_at is not None:
            self._report_end(answered_at - sent_at, culprit)

    def _report(self, lag: float) -> Culprit:
        assert self._loop_thread_id is not None
        culprit = find_culprit(
            sys._current_frames().get(self._loop_thread_id), running_in(self.loop)
        )
        logger.warning(
            "the triggerer's event loop has been blocked for %.1fs so far by %s: triggers must "
            "not block (await, or use asyncio.to_thread for blocking calls); every other "
            "trigger waits meanwhile",
            lag,
            culprit.describe(),
            extra={
                "trigger": culprit.trigger,
                "trigger_id": culprit.trigger_id,
                "blocked_seconds": round(lag, 3),
                "blocked_at": culprit.where,
            },
        )
        try:
            self.on_stall()
        except Exception:
            logger.exception("counting a blocked loop failed")
        return culprit

    def _report_end(self, total: float, culprit: Culprit) -> None:
        logger.warning(
            "the triggerer's event loop was blocked for %.1fs in total by %s",
            total,
            culprit.name(),
            extra={
                "trigger": culprit.trigger,
                "trigger_id": culprit.trigger_id,
                "blocked_seconds": round(total, 3),
                "blocked_at": culprit.where,
            },
        )

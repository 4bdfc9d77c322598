"""A thread that notices, while it happens, that the triggerer's event loop is blocked.

One loop runs every trigger, so a trigger that blocks it (``time.sleep``, a
synchronous HTTP call, heavy CPU work) stalls every other trigger. Airflow's
triggerer measures the stall from inside the loop, so it can only say so after
the stall ended, and cannot say who caused it. Here a separate thread asks the
loop for a heartbeat, a no-op callback queued with ``call_soon_threadsafe``
every few hundredths of a second (one wake-up of the loop, no per-trigger
work). When the answer is late by more than ``defer_triggerer_block_warning``
seconds, the watchdog looks at the loop thread's current Python stack
(``sys._current_frames()``), finds the trigger running there, and logs a
WARNING naming it, its id and where it is stuck, once per stall. When the loop
answers again it logs the stall's total duration.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from celery_defer.triggers.base import BaseTrigger
from celery_defer.triggers.execution import describe

if TYPE_CHECKING:
    import asyncio

__all__ = ["Culprit", "LoopWatchdog", "find_culprit"]

logger = logging.getLogger("celery_defer.triggerer.watchdog")


@dataclass(frozen=True)
class Culprit:
    """What the loop thread was running when it was found blocked."""

    trigger: str | None  # class path of the trigger, when a trigger is on the stack
    trigger_id: int | None  # the stored trigger's id, when the runner's frame is found
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


def find_culprit(frame: FrameType | None) -> Culprit:
    """Walk outward from ``frame`` to the trigger whose code is running, and its id.

    The trigger is the innermost frame whose ``self`` is a :class:`BaseTrigger`
    (its ``run()`` or a method it called); the id is the ``trigger_id`` local
    of the runner frame that awaits it (``TriggerRunner._run``).
    """
    if frame is None:
        return Culprit(None, None, "an unknown place (the loop thread has no Python frame)")
    code = frame.f_code
    where = f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"
    trigger: str | None = None
    trigger_id: int | None = None
    current: FrameType | None = frame
    while current is not None:
        names = current.f_code.co_varnames
        if trigger is None and names[:1] == ("self",):
            owner = current.f_locals.get("self")
            if isinstance(owner, BaseTrigger):
                trigger = describe(owner)
        if trigger is not None and "trigger_id" in names:
            found = current.f_locals.get("trigger_id")
            if isinstance(found, int) and not isinstance(found, bool):
                trigger_id = found
                break
        current = current.f_back
    return Culprit(trigger, trigger_id, where)


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
        culprit = find_culprit(sys._current_frames().get(self._loop_thread_id))
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

"""Helpers for users' tests of deferrable tasks.

* :class:`SuccessTrigger` and :class:`FailureTrigger` fire, or fail, at once:
  they exercise a task's resume path and failure path without waiting on a
  clock or an external system, eagerly or through a real worker and triggerer.
* Time skipping: :func:`skip_time` and :func:`fast_forward` move the clock
  that ``DateTimeTrigger`` and ``TimeDeltaTrigger`` go by, and wake the timers
  sleeping on it, so a test of a task that waits a day runs in milliseconds.
  They move the process's default clock
  (:data:`~celery_defer.triggers.clock.DEFAULT_CLOCK`), the one every timer
  trigger in *this process* goes by unless given another: an eager task, a
  worker and a ``Triggerer(app)`` started in the test (see
  :mod:`celery_defer.contrib.pytest`), a trigger run by hand; not a triggerer
  in another process, nor one given its own ``clock=``.
* :class:`ShiftableClock` is such a clock of your own: ``Triggerer(app,
  clock=ShiftableClock())`` goes by it alone, and its ``shift()`` and
  ``skipping()`` move that triggerer's timers and no others.
* :func:`wait_until_deferred` waits for a task to reach ``DEFERRED``.
* :class:`InMemoryStore` is the deferral store with no database: the whole
  store contract (the same contract tests run on it as on SQLite and
  PostgreSQL) in this process's memory. Set ``defer_database_url =
  "memory://"`` and a worker and an embedded triggerer (or eager tasks) in the
  test's process share one per app; ``store_for(app)`` returns it, to inspect
  deferrals or to :meth:`~InMemoryStore.reset` it between tests. Its ``clock``
  argument lets a test built on the store alone move time without sleeping.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from celery_defer.store.memory import InMemoryStore
from celery_defer.sweep import time_out_due
from celery_defer.triggers.base import BaseTrigger, TriggerEvent
from celery_defer.triggers.clock import DEFAULT_CLOCK, ShiftableClock

if TYPE_CHECKING:
    from celery import Celery
    from celery.result import AsyncResult

__all__ = [
    "FailureTrigger",
    "InMemoryStore",
    "ShiftableClock",
    "SuccessTrigger",
    "fast_forward",
    "reset_clock",
    "skip_time",
    "wait_until_deferred",
]


class SuccessTrigger(BaseTrigger):
    """Fire at once with payload ``True``."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return this class's path and no kwargs."""
        return ("celery_defer.testing.SuccessTrigger", {})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Yield ``TriggerEvent(True)`` without waiting."""
        yield TriggerEvent(True)


class FailureTrigger(BaseTrigger):
    """Raise at once, without yielding: the waiting task fails with ``TriggerFailed``."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return this class's path and no kwargs."""
        return ("celery_defer.testing.FailureTrigger", {})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Raise ``RuntimeError`` before yielding anything."""
        _fail_on_purpose()
        # Never reached; the yield is what makes run() an async generator.
        yield TriggerEvent(False)


def _fail_on_purpose() -> None:
    # Typed "-> None", not NoReturn, so that mypy does not flag the yield above as unreachable.
    raise RuntimeError("FailureTrigger failed on purpose")


# -- time skipping -------------------------------------------------------------


@contextmanager
def skip_time() -> Iterator[None]:
    """Inside the block, timer triggers fire as soon as they start waiting.

    Every sleep of a ``DateTimeTrigger``/``TimeDeltaTrigger`` on the process's
    default clock (every timer of this process not given its own clock) ends
    at once and the clock jumps to its end; timers already asleep are woken,
    on whatever thread or loop they sleep. Their payload is still their
    moment, so the resumed task sees exactly what it would have seen a day
    later. On exit the clock returns to where it was. Works as a decorator too::

        with skip_time():
            assert wait_a_day.delay(2).get(timeout=10) == 4
    """
    with DEFAULT_CLOCK.skipping():
        yield


def fast_forward(app: Celery | None, delta: timedelta | float) -> None:
    """Move the timer clock ``delta`` (a timedelta or seconds) ahead, now.

    The clock moved is the process's default clock: timer triggers of this
    process (those not given their own clock) that are due after the move
    fire at once (sleeping ones are woken, on any thread or loop); the others
    keep waiting for the rest. With an ``app``, deferral timeouts follow the
    moved clock too: those of the app's deferrals that are now past their
    ``timeout`` fail with ``TriggerTimeout``, as the next sweep would make
    them. The move lasts until
    :func:`reset_clock` (the ``celery_defer_triggerer`` fixture resets it).
    """
    if isinstance(delta, bool) or not isinstance(delta, (timedelta, int, float)):
        raise TypeError(f"fast_forward needs a timedelta or seconds, got {delta!r}")
    if not isinstance(delta, timedelta):
        delta = timedelta(seconds=delta)
    if delta < timedelta(0):
        raise ValueError(f"fast_forward cannot go back in time: {delta!r}")
    DEFAULT_CLOCK.shift(delta)
    if app is not None:
        time_out_due(app, DEFAULT_CLOCK.now())


def reset_clock() -> None:
    """Put the process's default clock back on the wall clock (undo every :func:`fast_forward`)."""
    DEFAULT_CLOCK.reset()


def wait_until_deferred(result: AsyncResult, timeout: float = 10.0) -> None:
    """Wait until the task of ``result`` is ``DEFERRED`` (e.g. before a fast_forward).

    Raises ``AssertionError`` naming the state it saw if the task ends first or
    ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    while True:
        state = result.state
        if state == "DEFERRED":
            return
        if result.ready():
            raise AssertionError(f"task {result.id} ended {state} without deferring")
        if time.monotonic() > deadline:
            raise AssertionError(
                f"task {result.id} is still {state} after {timeout}s, "
                "not DEFERRED: is a worker running?"
            )
        time.sleep(0.01)

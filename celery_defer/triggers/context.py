"""What a running trigger may ask of the process it runs in: the trigger runtime.

Some triggers wait on things only the hosting process can reach cheaply: the
Celery app's result backend (:class:`~celery_defer.triggers.TaskResultTrigger`)
or the store's external events
(:class:`~celery_defer.triggers.ExternalEventTrigger`). Triggers must not import
the store or the triggerer (a trigger knows nothing of where it runs), so the
host hands them a :class:`TriggerRuntime` through a context variable instead:
the triggerer sets it before it starts trigger tasks (asyncio tasks copy the
context they are created in), and eager mode sets one for the task's app.

The runtime is also where the batching lives: a thousand triggers waiting on
a thousand task ids cost one backend lookup per interval, not a thousand.

And it is where time comes from: timer triggers read the time and sleep through
:func:`current_clock`, the runtime's :attr:`~TriggerRuntime.clock` (chosen by
whoever owns the host: ``Triggerer(app, clock=...)``), or
:data:`~celery_defer.triggers.clock.DEFAULT_CLOCK` where no runtime is set
(a trigger run by hand, a trigger made in a worker's task body).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from celery_defer.exceptions import TriggerFailed
from celery_defer.triggers.clock import DEFAULT_CLOCK, TriggerClock

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["TriggerRuntime", "current_clock", "current_runtime", "use_runtime"]


class TriggerRuntime(Protocol):
    """The services a host offers to the triggers it runs."""

    @property
    def app(self) -> Celery:
        """The Celery app whose deferrals the host runs (its result backend, its conf)."""

    @property
    def clock(self) -> TriggerClock:
        """The clock the host's timer triggers read the time from and sleep on."""

    async def external_event(self, key: str, since: datetime | None) -> Any:
        """Wait for an external event for ``key``; return its payload.

        The newest event stored for ``key`` within ``defer_event_retention``
        and at or after ``since`` (aware UTC; None: any) counts, so an event
        sent before the wait began is not lost.
        """

    async def task_result(self, task_id: str, poll_interval: float) -> dict[str, Any]:
        """Wait until task ``task_id`` is ready; return its state and result (or error).

        ``poll_interval`` is the most this waiter lets pass between two looks
        at the result backend (lookups for all waiters are batched).
        """


_runtime: ContextVar[TriggerRuntime | None] = ContextVar(
    "celery_defer_trigger_runtime", default=None
)


def current_runtime(needed_by: str) -> TriggerRuntime:
    """The runtime of the host running this trigger.

    Raises :class:`~celery_defer.exceptions.TriggerFailed` naming
    ``needed_by`` when there is none: the trigger was run on an event loop of
    its own rather than by a triggerer or an eager task.
    """
    runtime = _runtime.get()
    if runtime is None:
        raise TriggerFailed(
            f"{needed_by} needs a trigger runtime (the Celery app and the event store): it "
            "runs in a triggerer (celery -A proj triggerer, celery_defer.Triggerer) or in an "
            "eager DeferrableTask, not on an event loop of its own"
        )
    return runtime


def current_clock() -> TriggerClock:
    """The clock of the host running this code, or the process's default clock.

    Never raises: a timer trigger works on an event loop of its own too,
    where it goes by :data:`~celery_defer.triggers.clock.DEFAULT_CLOCK` (the
    wall clock, unless :mod:`celery_defer.testing` moved it).
    """
    runtime = _runtime.get()
    return DEFAULT_CLOCK if runtime is None else runtime.clock


@contextmanager
def use_runtime(runtime: TriggerRuntime) -> Iterator[TriggerRuntime]:
    """Make ``runtime`` current for the code (and the tasks it creates) inside the block."""
    token = _runtime.set(runtime)
    try:
        yield runtime
    finally:
        _runtime.reset(token)

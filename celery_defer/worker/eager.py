"""Eager mode: a deferring task runs its trigger inline and resumes at once.

With ``task_always_eager``, ``.apply()`` or a direct call there is no worker
to come back to (Celery would turn ``Ignore`` into an IGNORED result), so
:func:`call_inline` runs the trigger right here, on an event loop of its own,
and calls the method with its event: users' unit tests need no triggerer.

The runtime of those triggers waits for one trigger only. So this runtime needs no batching: it
simply polls the store for the event, or the result backend for the task.
(For a child run eagerly too, set ``task_store_eager_result = True`` so its
result reaches the backend.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from celery_defer import serialization
from celery_defer.exceptions import TaskDeferred, TriggerTimeout
from celery_defer.external_events import matches, payload_of
from celery_defer.settings import Settings
from celery_defer.store import store_for
from celery_defer.triggers.base import BaseTrigger, TriggerEvent
from celery_defer.triggers.clock import DEFAULT_CLOCK, TriggerClock
from celery_defer.triggers.context import use_runtime
from celery_defer.triggers.execution import first_event
from celery_defer.triggers.result_backend import fetch_ready
from celery_defer.validation import EVENT_KWARG, check_deferral

if TYPE_CHECKING:
    from celery import Celery, Task

__all__ = ["InlineRuntime", "call_inline"]

#: The longest pause between two looks at the store for an event.
MAX_EVENT_POLL = 1.0


class InlineRuntime:
    """A :class:`~celery_defer.triggers.context.TriggerRuntime` for one eager task.

    Its timer triggers go by the process's default clock, the one
    :func:`celery_defer.testing.skip_time` and ``fast_forward`` move: an
    eager task has no owner that could have chosen another.
    """

    def __init__(self, app: Celery, clock: TriggerClock = DEFAULT_CLOCK) -> None:
        self._app = app
        self._clock = clock

    @property
    def app(self) -> Celery:
        """The eager task's app."""
        return self._app

    @property
    def clock(self) -> TriggerClock:
        """The clock the eager task's timer trigger goes by."""
        return self._clock

    async def external_event(self, key: str, since: datetime | None) -> Any:
        """Poll the store (every 50 ms, slowing to every second) for a matching event."""
        store = store_for(self._app)
        retention = timedelta(seconds=Settings.from_app(self._app).event_retention)
        pause = 0.05
        while True:
            cutoff = datetime.now(timezone.utc) - retention
            found = await asyncio.to_thread(store.latest_events, [key], cutoff)
            event = found.get(key)
            if event is not None and matches(event, since):
                return payload_of(event)
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_EVENT_POLL)

    async def task_result(self, task_id: str, poll_interval: float) -> dict[str, Any]:
        """Poll the result backend every ``poll_interval`` seconds until the task is ready."""
        while True:
            found = await asyncio.to_thread(fetch_ready, self._app, [task_id])
            if task_id in found:
                return found[task_id]
            await asyncio.sleep(poll_interval)


def call_inline(
    task: Task, body: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """Run ``body(*args, **kwargs)``; each deferral runs its trigger here and resumes at once."""
    settings = Settings.from_app(task.app)
    try:
        return body(*args, **kwargs)
    except TaskDeferred as first:
        deferred = first
    while True:
        checked = check_deferral(task, deferred, settings.max_kwargs_bytes)
        timeout = None
        if checked.timeout_at is not None:
            timeout = (checked.timeout_at - datetime.now(timezone.utc)).total_seconds()
        event = _run_trigger_inline(task.app, deferred.trigger, timeout)
        method_kwargs = serialization.loads(checked.kwargs, where="kwargs")
        try:
            return getattr(task, checked.method)(**method_kwargs, **{EVENT_KWARG: event})
        except TaskDeferred as again:
            deferred = again


def _run_trigger_inline(app: Celery, trigger: BaseTrigger, timeout: float | None) -> TriggerEvent:
    try:
        # asyncio.run's task copies this context: the trigger finds the runtime.
        with use_runtime(InlineRuntime(app)):
            return asyncio.run(asyncio.wait_for(first_event(trigger), timeout))
    except asyncio.TimeoutError:
        raise TriggerTimeout(
            f"trigger {type(trigger).__name__} did not fire within the timeout"
        ) from None

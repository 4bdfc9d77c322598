"""The trigger runtime of eager mode: triggers that need the app work in unit tests too.

With ``task_always_eager``, ``.apply()`` or a direct call, a deferring task
runs its trigger inline (see :mod:`celery_defer.task`), on an event loop of
its own, waiting for one trigger only. So this runtime needs no batching: it
simply polls the store for the event, or the result backend for the task.
(For a child run eagerly too, set ``task_store_eager_result = True`` so its
result reaches the backend.)
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from celery_defer.external_events import matches, payload_of
from celery_defer.settings import Settings
from celery_defer.store import store_for
from celery_defer.triggers.result_backend import fetch_ready

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["InlineRuntime"]

#: The longest pause between two looks at the store for an event.
MAX_EVENT_POLL = 1.0


class InlineRuntime:
    """A :class:`~celery_defer.triggers.context.TriggerRuntime` for one eager task."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    @property
    def app(self) -> Celery:
        """The eager task's app."""
        return self._app

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

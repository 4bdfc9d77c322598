"""Celery monitoring events for deferrals: ``task-deferred`` and ``task-resumed``.

Sent by the worker, like Celery's own ``task-*`` events, and only when the
worker sends task events (``-E`` / ``worker_send_task_events``): a task cannot
see that switch, so the worker's ``worker_init`` signal records it per app.
Monitors such as Flower and ``celery events`` show ``DEFERRED`` and
``RESUMED`` states from them; ``task-succeeded``/``task-failed`` come only at
the real end, because a deferral raises ``Ignore``.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery, Task

logger = logging.getLogger(__name__)

_sends_task_events: weakref.WeakKeyDictionary[Celery, bool] = weakref.WeakKeyDictionary()


def remember_task_events(sender: Any = None, **_: Any) -> None:
    """``worker_init`` handler: record whether this worker sends task events.

    Connected by :mod:`celery_defer.wiring`.
    """
    app = getattr(sender, "app", None)
    if app is not None:
        _sends_task_events[app] = bool(getattr(sender, "task_events", False))


def send(task: Task, event_type: str, **fields: Any) -> None:
    """Send ``event_type`` for the running task, if its worker sends task events."""
    if not _sends_task_events.get(task.app, False) or not task.send_events:
        return
    try:
        task.send_event(event_type, retry=False, **fields)
    except Exception as exc:  # monitoring must never fail a task
        logger.warning("could not send %s for task %s: %s", event_type, task.request.id, exc)

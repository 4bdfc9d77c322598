""":class:`TaskResultTrigger`: wait for another Celery task to finish, off the worker.

A parent that waits on a child with ``result.get()`` inside a task holds a
worker slot for as long as the child runs, and deadlocks a pool that is full
of parents. Deferring on this trigger frees the slot instead; the triggerer
watches the child's result in the result backend and resumes the parent when
the child is ready (``SUCCESS``, ``FAILURE`` or ``REVOKED``).

The trigger itself only asks its runtime; the triggerer's runtime batches the
lookups of every watched task id into one backend round trip per interval
(``mget`` on key-value backends such as Redis), so ten thousand waiting
parents do not make ten thousand polls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from celery_defer.exceptions import InvalidDeferral
from celery_defer.triggers.base import BaseTrigger, TriggerEvent
from celery_defer.triggers.context import current_runtime

__all__ = ["TaskResultTrigger", "positive_interval"]

_CLASSPATH = "celery_defer.triggers.TaskResultTrigger"


def positive_interval(owner: str, value: Any) -> float:
    """``value`` as a positive, finite number of seconds, or InvalidDeferral naming ``owner``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidDeferral(
            f"{owner}: poll_interval must be a number of seconds, got {type(value).__name__}"
        )
    seconds = float(value)
    if not 0 < seconds < float("inf"):
        raise InvalidDeferral(f"{owner}: poll_interval must be positive and finite, got {value!r}")
    return seconds


class TaskResultTrigger(BaseTrigger):
    """Fire when the task ``task_id`` is ready (succeeded, failed or was revoked).

    The payload is a dict: ``task_id``, ``state`` (``"SUCCESS"``, ``"FAILURE"``
    or ``"REVOKED"``), ``result`` (the return value on success, else None) and
    ``error`` (None on success, else ``{"type", "message", "traceback"}``:
    the exception's class name, its message and the traceback text). A return
    value that cannot be stored as typed JSON is given as its ``repr()``, with
    ``result_is_repr`` set.

    ``poll_interval`` is the longest the child's end may go unnoticed. The
    result backend must store results where the triggerer can read them
    (Redis, a database, memcached, files...), not ``rpc://``; a task id that
    never runs is waited on forever, so give the deferral a ``timeout``.
    """

    def __init__(self, task_id: str, poll_interval: float = 1.0) -> None:
        super().__init__()
        if not isinstance(task_id, str) or not task_id:
            raise InvalidDeferral(
                f"TaskResultTrigger needs a task id (a non-empty str), got {task_id!r}"
            )
        self.task_id = task_id
        self.poll_interval = positive_interval("TaskResultTrigger", poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the public classpath, the task id and the interval."""
        return (_CLASSPATH, {"task_id": self.task_id, "poll_interval": self.poll_interval})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Wait (through the runtime's batched watcher) until the task is ready."""
        runtime = current_runtime("TaskResultTrigger")
        yield TriggerEvent(await runtime.task_result(self.task_id, self.poll_interval))

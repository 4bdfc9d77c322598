"""The one control path of cancelling a deferred task: a revoke, `celery defer cancel`, a worker.

Whoever cancels — the triggerer hearing a revoke broadcast, the ``defer
cancel`` command, a worker discarding a revoked or unknown resume — goes
through :func:`cancel`: the store forgets the deferrals (never one a worker is
running) and the result backend records each REVOKED. The triggerer adds
what only it can do, stopping the triggers that nothing waits on any more.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery_defer.exceptions import StoreError
from celery_defer.store import Cancelled, Store, store_for
from celery_defer.wire import RESUME_HEADER

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["Cancellation", "cancel", "forget_revoked", "forget_unknown"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cancellation:
    """What :func:`cancel` did: the deferrals forgotten, and REVOKED records that failed."""

    cancelled: Cancelled
    #: Task id -> the result backend's error, for each REVOKED that could not be recorded.
    unrecorded: dict[str, Exception] = field(default_factory=dict)


def cancel(app: Celery, store: Store, task_ids: list[str], *, reason: str | None) -> Cancellation:
    """Forget the deferrals of ``task_ids`` and record each one cancelled as REVOKED.

    ``reason`` None records nothing: the caller's Celery already did (a
    worker that discarded a revoked message). Raises
    :class:`~celery_defer.exceptions.StoreError` when the store is unreachable.
    """
    cancelled = store.cancel_deferrals(task_ids)
    unrecorded: dict[str, Exception] = {}
    if reason is not None:
        for task_id in cancelled.task_ids:
            try:
                app.backend.mark_as_revoked(task_id, reason=reason)
            except Exception as exc:  # any backend error: reported, the cancel stands
                unrecorded[task_id] = exc
    return Cancellation(cancelled, unrecorded)


def forget_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    """``task_revoked``: a worker discarded a revoked (or expired) resume; forget its deferral.

    With a triggerer running, a revoke is handled there at once; this covers a
    revoke that no triggerer heard, and a resume that expired in the queue.
    Celery has recorded REVOKED itself.
    """
    from celery_defer.task import DeferrableTask  # the task module imports this one's users

    if not isinstance(sender, DeferrableTask) or request is None or not request.id:
        return
    _forget(sender.app, request.id, "revoked")


def forget_unknown(sender: Any = None, message: Any = None, **kwargs: Any) -> None:
    """``task_unknown``: a worker rejected a resume of a task it does not know; forget it.

    Celery fails an unregistered task with ``NotRegistered`` and drops its
    message (celery/worker/consumer/consumer.py ``on_unknown_task``). The
    deferral, left ``resumed`` in the store, would be listed as waiting for
    ever and re-sent by the sweep, failing again each time.
    """
    task_id = kwargs.get("id")
    headers = getattr(message, "headers", None) or {}
    app = getattr(sender, "app", None)
    if RESUME_HEADER not in headers or not task_id or app is None:
        return
    _forget(app, task_id, "unknown")


def _forget(app: Celery, task_id: str, why: str) -> None:
    try:
        cancel(app, store_for(app), [task_id], reason=None)
    except StoreError as exc:
        logger.warning("could not forget the deferral of %s task %s: %s", why, task_id, exc)

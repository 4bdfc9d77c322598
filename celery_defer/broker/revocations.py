"""``revoke()`` of a deferred task, seen by the triggerer.

``AsyncResult.revoke()`` broadcasts a ``revoke`` control command on Celery's
pidbox exchange; workers add the id to their revoked set, but a deferred task
is on no worker, and its resume may be hours away. So the triggerer binds a
queue of its own to the same fanout exchange and picks the ``revoke``
commands out of it (every other control command is ignored: the triggerer is
not a worker and must not answer ``inspect`` or ``ping``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kombu import Queue

from celery_defer.broker.listener import BrokerListener

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)


def revoked_ids(body: Any) -> list[str]:
    """The task ids a control message revokes ([] for any other message)."""
    if not isinstance(body, dict) or body.get("method") != "revoke":
        return []
    task_id = (body.get("arguments") or {}).get("task_id")
    ids = task_id if isinstance(task_id, (list, tuple)) else [task_id]
    return [str(i) for i in ids if i]


def revoke_listener(
    app: Celery, triggerer_id: str, on_revoke: Callable[[list[str]], None]
) -> BrokerListener:
    """A listener calling ``on_revoke(task_ids)`` for each revoke broadcast."""
    mailbox = app.control.mailbox

    def queues() -> list[Queue]:
        return [
            Queue(
                f"celery_defer.{triggerer_id}.pidbox",
                exchange=mailbox.exchange,
                durable=False,
                auto_delete=True,
                expires=mailbox.queue_expires,
                message_ttl=mailbox.queue_ttl,
            )
        ]

    def on_message(body: Any) -> None:
        ids = revoked_ids(body)
        if ids:
            on_revoke(ids)

    return BrokerListener(app, "revoke broadcasts", queues, on_message)

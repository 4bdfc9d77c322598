"""New-trigger notices on the broker: how a triggerer learns of work at once.

A deferring task publishes a tiny message after its transaction commits; a
triggerer consumes the queue and wakes its claim loop. Notices are hints, not
the source of truth: a lost notice only delays a trigger until the
triggerer's periodic scan of the store, so publishing is best-effort and
consuming does not ack-track (see :mod:`celery_defer.broker.listener`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from kombu import Exchange, Queue

from celery_defer.broker.listener import HINT_TTL, BrokerListener, publish_hint
from celery_defer.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)


def notice_queue(app: Celery) -> Queue:
    """The queue new-trigger notices go to (``defer_trigger_queue``)."""
    name = Settings.from_app(app).trigger_queue
    return Queue(
        name,
        Exchange(name, type="direct", durable=True),
        routing_key=name,
        durable=True,
        message_ttl=HINT_TTL,
    )


def announce_trigger(app: Celery, trigger_id: int) -> None:
    """Tell the triggerers a trigger is waiting; never fails the caller."""
    queue = notice_queue(app)
    publish_hint(
        app,
        {"trigger_id": trigger_id},
        queue.exchange,
        queue.routing_key,
        [queue],
        f"trigger {trigger_id}",
    )


def notice_listener(app: Celery, on_notice: Callable[[], None]) -> BrokerListener:
    """A listener that calls ``on_notice`` for each new-trigger notice."""
    return BrokerListener(
        app, "new-trigger notices", lambda: [notice_queue(app)], lambda _body: on_notice()
    )

"""External events: :func:`send_event`, and how a waiter reads a stored event.

An event is a row in the store (key, typed-JSON payload, when it was sent),
so it is there for waiters that start later, and for the periodic scan of a
triggerer that missed the broker hint (:mod:`celery_defer.broker.event_hints`).
The hosts that wait for events (the triggerer's watchers, eager mode) read
them with :func:`matches` and :func:`payload_of`.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celery_defer import serialization
from celery_defer.broker.event_hints import announce_event
from celery_defer.exceptions import InvalidDeferral, InvalidEvent
from celery_defer.settings import Settings
from celery_defer.store import ExternalEvent, store_for
from celery_defer.triggers.external_event import check_event_key

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["matches", "payload_of", "send_event"]

logger = logging.getLogger(__name__)


def send_event(app: Celery, key: str, payload: Any = None) -> int:
    """Send an external event to the tasks waiting on ``ExternalEventTrigger(key)``.

    Callable from any process that has the app (a web handler, a script):
    the event is stored in ``defer_database_url`` and counts for
    ``defer_event_retention`` seconds, so tasks that defer on the key later
    within that time resume with it too. ``payload`` must be storable as typed
    JSON and at most ``defer_max_kwargs_bytes`` serialized. Returns the
    event's id. Raises :class:`~celery_defer.exceptions.InvalidEvent` for a bad
    key or payload (nothing is stored), and
    :class:`~celery_defer.exceptions.StoreError` when the store is unreachable.
    """
    try:
        check_event_key(key)
        text = serialization.dumps(payload, where="event payload")
    except InvalidDeferral as exc:
        raise InvalidEvent(str(exc)) from exc
    limit = Settings.from_app(app).max_kwargs_bytes
    size = len(text.encode("utf-8"))
    if size > limit:
        raise InvalidEvent(
            f"event payload takes {size} bytes serialized, over the limit of {limit} "
            "(defer_max_kwargs_bytes): store large data elsewhere and send a reference"
        )
    event = store_for(app).add_event(key, text)
    announce_event(app, key)
    logger.info(
        "sent external event %s (id %s)",
        key,
        event.id,
        extra={"event_key": key, "event_id": event.id},
    )
    return event.id


def matches(event: ExternalEvent, since: datetime | None) -> bool:
    """Whether ``event`` was sent at or after ``since`` (both aware, as the trigger keeps it)."""
    return since is None or event.created_at >= since


def payload_of(event: ExternalEvent) -> Any:
    """The event's payload, decoded (SerializationError if the row is corrupt)."""
    return serialization.loads(event.payload, where=f"payload of event {event.key!r}")

"""External events: :func:`send_event` and the broker hint that makes triggerers look.

An event is a row in the store (key, typed-JSON payload, when it was sent),
so it is there for waiters that start later, and for the periodic scan of a
triggerer that missed the hint. The hint is a tiny message on a fanout
exchange: every triggerer may hold a waiter for the key, so each one has a
queue of its own bound to it (like Celery's broadcast commands). Hints are
best-effort, like new-trigger notices (:mod:`celery_defer.notices`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from kombu import Exchange, Queue

from celery_defer import serialization
from celery_defer.exceptions import InvalidDeferral, InvalidEvent
from celery_defer.listener import HINT_TTL, BrokerListener, publish_hint
from celery_defer.settings import Settings
from celery_defer.store import ExternalEvent, store_for
from celery_defer.triggers.external_event import check_event_key

if TYPE_CHECKING:
    from celery import Celery

__all__ = [
    "announce_event",
    "event_exchange",
    "event_hint_listener",
    "matches",
    "payload_of",
    "send_event",
]

logger = logging.getLogger(__name__)

#: A triggerer's hint queue is deleted by the broker this long after its consumer left.
HINT_QUEUE_EXPIRES = 60.0


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
    """Whether ``event`` is at or after ``since`` (naive datetimes are UTC).

    The SQL store stamps events in naive UTC, the in-memory store in aware UTC.
    """
    if since is None:
        return True
    return _aware(event.created_at) >= _aware(since)


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.utcoffset() is None else moment


def payload_of(event: ExternalEvent) -> Any:
    """The event's payload, decoded (SerializationError if the row is corrupt)."""
    return serialization.loads(event.payload, where=f"payload of event {event.key!r}")


def event_exchange(app: Celery) -> Exchange:
    """The fanout exchange event hints go to (named after ``defer_trigger_queue``)."""
    return Exchange(f"{Settings.from_app(app).trigger_queue}.events", type="fanout", durable=False)


def announce_event(app: Celery, key: str) -> None:
    """Tell every triggerer to look for ``key`` now; never fails the caller."""
    exchange = event_exchange(app)
    publish_hint(app, {"key": key}, exchange, "", [exchange], f"event {key!r}")


def event_hint_listener(
    app: Celery, triggerer_id: str, on_hint: Callable[[str], None]
) -> BrokerListener:
    """A listener calling ``on_hint(key)`` for each event hint (one queue per triggerer)."""
    exchange = event_exchange(app)

    def queues() -> list[Queue]:
        return [
            Queue(
                f"{exchange.name}.{triggerer_id}",
                exchange=exchange,
                routing_key="",
                durable=False,
                auto_delete=True,
                expires=HINT_QUEUE_EXPIRES,
                message_ttl=HINT_TTL,
            )
        ]

    def on_message(body: Any) -> None:
        key = body.get("key") if isinstance(body, dict) else None
        if isinstance(key, str):
            on_hint(key)

    return BrokerListener(app, "external-event hints", queues, on_message)

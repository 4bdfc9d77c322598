"""External-event hints on the broker: how every triggerer learns an event was sent.

An external event is a row in the store (:func:`celery_defer.send_event`);
this is the tiny message that makes triggerers look at once. It goes to a
fanout exchange: every triggerer may hold a waiter for the key, so each one
has a queue of its own bound to it (like Celery's broadcast commands). Hints
are best-effort, like new-trigger notices (:mod:`celery_defer.broker.notices`):
a triggerer that missed one finds the event at its periodic scan of the store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kombu import Exchange, Queue

from celery_defer.broker.listener import HINT_TTL, BrokerListener, publish_hint
from celery_defer.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["HINT_QUEUE_EXPIRES", "announce_event", "event_exchange", "event_hint_listener"]

#: A triggerer's hint queue is deleted by the broker this long after its consumer left.
HINT_QUEUE_EXPIRES = 60.0


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

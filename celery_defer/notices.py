"""New-trigger notices on the broker: how a triggerer learns of work at once.

A deferring task publishes a tiny message after its transaction commits; a
triggerer consumes the queue and wakes its claim loop. Notices are hints, not
the source of truth: a lost notice only delays a trigger until the
triggerer's periodic scan of the store, so publishing is best-effort and
consuming does not ack-track.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kombu import Exchange, Queue

from celery_defer.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

#: Unconsumed notices expire: with no triggerer running they must not pile up.
NOTICE_TTL = 300


def notice_queue(app: Celery) -> Queue:
    """The queue new-trigger notices go to (``defer_trigger_queue``)."""
    name = Settings.from_app(app).trigger_queue
    return Queue(
        name,
        Exchange(name, type="direct", durable=True),
        routing_key=name,
        durable=True,
        message_ttl=NOTICE_TTL,
    )


def announce_trigger(app: Celery, trigger_id: int) -> None:
    """Tell the triggerers a trigger is waiting; never fails the caller."""
    queue = notice_queue(app)
    try:
        with app.producer_or_acquire() as producer:
            producer.publish(
                {"trigger_id": trigger_id},
                exchange=queue.exchange,
                routing_key=queue.routing_key,
                declare=[queue],
                serializer="json",
                expiration=NOTICE_TTL,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
            )
    except Exception as exc:
        logger.warning(
            "could not announce trigger %s (%s); triggerers find it on their next scan",
            trigger_id, exc, extra={"trigger_id": trigger_id},
        )


class NoticeListener(threading.Thread):
    """Consumes new-trigger notices in a thread and calls ``on_notice`` for each.

    Reconnects with backoff when the broker goes away; the triggerer keeps
    working meanwhile on its periodic scan.
    """

    def __init__(self, app: Celery, on_notice: Callable[[], None]) -> None:
        super().__init__(name="celery-defer-notices", daemon=True)
        self.app = app
        self.on_notice = on_notice
        self._stopping = threading.Event()
        self.ready = threading.Event()

    def stop(self) -> None:
        self._stopping.set()

    def run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                self._consume()
                backoff = 0.5
            except Exception as exc:
                logger.warning("new-trigger notices unavailable (%s); retrying in %.1fs",
                               exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _consume(self) -> None:
        with self.app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)
            with conn.Consumer(
                [notice_queue(self.app)],
                callbacks=[self._on_message],
                accept=["json"],
                no_ack=True,
            ):
                self.ready.set()
                while not self._stopping.is_set():
                    try:
                        conn.drain_events(timeout=1.0)
                    except TimeoutError:
                        conn.heartbeat_check()

    def _on_message(self, body: Any, message: Any) -> None:
        self.on_notice()

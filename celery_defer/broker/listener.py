"""A broker consumer in a thread that reconnects with backoff.

The triggerer listens to the broker for hints (new-trigger notices, revoke
broadcasts) while its event loop runs triggers. Hints are never the source of
truth, so the consumer does not ack-track, and while the broker is away the
triggerer carries on from the store.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery
    from kombu import Exchange, Queue

logger = logging.getLogger(__name__)


#: Unconsumed hints expire: with no triggerer running they must not pile up.
HINT_TTL = 300


def publish_hint(
    app: Celery,
    body: dict[str, Any],
    exchange: Exchange,
    routing_key: str,
    declare: Sequence[Exchange | Queue],
    what: str,
) -> None:
    """Publish a best-effort hint to the triggerers; never fails the caller.

    A lost hint only delays the triggerers until their next scan of the
    store, so a broker outage here is logged, not raised.
    """
    try:
        with app.producer_or_acquire() as producer:
            producer.publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                declare=list(declare),
                serializer="json",
                expiration=HINT_TTL,
                retry=True,
                retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2},
            )
    except Exception as exc:
        logger.warning(
            "could not announce %s (%s); triggerers find it on their next scan",
            what,
            exc,
            extra={"hint": body},
        )


class BrokerListener(threading.Thread):
    """Consumes ``queues()`` and calls ``on_message(body)`` for each message."""

    def __init__(
        self,
        app: Celery,
        name: str,
        queues: Callable[[], Sequence[Queue]],
        on_message: Callable[[Any], None],
    ) -> None:
        super().__init__(name=f"celery-defer-{name}", daemon=True)
        self.app = app
        self.what = name
        self.queues = queues
        self.on_message = on_message
        self._stopping = threading.Event()
        self.ready = threading.Event()

    def stop(self) -> None:
        """Ask the thread to stop; it ends within its consume timeout."""
        self._stopping.set()

    def run(self) -> None:
        """Consume until stopped, reconnecting with a backoff while the broker is away."""
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                self._consume()
                backoff = 0.5
            except Exception as exc:
                logger.warning("%s unavailable (%s); retrying in %.1fs", self.what, exc, backoff)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _consume(self) -> None:
        with self.app.connection_for_read() as conn:
            conn.ensure_connection(max_retries=1)
            with conn.Consumer(
                list(self.queues()),
                callbacks=[self._deliver],
                accept=["json"],
                no_ack=True,
            ):
                self.ready.set()
                while not self._stopping.is_set():
                    try:
                        conn.drain_events(timeout=1.0)
                    except TimeoutError:  # socket.timeout
                        conn.heartbeat_check()

    def _deliver(self, body: Any, _message: Any) -> None:
        try:
            self.on_message(body)
        except Exception:
            logger.exception("handling a %s message failed", self.what)

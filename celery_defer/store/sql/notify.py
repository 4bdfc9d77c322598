"""PostgreSQL's LISTEN/NOTIFY: the deferral's own statement wakes the triggerers.

The statement that saves a deferral on PostgreSQL also calls
``pg_notify(CHANNEL, '')`` (:mod:`celery_defer.store.sql.deferrals`): the
notification is delivered when that statement commits, costs no round trip of
its own, and cannot announce a deferral that was rolled back. Each triggerer
holds one connection that LISTENs (procrastinate's design). A notification is
a hint, like a broker notice: one missed (a connection lost) only delays a
trigger until the triggerer's periodic scan, and the listener reconnects.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

__all__ = ["CHANNEL", "NotifyListener"]

logger = logging.getLogger(__name__)

#: The channel new deferrals are announced on (one per database: every app's triggerers
#: on that database wake, and a wake with nothing to claim costs one claim query).
CHANNEL = "celery_defer_new_trigger"

#: Seconds between two looks at the stop flag, and the longest reconnect pause.
_POLL = 1.0
_MAX_BACKOFF = 10.0


class NotifyListener:
    """A thread holding one LISTEN connection, calling ``on_notice`` per notification."""

    def __init__(self, engine: Engine, on_notice: Callable[[], None]) -> None:
        self._engine = engine
        self._on_notice = on_notice
        self._stopping = threading.Event()
        self.ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="celery-defer-pg-listen", daemon=True
        )

    def start(self) -> None:
        """Start listening in a daemon thread."""
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop (within about a second)."""
        self._stopping.set()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end."""
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                self._listen()
                backoff = 0.5
            except Exception as exc:  # the database went away: reconnect with backoff
                logger.warning("PostgreSQL LISTEN connection lost (%s); reconnecting", exc)
                # Whatever was announced meanwhile is found by a wake-up now.
                self._on_notice()
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    def _listen(self) -> None:
        raw = self._engine.raw_connection()
        try:
            connection: Any = raw.driver_connection
            connection.autocommit = True
            connection.execute(f"LISTEN {CHANNEL}")  # notifies(timeout=...): psycopg 3.2+
            self.ready.set()
            self._on_notice()  # anything saved before LISTEN took effect
            while not self._stopping.is_set():
                for _ in connection.notifies(timeout=_POLL, stop_after=1):
                    self._on_notice()
        finally:
            raw.invalidate()  # never hand a LISTENing connection back to the pool

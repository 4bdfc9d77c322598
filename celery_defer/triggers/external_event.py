""":class:`ExternalEventTrigger`: wait for an event sent from outside Celery.

A webhook handler, a script or another service calls
:func:`celery_defer.send_event` (or ``celery -A proj defer send-event``) with a
key and a payload; every task deferred on ``ExternalEventTrigger(key)``
resumes with that payload. Events are stored, not just broadcast, so one sent
before the task deferred (even before it started) is not lost: it counts for
``defer_event_retention`` seconds. The broadcast on the broker is only a hint
that makes triggerers look at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from celery_defer.exceptions import InvalidDeferral
from celery_defer.triggers.base import BaseTrigger, TriggerEvent
from celery_defer.triggers.context import current_runtime

__all__ = ["MAX_KEY_LENGTH", "ExternalEventTrigger", "check_event_key"]

#: The longest event key (the store's column width).
MAX_KEY_LENGTH = 255

_CLASSPATH = "celery_defer.triggers.ExternalEventTrigger"


def check_event_key(key: Any) -> str:
    """``key`` if it is a usable event key, else InvalidDeferral saying why."""
    if not isinstance(key, str) or not key:
        raise InvalidDeferral(f"an event key must be a non-empty str, got {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidDeferral(
            f"an event key is at most {MAX_KEY_LENGTH} characters, got {len(key)}"
        )
    if "\x00" in key:
        raise InvalidDeferral(f"an event key cannot hold a NUL character, got {key!r}")
    return key


class ExternalEventTrigger(BaseTrigger):
    """Fire with the payload of an external event sent for ``key``.

    It fires with the newest event for ``key`` stored within
    ``defer_event_retention`` seconds (one day by default) and at or after
    ``since`` when given (naive means UTC), including events sent before the
    trigger started. Events are not consumed: every task waiting on the key
    resumes with the same event. To wait for a *new* event after having
    handled one, pass ``since`` (for instance the moment you defer again).
    """

    def __init__(self, key: str, since: datetime | None = None) -> None:
        super().__init__()
        self.key = check_event_key(key)
        if since is not None:
            if not isinstance(since, datetime):
                raise InvalidDeferral(
                    f"ExternalEventTrigger: since must be a datetime or None, got {since!r}"
                )
            since = (
                since.replace(tzinfo=timezone.utc)
                if since.utcoffset() is None
                else since.astimezone(timezone.utc)
            )
        self.since = since

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the public classpath, the key and ``since`` (aware UTC or None)."""
        return (_CLASSPATH, {"key": self.key, "since": self.since})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Wait (through the runtime's batched event watcher) for a matching event."""
        runtime = current_runtime("ExternalEventTrigger")
        yield TriggerEvent(await runtime.external_event(self.key, self.since))

"""ExternalEventTrigger: the arguments it refuses.

Tasks resuming on events run in tests/inprocess/triggers/test_external_event.py.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from celery import Celery

from celery_defer import send_event
from celery_defer.exceptions import InvalidDeferral, InvalidEvent
from celery_defer.store import store_for
from celery_defer.triggers import ExternalEventTrigger

pytestmark = pytest.mark.timeout(60)

WAIT_STATES = ("PENDING", "DEFERRED")


@pytest.mark.parametrize(
    ("key", "since", "message"),
    [
        ("", None, "non-empty str"),
        (3, None, "non-empty str"),
        ("x" * 256, None, "at most 255 characters"),
        ("k", "2030-01-01", "since must be a datetime"),
    ],
)
def test_bad_arguments_are_refused(key: Any, since: Any, message: str) -> None:
    with pytest.raises(InvalidDeferral, match=message):
        ExternalEventTrigger(key, since=since)


def _deep(depth: int) -> Any:
    value: Any = None
    for _ in range(depth):
        value = {"v": value}
    return value


@pytest.mark.parametrize(
    ("key", "payload", "message"),
    [
        ("order\x00a", None, "cannot hold a NUL character"),
        ("order-a", {"deep": _deep(5000)}, "nested too deeply to store"),
    ],
    ids=["nul-in-key", "payload-nested-5000-deep"],
)
def test_send_event_refuses_with_invalid_event(key: str, payload: Any, message: str) -> None:
    app = Celery("nul", set_as_current=False)
    app.conf.defer_database_url = "memory://"
    with pytest.raises(InvalidEvent, match=message):
        send_event(app, key, payload)
    assert store_for(app).latest_events([key], datetime(2000, 1, 1, tzinfo=timezone.utc)) == {}

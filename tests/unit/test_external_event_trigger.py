"""ExternalEventTrigger: the arguments it refuses.

Tasks resuming on events run in tests/inprocess/triggers/test_external_event.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from celery_defer.exceptions import InvalidDeferral
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

"""Polling for an observable outcome: the one set of waiting helpers of the tests.

The integration and fault tests watch processes they do not control (a worker,
a triggerer, a restarted server), so they poll for what they expect to see and
fail naming it when it does not come in time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def eventually(check: Callable[[], T], what: str = "the condition", timeout: float = 10.0) -> T:
    """:func:`wait_until` at the in-process tests' pace (every 20 ms), ``what`` naming it."""
    return wait_until(check, timeout, what, interval=0.02)


def wait_for_state(result: Any, state: str, timeout: float = 5.0) -> None:
    """Wait until a task's result (an ``AsyncResult``) shows ``state``; fail naming the last."""
    try:
        wait_until(lambda: result.state == state, timeout, f"{result.id} reaching {state}", 0.02)
    except AssertionError as exc:
        raise AssertionError(f"state stayed {result.state}, never {state} ({exc})") from None

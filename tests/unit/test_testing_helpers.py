"""Time skipping for users' tests, without an app: skip_time and fast_forward on timers.

With an app (eager mode, a worker): tests/inprocess/test_testing_helpers.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from celery_defer.testing import (
    fast_forward,
    reset_clock,
    skip_time,
)
from celery_defer.triggers import DateTimeTrigger, TimeDeltaTrigger, TriggerEvent
from celery_defer.triggers.execution import first_event

pytestmark = pytest.mark.timeout(30)

DAY = timedelta(days=1)


@pytest.fixture(autouse=True)
def wall_clock() -> Iterator[None]:
    yield
    reset_clock()


class LoopThread:
    """Runs one trigger to its first event on an event loop in another thread."""

    def __init__(self, trigger: DateTimeTrigger) -> None:
        self.event: TriggerEvent | None = None
        self.fired_at = 0.0
        self.thread = threading.Thread(target=self._run, args=(trigger,), daemon=True)
        self.thread.start()

    def _run(self, trigger: DateTimeTrigger) -> None:
        self.event = asyncio.run(first_event(trigger))
        self.fired_at = time.monotonic()

    def fired(self, within: float) -> bool:
        self.thread.join(within)
        return self.event is not None


def test_entering_skip_time_wakes_a_timer_already_asleep() -> None:
    sleeper = LoopThread(TimeDeltaTrigger(DAY))
    time.sleep(0.1)
    assert not sleeper.fired(within=0)
    with skip_time():
        assert sleeper.fired(within=2)


def test_fast_forward_wakes_only_the_timers_it_makes_due() -> None:
    tomorrow = LoopThread(DateTimeTrigger(datetime.now(timezone.utc) + DAY))
    in_two_days = LoopThread(DateTimeTrigger(datetime.now(timezone.utc) + 2 * DAY))
    time.sleep(0.1)  # both asleep on their loops
    moved = time.monotonic()
    fast_forward(None, DAY + timedelta(seconds=1))
    assert tomorrow.fired(within=2)
    assert tomorrow.fired_at - moved < 0.5
    assert not in_two_days.fired(within=0.2)
    fast_forward(None, DAY.total_seconds())  # seconds work too
    assert in_two_days.fired(within=2)


@pytest.mark.parametrize(
    ("delta", "error"),
    [(timedelta(seconds=-1), ValueError), (-5, ValueError), ("1d", TypeError), (True, TypeError)],
)
def test_fast_forward_refuses_going_back_or_non_durations(delta: Any, error: type) -> None:
    with pytest.raises(error):
        fast_forward(None, delta)

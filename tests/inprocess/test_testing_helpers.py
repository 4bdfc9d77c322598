"""Time skipping for users' tests: skip_time, fast_forward, reset_clock, wait_until_deferred."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_defer import DEFERRED, DeferrableTask, TriggerTimeout
from celery_defer.testing import (
    SuccessTrigger,
    fast_forward,
    reset_clock,
    skip_time,
    wait_until_deferred,
)
from celery_defer.triggers import TimeDeltaTrigger, TriggerEvent, clock
from celery_defer.triggers.execution import first_event
from tests.support.inprocess import make_app

pytestmark = pytest.mark.timeout(30)

DAY = timedelta(days=1)


@pytest.fixture(autouse=True)
def wall_clock() -> Iterator[None]:
    yield
    reset_clock()


def test_skip_time_fires_a_day_long_timer_at_once_with_its_moment() -> None:
    trigger = TimeDeltaTrigger(DAY)
    started = time.monotonic()
    with skip_time():
        event = asyncio.run(first_event(trigger))
    assert time.monotonic() - started < 0.5
    assert event == TriggerEvent(trigger.moment)
    assert clock.offset() == timedelta(0)  # the clock is back on the wall clock


def test_a_shift_between_reading_the_clock_and_sleeping_is_not_missed() -> None:
    async def read_then_sleep() -> float:
        clock.now()
        clock.shift(timedelta(0))  # another thread moves the clock right here
        started = time.monotonic()
        await clock.sleep(60)
        return time.monotonic() - started

    assert asyncio.run(read_then_sleep()) < 0.5


def test_reset_clock_undoes_fast_forward() -> None:
    fast_forward(None, timedelta(hours=3))
    assert clock.offset() == timedelta(hours=3)
    assert clock.now() - datetime.now(timezone.utc) > timedelta(hours=2, minutes=59)
    reset_clock()
    assert clock.offset() == timedelta(0)


@pytest.fixture
def app(store_url: str) -> Celery:
    app = make_app(store_url)

    @app.task(base=DeferrableTask, bind=True, shared=False, name="t.tomorrow")
    def tomorrow(self: DeferrableTask, x: int, event: Any = None) -> Any:
        if event is None:
            self.defer(trigger=TimeDeltaTrigger(DAY), kwargs={"x": x})
        return x * 2

    @app.task(base=DeferrableTask, bind=True, shared=False, name="t.patient")
    def patient(self: DeferrableTask, event: Any = None) -> Any:
        if event is None:  # waits two days, but gives up after an hour
            self.defer(trigger=TimeDeltaTrigger(2 * DAY), timeout=timedelta(hours=1))
        return "fired"

    @app.task(base=DeferrableTask, bind=True, shared=False, name="t.quick")
    def quick(self: DeferrableTask, event: Any = None) -> Any:
        if event is None:
            self.defer(trigger=SuccessTrigger())
        return "done"

    return app


def test_skip_time_in_eager_mode(app: Celery) -> None:
    started = time.monotonic()
    with skip_time():
        assert app.tasks["t.tomorrow"].apply(args=(21,)).get() == 42
    assert time.monotonic() - started < 1


def test_fast_forward_with_an_app_times_deferrals_out(app: Celery) -> None:
    with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False):
        result = app.tasks["t.patient"].delay()
        wait_until_deferred(result)
        assert result.state == DEFERRED
        fast_forward(app, timedelta(minutes=30))
        time.sleep(0.2)
        assert result.state == DEFERRED  # not yet
        fast_forward(app, timedelta(minutes=31))
        with pytest.raises(TriggerTimeout):
            result.get(timeout=10)


def test_wait_until_deferred_says_when_the_task_never_defers(app: Celery) -> None:
    @app.task(shared=False, name="t.plain")
    def plain() -> int:
        return 1

    with pytest.raises(AssertionError, match="ended SUCCESS without deferring"):
        wait_until_deferred(plain.apply(), timeout=1)

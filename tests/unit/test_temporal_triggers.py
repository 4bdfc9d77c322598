"""DateTimeTrigger and TimeDeltaTrigger: UTC handling, refusals, timing without polling."""

from __future__ import annotations

import asyncio
import time
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest

from celery_defer.exceptions import InvalidDeferral
from celery_defer.serialization import dumps, loads
from celery_defer.triggers import DateTimeTrigger, TimeDeltaTrigger, TriggerEvent, temporal

pytestmark = pytest.mark.timeout(10)

CLASSPATH = "celery_defer.triggers.DateTimeTrigger"


async def _events(trigger: DateTimeTrigger) -> list[TriggerEvent]:
    return [event async for event in trigger.run()]


class FakeClock:
    """Stands in for the wall clock and the timer sleep; records every sleep."""

    def __init__(self, start: datetime) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self.steps: list[timedelta] = []  # extra wall-clock jumps applied after each sleep

    def wall(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += timedelta(seconds=seconds)
        if self.steps:
            self.now += self.steps.pop(0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock(datetime(2024, 1, 1, tzinfo=timezone.utc))
    monkeypatch.setattr(temporal, "_now", fake.wall)
    # run() looks _sleep up in its module (the wakeable clock.sleep), so this is the sleep it sees.
    monkeypatch.setattr(temporal, "_sleep", fake.sleep)
    return fake


def test_naive_means_utc() -> None:
    trigger = DateTimeTrigger(datetime(2030, 1, 2, 3, 4, 5))
    assert trigger.moment == datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert trigger.moment.tzinfo is timezone.utc


def test_other_timezone_is_converted_to_utc() -> None:
    paris_summer = timezone(timedelta(hours=2))
    trigger = DateTimeTrigger(datetime(2030, 6, 1, 12, 0, tzinfo=paris_summer))
    assert trigger.moment == datetime(2030, 6, 1, 10, 0, tzinfo=timezone.utc)
    assert trigger.moment.utcoffset() == timedelta(0)


@pytest.mark.parametrize("bad", ["2030-01-01T00:00:00", 1700000000, None, timedelta(1)])
def test_datetime_trigger_refuses_non_datetimes(bad: Any) -> None:
    with pytest.raises(InvalidDeferral, match=r"DateTimeTrigger needs a datetime, got "):
        DateTimeTrigger(bad)


def test_datetime_trigger_refuses_a_bare_date() -> None:
    with pytest.raises(InvalidDeferral, match=r"got the date datetime\.date\(2030, 1, 1\)"):
        DateTimeTrigger(date(2030, 1, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [5, 5.0, "5s", datetime(2030, 1, 1), None])
def test_timedelta_trigger_refuses_non_timedeltas(bad: Any) -> None:
    with pytest.raises(InvalidDeferral, match=r"TimeDeltaTrigger needs a timedelta, got "):
        TimeDeltaTrigger(bad)


def test_serialize_roundtrips_through_typed_json() -> None:
    trigger = DateTimeTrigger(datetime(2030, 1, 2, 3, 4, 5, 6))
    classpath, kwargs = trigger.serialize()
    assert classpath == CLASSPATH
    rebuilt = DateTimeTrigger(**loads(dumps(kwargs)))
    assert rebuilt.moment == trigger.moment
    assert repr(trigger) == (
        "DateTimeTrigger(moment=datetime.datetime(2030, 1, 2, 3, 4, 5, 6, "
        "tzinfo=datetime.timezone.utc))"
    )


def test_timedelta_trigger_serializes_an_absolute_moment() -> None:
    before = datetime.now(timezone.utc)
    trigger = TimeDeltaTrigger(timedelta(hours=2))
    after = datetime.now(timezone.utc)
    classpath, kwargs = trigger.serialize()
    assert classpath == CLASSPATH
    assert set(kwargs) == {"moment"}
    assert before + timedelta(hours=2) <= kwargs["moment"] <= after + timedelta(hours=2)
    assert kwargs["moment"].tzinfo is timezone.utc
    # Rebuilding later (a triggerer restart) keeps the same moment: no second delta.
    assert DateTimeTrigger(**loads(dumps(kwargs))).moment == trigger.moment
    assert isinstance(trigger, DateTimeTrigger)


def test_timedelta_trigger_out_of_range_is_refused() -> None:
    with pytest.raises(InvalidDeferral, match="out of range"):
        TimeDeltaTrigger(timedelta.max)


def test_due_in_50ms_fires_after_50ms_with_the_moment() -> None:
    start = time.monotonic()
    moment = datetime.now(timezone.utc) + timedelta(milliseconds=50)
    events = asyncio.run(_events(DateTimeTrigger(moment)))
    elapsed = time.monotonic() - start
    assert datetime.now(timezone.utc) >= moment
    assert elapsed >= 0.049
    assert elapsed < 1
    assert events == [TriggerEvent(moment)]


def test_timedelta_trigger_fires_once_after_delta() -> None:
    start = time.monotonic()
    trigger = TimeDeltaTrigger(timedelta(milliseconds=30))
    events = asyncio.run(_events(trigger))
    assert time.monotonic() - start >= 0.029
    assert events == [TriggerEvent(trigger.moment)]


@pytest.mark.parametrize("delta", [timedelta(days=-400), timedelta(seconds=-1), timedelta(0)])
def test_past_moment_fires_at_once(delta: timedelta) -> None:
    start = time.monotonic()
    moment = datetime.now(timezone.utc) + delta
    assert asyncio.run(_events(DateTimeTrigger(moment))) == [TriggerEvent(moment)]
    assert asyncio.run(_events(TimeDeltaTrigger(delta)))[0].payload <= datetime.now(timezone.utc)
    assert time.monotonic() - start < 0.5


def test_sleeps_once_without_polling(clock: FakeClock) -> None:
    moment = clock.now + timedelta(seconds=2)
    events = asyncio.run(_events(DateTimeTrigger(moment)))
    assert clock.sleeps == [2.0]
    assert events == [TriggerEvent(moment)]


def test_long_waits_recheck_the_wall_clock_hourly(clock: FakeClock) -> None:
    moment = clock.now + timedelta(hours=2, minutes=30)
    asyncio.run(_events(DateTimeTrigger(moment)))
    assert clock.sleeps == [3600.0, 3600.0, 1800.0]


def test_clock_stepped_back_does_not_fire_early(clock: FakeClock) -> None:
    moment = clock.now + timedelta(seconds=10)
    clock.steps = [timedelta(seconds=-4)]  # NTP steps the wall clock back during the sleep
    events = asyncio.run(_events(DateTimeTrigger(moment)))
    assert clock.sleeps == [10.0, 4.0]
    assert clock.now >= moment
    assert events == [TriggerEvent(moment)]


def test_clock_stepped_forward_fires_without_sleeping_the_rest(clock: FakeClock) -> None:
    moment = clock.now + timedelta(hours=5)
    clock.steps = [timedelta(hours=10)]  # e.g. a suspended VM wakes up much later
    events = asyncio.run(_events(DateTimeTrigger(moment)))
    assert clock.sleeps == [3600.0]
    assert events == [TriggerEvent(moment)]

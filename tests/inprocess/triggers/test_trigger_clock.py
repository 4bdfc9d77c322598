"""The injectable trigger clock: triggers go by the clock of the runtime they run in.

A ``Triggerer(app, clock=...)`` hands its clock to its triggers through its runtime: moving
that clock moves its timers and nothing else (not the process's default clock, not another
triggerer's clock). A trigger with no runtime goes by the process's default clock, which is
the wall clock and the loop's timer while no test helper moves it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.result import AsyncResult

from celery_defer import DeferrableTask, Triggerer
from celery_defer.store import DEFERRED as ROW_DEFERRED
from celery_defer.store import store_for
from celery_defer.testing import ShiftableClock, reset_clock, wait_until_deferred
from celery_defer.triggers import DateTimeTrigger, TimeDeltaTrigger, TriggerEvent
from celery_defer.triggers.clock import DEFAULT_CLOCK, SystemClock, TriggerClock
from celery_defer.triggers.context import current_clock, use_runtime
from celery_defer.triggers.execution import first_event
from celery_defer.triggers.temporal import MAX_SLEEP
from tests.support.inprocess import make_app

pytestmark = pytest.mark.timeout(60)

DAY = timedelta(days=1)


@pytest.fixture(autouse=True)
def wall_clock() -> Iterator[None]:
    yield
    reset_clock()


class ClockRuntime:
    """A trigger runtime offering only a clock (what timer triggers ask of it)."""

    def __init__(self, clock: TriggerClock) -> None:
        self.clock = clock

    @property
    def app(self) -> Celery:
        raise AssertionError("a timer trigger does not need the app")

    async def external_event(self, key: str, since: datetime | None) -> Any:  # noqa: ARG002
        raise AssertionError("not used")

    async def task_result(self, task_id: str, poll_interval: float) -> dict[str, Any]:  # noqa: ARG002
        raise AssertionError("not used")


class RecordingClock:
    """A clock that stands still except when slept on; records each sleep."""

    def __init__(self, start: datetime) -> None:
        self.moment = start
        self.sleeps: list[float] = []

    def now(self) -> datetime:
        return self.moment

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.moment += timedelta(seconds=seconds)


class LoopThread:
    """Runs one trigger to its first event on an event loop in another thread, no runtime."""

    def __init__(self, trigger: DateTimeTrigger) -> None:
        self.event: TriggerEvent | None = None
        self.thread = threading.Thread(target=self._run, args=(trigger,), daemon=True)
        self.thread.start()

    def _run(self, trigger: DateTimeTrigger) -> None:
        self.event = asyncio.run(first_event(trigger))

    def fired(self, within: float) -> bool:
        self.thread.join(within)
        return self.event is not None


# -- with no runtime: the default clock, i.e. the wall clock --------------------------------


def test_a_trigger_run_with_no_runtime_goes_by_the_wall_clock() -> None:
    assert current_clock() is DEFAULT_CLOCK
    assert abs(current_clock().now() - datetime.now(timezone.utc)) < timedelta(seconds=1)
    moment = datetime.now(timezone.utc) + timedelta(seconds=0.3)
    started = time.monotonic()
    event = asyncio.run(first_event(DateTimeTrigger(moment)))
    assert event == TriggerEvent(moment)
    assert datetime.now(timezone.utc) >= moment  # not early by the wall clock
    assert 0.25 <= time.monotonic() - started < 2  # a real wait on the loop's timer


def test_moving_a_clock_of_its_own_does_not_touch_triggers_with_no_runtime() -> None:
    sleeper = LoopThread(DateTimeTrigger(datetime.now(timezone.utc) + DAY))
    time.sleep(0.1)
    other = ShiftableClock()
    other.shift(2 * DAY)
    with other.skipping():
        assert not sleeper.fired(within=0.3)
    assert DEFAULT_CLOCK.offset() == timedelta(0)
    DEFAULT_CLOCK.shift(DAY)  # what fast_forward(None, DAY) does
    assert sleeper.fired(within=2)


# -- through a runtime: the runtime's clock -------------------------------------------------


def test_a_timer_trigger_reads_the_time_and_sleeps_through_its_runtime() -> None:
    clock = RecordingClock(datetime(2030, 1, 1, tzinfo=timezone.utc))
    moment = clock.moment + timedelta(hours=2, minutes=30)

    async def run() -> TriggerEvent:
        with use_runtime(ClockRuntime(clock)):
            # TimeDeltaTrigger fixes its moment from the runtime's clock too.
            made_here = TimeDeltaTrigger(timedelta(minutes=5))
            assert made_here.moment == clock.moment + timedelta(minutes=5)
            return await asyncio.create_task(first_event(DateTimeTrigger(moment)))

    assert asyncio.run(run()) == TriggerEvent(moment)
    # The wall-clock re-check: never more than an hour on one sleep (DESIGN §7).
    assert clock.sleeps == [MAX_SLEEP, MAX_SLEEP, 1800.0]


def test_the_system_clock_is_the_wall_clock_and_the_loop_timer() -> None:
    clock = SystemClock()
    assert clock.now().tzinfo is timezone.utc
    assert abs(clock.now() - datetime.now(timezone.utc)) < timedelta(seconds=1)
    moment = datetime.now(timezone.utc) + timedelta(seconds=0.2)

    async def run() -> TriggerEvent:
        with use_runtime(ClockRuntime(clock)):
            return await first_event(DateTimeTrigger(moment))

    started = time.monotonic()
    assert asyncio.run(run()) == TriggerEvent(moment)
    assert 0.15 <= time.monotonic() - started < 2


def test_a_shiftable_clock_wakes_only_its_own_sleepers() -> None:
    mine, theirs = ShiftableClock(), ShiftableClock()
    woke: dict[str, float] = {}

    async def sleep_on(name: str, clock: ShiftableClock) -> None:
        started = time.monotonic()
        await clock.sleep(3600)
        woke[name] = time.monotonic() - started

    def in_thread(name: str, clock: ShiftableClock) -> threading.Thread:
        thread = threading.Thread(target=asyncio.run, args=(sleep_on(name, clock),), daemon=True)
        thread.start()
        return thread

    threads = {"mine": in_thread("mine", mine), "theirs": in_thread("theirs", theirs)}
    time.sleep(0.1)
    mine.shift(timedelta(minutes=1))
    threads["mine"].join(2)
    assert woke["mine"] < 1
    time.sleep(0.2)
    assert "theirs" not in woke
    assert mine.offset() == timedelta(minutes=1)
    assert theirs.offset() == timedelta(0)
    assert DEFAULT_CLOCK.offset() == timedelta(0)
    theirs.shift(timedelta(0))
    threads["theirs"].join(2)
    assert "theirs" in woke


# -- who owns the clock: the triggerer -------------------------------------------------------


def test_a_triggerer_goes_by_the_default_clock_unless_given_one() -> None:
    app = make_app("memory://")
    assert Triggerer(app).clock is DEFAULT_CLOCK
    assert Triggerer(app, capacity=3).capacity == 3
    clock = ShiftableClock()
    assert Triggerer(app, clock=clock).clock is clock


def _app_waiting_a_day() -> Celery:
    app = make_app("memory://")

    @app.task(base=DeferrableTask, bind=True, shared=False, name="clock.tomorrow")
    def tomorrow(self: DeferrableTask, due: datetime, event: Any = None) -> Any:
        if event is None:
            self.defer(trigger=DateTimeTrigger(due), kwargs={"due": due})
        return event.payload == due

    return app


def _worker(app: Celery) -> Any:
    # One at a time: a second in-process test worker starves the first one's consumer.
    return start_worker(app, pool="threads", concurrency=1, perform_ping_check=False)


def _fired(app: Celery, task_id: str, within: float) -> bool:
    """Whether the trigger of ``task_id`` fired (its deferral left ``deferred``) in time."""
    deadline = time.monotonic() + within
    while True:
        info = store_for(app).get_deferral(task_id)
        if info is None or info.state != ROW_DEFERRED:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


def test_triggerers_with_clocks_of_their_own_move_independently() -> None:
    """Each triggerer fires its day-long timer as soon as its own clock moves a day."""
    apps = {"a": _app_waiting_a_day(), "b": _app_waiting_a_day()}
    clocks = {"a": ShiftableClock(), "b": ShiftableClock()}
    due = datetime.now(timezone.utc) + DAY
    results: dict[str, AsyncResult] = {}
    with ExitStack() as stack:
        triggerers = {
            name: stack.enter_context(Triggerer(app, clock=clocks[name]))
            for name, app in apps.items()
        }
        for name, app in apps.items():
            with _worker(app):
                results[name] = app.tasks["clock.tomorrow"].delay(due)
                wait_until_deferred(results[name])
        time.sleep(0.5)  # a few scans of the store
        # A day away, by either clock: a row in the store that no triggerer holds.
        assert all(t.running_triggers == 0 for t in triggerers.values())

        moved = time.monotonic()
        clocks["a"].shift(DAY)
        assert _fired(apps["a"], results["a"].id, within=5)
        assert time.monotonic() - moved < 2  # at the next scan, not in a day
        # The other triggerer's clock did not move, nor did the process's default clock.
        assert not _fired(apps["b"], results["b"].id, within=0.3)
        assert DEFAULT_CLOCK.offset() == timedelta(0)

        clocks["b"].shift(DAY)
        assert _fired(apps["b"], results["b"].id, within=5)
    for name, app in apps.items():
        with _worker(app):  # the resumes wait in the broker: the task finishes, on time
            assert results[name].get(timeout=10) is True
    assert clocks["a"].offset() == clocks["b"].offset() == DAY
    assert DEFAULT_CLOCK.offset() == timedelta(0)

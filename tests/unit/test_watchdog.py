"""The blocked-loop watchdog in a plain event loop: a stall just before the stop, and the
running trigger read from the loop task's context. With a real triggerer:
tests/inprocess/triggerer/test_watchdog.py."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvloop

from celery_defer.triggerer.watchdog import LoopWatchdog, find_culprit, running_trigger
from celery_defer.triggers import BaseTrigger, TriggerEvent
from celery_defer.triggers.execution import first_event

pytestmark = pytest.mark.timeout(60)


def _block_deep_down(seconds: float) -> None:
    trigger_id = 999  # a decoy: the watchdog reads no variable of any frame
    _block_here(seconds + trigger_id * 0)


def _block_here(seconds: float) -> None:
    time.sleep(seconds)


class HelperBlocker(BaseTrigger):
    """Blocks the loop from a helper function two calls down, which has a local named
    ``trigger_id`` (the watchdog once read the runner's local of that name)."""

    started = ended = 0.0

    def __init__(self, seconds: float, in_a_task_of_its_own: bool = False) -> None:
        self.seconds = seconds
        self.in_a_task_of_its_own = in_a_task_of_its_own

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{__name__}.HelperBlocker",
            {"seconds": self.seconds, "in_a_task_of_its_own": self.in_a_task_of_its_own},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        async def helper() -> None:
            HelperBlocker.started = time.time()
            _block_deep_down(self.seconds)
            HelperBlocker.ended = time.time()

        if self.in_a_task_of_its_own:
            # No frame of the blocked stack belongs to the trigger or to the runner.
            await asyncio.create_task(helper())
        else:
            await helper()
        yield TriggerEvent("unblocked")


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("celery_defer.triggerer.watchdog")
    level = logger.level
    logger.setLevel(logging.WARNING)  # the test worker sets the root logger to ERROR
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_find_culprit_outside_a_trigger_says_so() -> None:
    import sys

    culprit = find_culprit(sys._getframe())
    assert culprit.trigger is None and culprit.trigger_id is None
    assert culprit.name() == "code that is not a trigger"
    assert "test_find_culprit_outside_a_trigger_says_so" in culprit.where


def test_a_stall_ending_just_before_the_stop_is_still_reported(records: Records) -> None:
    """A triggerer stopping right after a stall (a check interval is 0.02 s here) still
    logs how long the stall lasted."""
    loop = asyncio.new_event_loop()
    watchdog = LoopWatchdog(loop, threshold=0.1)

    async def stall_then_stop() -> None:
        time.sleep(0.3)
        await asyncio.sleep(0)  # the loop answers the watchdog's heartbeat
        watchdog.stop()

    try:
        loop.call_soon(watchdog.start, threading.get_ident())
        loop.run_until_complete(stall_then_stop())
    finally:
        loop.close()
    messages = [r.getMessage() for r in records.records]
    assert [m for m in messages if "so far" in m], messages
    (end,) = [r for r in records.records if "in total" in r.getMessage()]
    assert 0.25 <= end.blocked_seconds < 1.0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "in_a_task_of_its_own",
    [
        False,
        pytest.param(
            True,
            marks=pytest.mark.skipif(
                sys.version_info < (3, 12),
                reason="before Python 3.12 a task does not show its context (Task.get_context)",
            ),
        ),
    ],
    ids=["same-task", "own-task"],
)
@pytest.mark.parametrize(
    "new_loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
def test_the_running_trigger_is_read_from_the_context_of_the_loops_task(
    records: Records, new_loop: Any, in_a_task_of_its_own: bool
) -> None:
    loop = new_loop()
    watchdog = LoopWatchdog(loop, threshold=0.1)
    trigger = HelperBlocker(0.4, in_a_task_of_its_own)

    async def run_as_the_runner_does() -> TriggerEvent:
        with running_trigger(17, trigger):
            return await first_event(trigger)

    try:
        loop.call_soon(watchdog.start, threading.get_ident())
        assert loop.run_until_complete(run_as_the_runner_does()).payload == "unblocked"
    finally:
        watchdog.stop()
        loop.close()
    (stall,) = [r for r in records.records if "so far" in r.getMessage()]
    assert stall.trigger == f"{__name__}.HelperBlocker"  # type: ignore[attr-defined]
    assert stall.trigger_id == 17  # type: ignore[attr-defined]
    assert "in _block_here" in stall.getMessage()

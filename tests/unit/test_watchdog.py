"""The blocked-loop watchdog in a plain event loop: a stall just before the stop, and the
running trigger read from the loop task's context. With a real triggerer:
tests/inprocess/triggerer/test_watchdog.py."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

import pytest
import uvloop

from celery_defer.triggerer.watchdog import LoopWatchdog, find_culprit, running_trigger
from celery_defer.triggers import TriggerEvent
from celery_defer.triggers.execution import first_event
from tests.support.blocking import HelperBlocker, Records

pytestmark = pytest.mark.timeout(60)


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
    assert stall.trigger == f"{HelperBlocker.__module__}.HelperBlocker"  # type: ignore[attr-defined]
    assert stall.trigger_id == 17  # type: ignore[attr-defined]
    assert "in _block_here" in stall.getMessage()

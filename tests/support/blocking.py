"""Triggers that block the event loop, and a log recorder, for the watchdog's tests (unit and
in-process)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from celery_defer.triggers import BaseTrigger, TriggerEvent


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

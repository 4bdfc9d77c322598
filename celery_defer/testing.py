"""Triggers for users' tests: one that fires at once, one that fails at once.

They let a test exercise a deferrable task's resume path and its failure path
without waiting on a clock or an external system, whether the task runs
eagerly or through a real worker and triggerer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from celery_defer.triggers.base import BaseTrigger, TriggerEvent

__all__ = ["FailureTrigger", "SuccessTrigger"]


class SuccessTrigger(BaseTrigger):
    """Fire at once with payload ``True``."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return this class's path and no kwargs."""
        return ("celery_defer.testing.SuccessTrigger", {})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Yield ``TriggerEvent(True)`` without waiting."""
        yield TriggerEvent(True)


class FailureTrigger(BaseTrigger):
    """Raise at once, without yielding: the waiting task fails with ``TriggerFailed``."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return this class's path and no kwargs."""
        return ("celery_defer.testing.FailureTrigger", {})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Raise ``RuntimeError`` before yielding anything."""
        _fail_on_purpose()
        # Never reached; the yield is what makes run() an async generator.
        yield TriggerEvent(False)


def _fail_on_purpose() -> None:
    # Typed "-> None", not NoReturn, so that mypy does not flag the yield above as unreachable.
    raise RuntimeError("FailureTrigger failed on purpose")

"""The public test triggers: SuccessTrigger fires with True, FailureTrigger raises."""

from __future__ import annotations

import asyncio
import importlib
import inspect

import pytest

from celery_defer.testing import FailureTrigger, SuccessTrigger
from celery_defer.triggers import BaseTrigger, TriggerEvent

pytestmark = pytest.mark.timeout(10)


async def _collect(trigger: BaseTrigger) -> list[TriggerEvent]:
    return [event async for event in trigger.run()]


def _rebuild(trigger: BaseTrigger) -> BaseTrigger:
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    rebuilt: BaseTrigger = cls(**kwargs)
    return rebuilt


def test_success_trigger_yields_true_once() -> None:
    trigger = SuccessTrigger()
    assert inspect.isasyncgen(trigger.run())
    assert asyncio.run(_collect(trigger)) == [TriggerEvent(True)]


def test_failure_trigger_raises_without_yielding() -> None:
    seen: list[TriggerEvent] = []

    async def consume() -> None:
        async for event in FailureTrigger().run():
            seen.append(event)

    assert inspect.isasyncgen(FailureTrigger().run())
    with pytest.raises(RuntimeError, match="FailureTrigger failed on purpose"):
        asyncio.run(consume())
    assert seen == []


@pytest.mark.parametrize(
    ("trigger", "classpath"),
    [
        (SuccessTrigger(), "celery_defer.testing.SuccessTrigger"),
        (FailureTrigger(), "celery_defer.testing.FailureTrigger"),
    ],
)
def test_serialize_to_importable_classpath(trigger: BaseTrigger, classpath: str) -> None:
    assert trigger.serialize() == (classpath, {})
    assert type(_rebuild(trigger)) is type(trigger)
    assert repr(trigger) == f"{type(trigger).__name__}()"

"""The trigger contract: TriggerEvent equality, BaseTrigger defaults and repr."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from celery_defer.triggers import BaseTrigger, TriggerEvent

pytestmark = pytest.mark.timeout(10)


class KeyTrigger(BaseTrigger):
    """A minimal well-behaved trigger, as a user would write it."""

    def __init__(self, key: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.key = key

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (self.classpath(), {"key": self.key})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent({"key": self.key})


class NoSuperTrigger(BaseTrigger):
    """Forgets super().__init__(): the base must not care."""

    def __init__(self, n: int) -> None:
        self.n = n

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("tests.NoSuperTrigger", {"n": self.n})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent(self.n)


class BrokenSerializeTrigger(BaseTrigger):
    def serialize(self) -> tuple[str, dict[str, Any]]:
        raise RuntimeError("boom")

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent(None)


class BadReturnTrigger(BrokenSerializeTrigger):
    def serialize(self) -> tuple[str, dict[str, Any]]:
        return "nope"  # type: ignore[return-value]


async def _first(trigger: BaseTrigger) -> TriggerEvent:
    try:
        async for event in trigger.run():
            return event
        raise AssertionError("no event")
    finally:
        await trigger.cleanup()


def test_event_payload_and_equality() -> None:
    event = TriggerEvent({"a": [1]})
    assert event.payload == {"a": [1]}
    assert event == TriggerEvent({"a": [1]})
    assert event != TriggerEvent({"a": [2]})
    assert event != {"a": [1]}  # not equal to a bare payload
    assert TriggerEvent(None) != TriggerEvent(False)


def test_event_repr_and_unhashable() -> None:
    assert repr(TriggerEvent("x")) == "TriggerEvent('x')"
    with pytest.raises(TypeError):
        hash(TriggerEvent(1))


def test_base_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        BaseTrigger()  # type: ignore[abstract]


def test_base_init_accepts_and_ignores_kwargs() -> None:
    trigger = KeyTrigger("k", unexpected=1, other="x")
    assert trigger.serialize() == (KeyTrigger.classpath(), {"key": "k"})
    assert not hasattr(trigger, "unexpected")


def test_classpath_is_module_and_qualname() -> None:
    class Inner(KeyTrigger):
        pass

    assert KeyTrigger.classpath() == f"{KeyTrigger.__module__}.KeyTrigger"
    assert Inner.classpath().endswith(".test_classpath_is_module_and_qualname.<locals>.Inner")


def test_run_yields_and_default_cleanup_is_noop() -> None:
    trigger = KeyTrigger("k")
    assert asyncio.run(_first(trigger)) == TriggerEvent({"key": "k"})
    assert asyncio.run(trigger.cleanup()) is None


def test_subclass_without_super_init_works() -> None:
    trigger = NoSuperTrigger(3)
    assert repr(trigger) == "NoSuperTrigger(n=3)"
    assert asyncio.run(_first(trigger)) == TriggerEvent(3)
    assert NoSuperTrigger.classpath().endswith(".NoSuperTrigger")


def test_repr_shows_serialized_kwargs() -> None:
    assert repr(KeyTrigger("a'b")) == 'KeyTrigger(key="a\'b")'


@pytest.mark.parametrize("cls", [BrokenSerializeTrigger, BadReturnTrigger])
def test_repr_never_raises(cls: type[BaseTrigger]) -> None:
    assert repr(cls()) == f"<{cls.__qualname__}>"

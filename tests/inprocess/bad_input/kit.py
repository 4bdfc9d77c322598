"""What the bad-input matrix (tests/inprocess/bad_input/) shares: triggers that break the contract,
the task that defers on them, and assertions on the store and the triggerer.

The triggers live here, in an importable module, because the triggerer rebuilds a trigger
from its classpath: ``tests.inprocess.bad_input.kit.<Name>`` (the repository root is on
``sys.path``).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa
from celery import Celery
from celery.result import AsyncResult

from celery_defer import DeferrableTask, Triggerer
from celery_defer.store import store_for
from celery_defer.store.sql.schema import deferrals, triggers
from celery_defer.testing import SuccessTrigger
from celery_defer.triggers import BaseTrigger, TriggerEvent
from tests.support.waiting import eventually

# -- triggers -------------------------------------------------------------------------------


class Fires(BaseTrigger):
    """A well-behaved trigger: fires at once with ``value``."""

    def __init__(self, value: Any = True) -> None:
        self.value = value

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.Fires", {"value": self.value})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent(self.value)


class _Simple(BaseTrigger):
    """Serializes as its own class with no kwargs."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (type(self).classpath(), {})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent(True)


class ReturnsEvent(_Simple):
    async def run(self) -> TriggerEvent:  # type: ignore[override]  # the mistake under test
        return TriggerEvent(1)


class PlainRun(_Simple):
    def run(self) -> list[TriggerEvent]:  # type: ignore[override]  # the mistake under test
        return [TriggerEvent(1)]


class EndsEmpty(_Simple):
    async def run(self) -> AsyncIterator[TriggerEvent]:
        return
        yield  # pragma: no cover


class Raises(_Simple):
    async def run(self) -> AsyncIterator[TriggerEvent]:
        await asyncio.sleep(0)
        raise ConnectionError("upstream said no")
        yield  # pragma: no cover


class ExitsProcess(_Simple):
    """Calls sys.exit() (SystemExit is a BaseException): must not stop the triggerer."""

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await asyncio.sleep(0)
        sys.exit(3)
        yield  # pragma: no cover


class Interrupts(_Simple):
    """Raises KeyboardInterrupt from run(): would end the triggerer's process (#14.3)."""

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await asyncio.sleep(0)
        raise KeyboardInterrupt
        yield  # pragma: no cover


class RaisesGeneratorExit(_Simple):
    """Raises GeneratorExit from run(): submitted no outcome, its task waited for ever."""

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await asyncio.sleep(0)
        raise GeneratorExit("closed by hand")
        yield  # pragma: no cover


class Doom(BaseException):
    """A BaseException subclass of a trigger's own."""


class RaisesBaseException(_Simple):
    async def run(self) -> AsyncIterator[TriggerEvent]:
        await asyncio.sleep(0)
        raise Doom("not an Exception")
        yield  # pragma: no cover


class CleanupInterrupts(_Simple):
    """Fires, then its cleanup() raises KeyboardInterrupt: logged, never fatal."""

    async def cleanup(self) -> None:
        raise KeyboardInterrupt


class RaisesCancelled(_Simple):
    """Raises CancelledError of its own (e.g. from a cancelled future it awaited)."""

    async def run(self) -> AsyncIterator[TriggerEvent]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future
        yield TriggerEvent(None)  # pragma: no cover


class YieldsJunk(_Simple):
    async def run(self) -> AsyncIterator[Any]:
        yield {"not": "an event"}


class YieldsUnstorable(_Simple):
    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent({"when": datetime.now(timezone.utc), "handle": object()})


class CleanupRaises(_Simple):
    """Fires, then its cleanup() raises: logged, never fatal."""

    async def cleanup(self) -> None:
        raise RuntimeError("cleanup broke")


class Blocker(BaseTrigger):
    """Blocks the event loop with time.sleep, the mistake the watchdog exists for."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.Blocker", {"seconds": self.seconds})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        time.sleep(self.seconds)
        yield TriggerEvent("unblocked")


class SerializeRaises(_Simple):
    def serialize(self) -> tuple[str, dict[str, Any]]:
        raise KeyError("no_such_field")


class SerializeReturnsJunk(_Simple):
    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{__name__}.SerializeReturnsJunk"  # type: ignore[return-value]  # under test


class Claims(_Simple):
    """A trigger claiming to be rebuilt from ``classpath`` (with ``kwargs``)."""

    def __init__(self, classpath: str, kwargs: dict[str, Any] | None = None) -> None:
        self.claimed = classpath
        self.kwargs = kwargs or {}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (self.claimed, self.kwargs)


#: Every call of the two things below: a classpath naming them must never run them.
EXECUTED: list[str] = []


class NotATrigger:
    """Imports fine, has a run(), is not a BaseTrigger: the triggerer must never build it."""

    def __init__(self, **kwargs: Any) -> None:
        EXECUTED.append(f"NotATrigger({kwargs})")

    async def run(self) -> AsyncIterator[TriggerEvent]:  # pragma: no cover
        EXECUTED.append("NotATrigger.run")
        yield TriggerEvent(True)


def not_a_trigger(**kwargs: Any) -> None:
    """A plain callable: a stored classpath naming it must never be called."""
    EXECUTED.append(f"not_a_trigger({kwargs})")


# -- the task -------------------------------------------------------------------------------

#: How each case defers: ``case name -> () -> self.defer() options``. Test modules add theirs.
DEFER_OPTIONS: dict[str, Callable[[], dict[str, Any]]] = {
    "good": lambda: {"trigger": SuccessTrigger()},
    "fires": lambda: {"trigger": Fires(True)},
}


#: The id of every execution of :meth:`Subject.finish`: a resume must run once.
RESUMED: list[str] = []


class Subject(DeferrableTask):
    """Defers as its ``case`` says, and resumes into :meth:`finish`."""

    name = "bad.subject"
    not_callable = 42

    def run(self, case: str, tag: str = "") -> None:
        options = dict(DEFER_OPTIONS[case]())
        options.setdefault("method_name", "finish")
        options.setdefault("kwargs", {"tag": tag or case})
        self.defer(**options)

    def finish(self, tag: str, event: Any = None) -> dict[str, Any]:
        RESUMED.append(self.request.id)
        return {"tag": tag, "payload": event.payload}


class Live:
    """The app the matrix shares, with its real worker (threads pool); see conftest.py."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.subject = app.register_task(Subject())
        self.store = store_for(app)
        self.tags: dict[str, str] = {}

        @app.task(shared=False, name="bad.plain")
        def plain(x: int) -> int:
            return x + 1

        self.plain = plain

    def defer(self, case: str, tag: str = "", **options: Any) -> AsyncResult:
        result: AsyncResult = self.subject.apply_async((case, tag), **options)
        self.tags[result.id] = tag or case
        return result

    def triggerer(self) -> Triggerer:
        return Triggerer(self.app)


# -- observing ------------------------------------------------------------------------------


def trigger_rows(app: Celery) -> int:
    with store_for(app).engine.connect() as conn:  # type: ignore[attr-defined]
        return int(conn.execute(sa.select(sa.func.count()).select_from(triggers)).scalar_one())


def stored(live: Live, result: AsyncResult) -> None:
    """Wait until the deferral of ``result`` is in the store (no triggerer runs meanwhile)."""
    eventually(lambda: live.store.get_deferral(result.id), f"deferral of {result.id} stored")


def corrupt(live: Live, result: AsyncResult, **columns: Any) -> None:
    """Write ``columns`` into the stored deferral of ``result`` (a ``trigger_`` prefix: its
    trigger row), as a damaged disk, a hand edit or an upgrade could leave them."""
    deferral = live.store.get_deferral(result.id)
    assert deferral is not None and deferral.trigger_id is not None
    own = {k: v for k, v in columns.items() if not k.startswith("trigger_")}
    theirs = {k.removeprefix("trigger_"): v for k, v in columns.items() if k.startswith("trigger_")}
    with live.store.engine.begin() as conn:  # type: ignore[attr-defined]
        if own:
            conn.execute(sa.update(deferrals).where(deferrals.c.task_id == result.id).values(own))
        if theirs:
            conn.execute(
                sa.update(triggers).where(triggers.c.id == deferral.trigger_id).values(theirs)
            )


def assert_untouched(live: Live, triggerer: Triggerer, *before: AsyncResult) -> None:
    """Other tasks are untouched and the triggerer runs on.

    The good tasks deferred alongside the bad one resume with their results; the
    triggerer still heart-beats in the store; and a task deferred after the failure
    still fires through it.
    """
    after = live.defer("good", tag="after")
    for result in before:
        assert result.get(timeout=10, interval=0.02) == {
            "tag": live.tags[result.id],
            "payload": True,
        }
    assert after.get(timeout=10, interval=0.02) == {"tag": "after", "payload": True}
    mine = [t for t in store_for(live.app).stats().triggerers if t.id == triggerer.id]
    assert mine, "the triggerer left the store"
    age = datetime.now(timezone.utc) - mine[0].heartbeat_at
    assert age < timedelta(seconds=2), f"the triggerer stopped heart-beating ({age} ago)"

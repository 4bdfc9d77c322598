"""Deferred tasks in Celery's canvas and lifecycle, in process (memory broker, cache backend).

The same behaviours run against real services and processes in
tests/integration/test_canvas_real.py; these are the fast versions.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from celery import Celery, chain, chord, group
from celery.contrib.testing.worker import start_worker

from celery_defer import DEFERRED, DeferrableTask, Triggerer, TriggerTimeout
from celery_defer.store import store_for
from celery_defer.sweep import sweep
from celery_defer.testing import SuccessTrigger
from celery_defer.triggers import BaseTrigger, TriggerEvent
from tests.support.inprocess import make_app
from tests.support.waiting import eventually

COUNTS: Counter[str] = Counter()


class Forever(BaseTrigger):
    """Never fires; counts its cleanups."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.Forever", {"tag": self.tag})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await asyncio.Event().wait()
        yield TriggerEvent(None)  # pragma: no cover

    async def cleanup(self) -> None:
        COUNTS[f"cleanup:{self.tag}"] += 1


class Patient(DeferrableTask):
    """Defers on a trigger that never fires; only its total deadline ends it."""

    name = "c.patient"
    deadline = 0.3

    def run(self) -> None:
        self.defer(trigger=Forever("deadline"))


def register(app: Celery) -> dict[str, Any]:
    @app.task(shared=False, name="c.add1")
    def add1(x: int) -> int:
        return x + 1

    @app.task(shared=False, name="c.total")
    def total(values: list[int]) -> int:
        COUNTS["chord-callback"] += 1
        return sum(values)

    @app.task(base=DeferrableTask, bind=True, shared=False, name="c.times10")
    def times10(self: DeferrableTask, x: int, times: int = 1, event: Any = None) -> int:  # noqa: ARG001
        if times > 0:
            self.defer(trigger=SuccessTrigger(), kwargs={"x": x, "times": times - 1})
        return x * 10

    @app.task(base=DeferrableTask, bind=True, shared=False, name="c.stubborn", max_retries=5)
    def stubborn(self: DeferrableTask, event: Any = None) -> int:
        if event is None:
            self.defer(trigger=SuccessTrigger())
        COUNTS["stubborn-runs"] += 1
        if self.request.retries < 2:
            raise self.retry(countdown=0.05)
        return int(self.request.retries)

    @app.task(base=DeferrableTask, bind=True, shared=False, name="c.waits_forever")
    def waits_forever(self: DeferrableTask, tag: str) -> None:
        self.defer(trigger=Forever(tag))

    @app.task(base=DeferrableTask, bind=True, shared=False, name="c.quiet", ignore_result=True)
    def quiet(self: DeferrableTask, event: Any = None) -> None:
        if event is None:
            self.defer(trigger=SuccessTrigger())
        COUNTS["quiet-done"] += 1

    tasks = dict(
        add1=add1,
        total=total,
        times10=times10,
        stubborn=stubborn,
        waits_forever=waits_forever,
        quiet=quiet,
    )
    tasks["patient"] = app.register_task(Patient())
    return tasks


@pytest.fixture(scope="module", params=[2, 1], ids=["protocol2", "protocol1"])
def canvas(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Celery, dict[str, Any]]]:
    store = tmp_path_factory.mktemp("store") / "store.sqlite3"
    app = make_app(f"sqlite:///{store}", task_protocol=request.param)
    tasks = register(app)
    with (
        start_worker(
            app, pool="threads", concurrency=2, perform_ping_check=False, task_events=True
        ),
        Triggerer(app),
    ):
        yield app, tasks


def test_chain_with_a_deferring_task_equals_the_plain_chain(canvas: Any) -> None:
    _, t = canvas
    plain = chain(t["add1"].s(1), t["add1"].s(), t["add1"].s()).apply_async().get(timeout=10)
    assert plain == 4
    middle = chain(t["add1"].s(1), t["times10"].s(), t["add1"].s()).apply_async()
    assert middle.get(timeout=10) == 21
    end = chain(t["add1"].s(1), t["times10"].s()).apply_async()
    assert end.get(timeout=10) == 20
    several = chain(t["add1"].s(1), t["times10"].s(times=3), t["add1"].s()).apply_async()
    assert several.get(timeout=10) == 21


def test_group_of_fifty_deferring_tasks(canvas: Any) -> None:
    _, t = canvas
    result = group(t["times10"].s(i) for i in range(50)).apply_async()
    assert result.get(timeout=30) == [i * 10 for i in range(50)]


def test_chord_callback_runs_once_after_the_last_member(canvas: Any) -> None:
    _, t = canvas
    before = COUNTS["chord-callback"]
    result = chord((t["times10"].s(i, times=2) for i in range(10)), t["total"].s()).apply_async()
    assert result.get(timeout=30) == sum(i * 10 for i in range(10))
    time.sleep(0.3)
    assert COUNTS["chord-callback"] == before + 1


def test_retry_inside_a_resumed_method_counts_as_usual(canvas: Any) -> None:
    _, t = canvas
    before = COUNTS["stubborn-runs"]
    assert t["stubborn"].delay().get(timeout=10) == 2
    assert COUNTS["stubborn-runs"] == before + 3  # first resume, then two retries


def test_revoke_cancels_the_deferral_and_cleans_the_trigger_up(canvas: Any) -> None:
    app, t = canvas
    tag = f"revoke-{app.conf.task_protocol}"
    result = t["waits_forever"].delay(tag)
    eventually(lambda: result.state == DEFERRED)
    eventually(lambda: store_for(app).get_deferral(result.id) is not None)
    time.sleep(0.2)  # let the triggerer start the trigger
    result.revoke()
    eventually(lambda: result.state == "REVOKED")
    eventually(lambda: COUNTS[f"cleanup:{tag}"] == 1)
    assert store_for(app).get_deferral(result.id) is None


def test_total_deadline_ends_the_task_with_a_clear_timeout(canvas: Any) -> None:
    app, t = canvas
    result = t["patient"].delay()
    eventually(lambda: result.state == DEFERRED)
    assert result.info["timeout_at"] is not None  # the deadline bounds the wait
    time.sleep(0.4)
    sweep(app)
    with pytest.raises(TriggerTimeout, match="total deadline"):
        result.get(timeout=10)


def test_ignore_result_survives_the_deferral(canvas: Any) -> None:
    _, t = canvas
    before = COUNTS["quiet-done"]
    result = t["quiet"].delay()
    eventually(lambda: COUNTS["quiet-done"] == before + 1)
    time.sleep(0.2)
    assert result.state == "PENDING"  # nothing stored: not DEFERRED, not SUCCESS


def test_events_deferred_then_resumed_then_one_success(canvas: Any) -> None:
    app, t = canvas
    seen: list[tuple[str, str]] = []
    ready = threading.Event()
    receivers: list[Any] = []

    def listen() -> None:
        # One consumer for the whole test: on RabbitMQ the event queue is deleted with its
        # last consumer, so capturing in short rounds would drop events between rounds.
        with app.connection_for_read() as conn:
            receiver = app.events.Receiver(
                conn, handlers={"*": lambda e: seen.append((e["type"], e.get("uuid", "")))}
            )
            receiver.on_consume_ready = lambda *_, **__: ready.set()
            receivers.append(receiver)
            receiver.capture(limit=None, timeout=None, wakeup=False)

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert ready.wait(10), "the event receiver never started consuming"
    # On Redis, events are a PUBLISH: the receiver may report itself ready before its
    # SUBSCRIBE took effect. Probe until an event of our own comes back, then start.
    with app.events.default_dispatcher() as dispatcher:
        deadline = time.monotonic() + 10
        while not any(kind == "test-probe" for kind, _ in seen):
            assert time.monotonic() < deadline, "the event receiver never received a probe"
            dispatcher.send("test-probe")
            time.sleep(0.05)
    result = t["times10"].delay(4)
    assert result.get(timeout=10) == 40
    eventually(lambda: ("task-succeeded", result.id) in seen)
    time.sleep(0.2)
    receivers[0].should_stop = True
    listener.join(5)
    mine = [kind for kind, uuid in seen if uuid == result.id]
    assert "task-deferred" in mine and "task-resumed" in mine
    assert mine.index("task-deferred") < mine.index("task-resumed")
    assert mine.count("task-succeeded") == 1
    assert mine.index("task-succeeded") > mine.index("task-resumed")
    assert "task-failed" not in mine

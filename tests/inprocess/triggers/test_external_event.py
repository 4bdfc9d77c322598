"""ExternalEventTrigger: tasks resume on events sent from outside, under the retention rule.

End-to-end cases run a real worker and triggerer in this process (memory broker, cache result
backend, SQLite store). The triggerer's store scan runs only every 5 s here, so a resume well
within that proves the broker hint woke it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from celery.contrib.testing.worker import start_worker

import celery_defer
from celery_defer import DeferrableTask, Triggerer, TriggerFailed
from celery_defer.serialization import dumps, loads
from celery_defer.store import ExternalEvent, store_for
from celery_defer.store.sql.schema import external_events
from celery_defer.triggerer.watchers import Watchers
from celery_defer.triggers import ExternalEventTrigger
from tests.support.inprocess import make_app, sql_engine

pytestmark = pytest.mark.timeout(60)

WAIT_STATES = ("PENDING", "DEFERRED")


# -- the trigger on its own ---------------------------------------------------------------------


def test_it_round_trips_with_since_in_utc() -> None:
    naive = datetime(2030, 1, 2, 3, 4, 5)
    classpath, kwargs = ExternalEventTrigger("k", since=naive).serialize()
    assert classpath == "celery_defer.triggers.ExternalEventTrigger"
    rebuilt = ExternalEventTrigger(**loads(dumps(kwargs)))
    assert rebuilt.key == "k"
    assert rebuilt.since == naive.replace(tzinfo=timezone.utc)
    paris = datetime(2030, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1)))
    assert ExternalEventTrigger("k", since=paris).since == naive.replace(tzinfo=timezone.utc)


def test_outside_a_triggerer_it_fails_saying_why() -> None:
    async def first() -> Any:
        return [event async for event in ExternalEventTrigger("k").run()]

    with pytest.raises(TriggerFailed, match="ExternalEventTrigger needs a trigger runtime"):
        asyncio.run(first())


# -- the triggerer's runtime batches its store queries -------------------------------------------


class CountingStore:
    """Stands in for the store: records each latest_events call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.events: dict[str, ExternalEvent] = {}

    def latest_events(self, keys: Sequence[str], not_before: datetime) -> dict[str, ExternalEvent]:  # noqa: ARG002
        self.calls.append(sorted(keys))
        return {k: self.events[k] for k in keys if k in self.events}


def test_a_hundred_waiters_cost_one_query_and_a_hint_one_more(store_url: str) -> None:
    app = make_app(store_url, defer_triggerer_heartbeat=5.0, defer_triggerer_health_timeout=30.0)
    store = CountingStore()
    runtime = Watchers(app, store)  # type: ignore[arg-type]  # only latest_events
    now = datetime.now(timezone.utc)

    async def scenario() -> list[Any]:
        waits = [asyncio.ensure_future(runtime.external_event(f"k{i}", None)) for i in range(100)]
        await asyncio.sleep(0.2)
        assert len(store.calls) == 1 and len(store.calls[0]) == 100
        store.events["k7"] = ExternalEvent(1, "k7", dumps({"n": 7}), now)
        runtime.hint("k7")
        runtime.hint("unwatched")  # nothing waits on it here: no query
        done = await asyncio.wait_for(waits[7], timeout=2)
        for wait in waits:
            wait.cancel()
        await runtime.aclose()
        return [done]

    assert asyncio.run(scenario()) == [{"n": 7}]
    assert store.calls[1:] == [["k7"]]


# -- through a real worker and triggerer ---------------------------------------------------------


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Celery]:
    store = tmp_path_factory.mktemp("store") / "store.sqlite3"
    app = make_app(
        f"sqlite:///{store}", defer_triggerer_heartbeat=5.0, defer_triggerer_health_timeout=30.0
    )

    @app.task(base=DeferrableTask, bind=True, shared=False, name="t.await_event")
    def await_event(self: DeferrableTask, key: str, since: Any = None, event: Any = None) -> Any:
        if event is None:
            self.defer(
                trigger=ExternalEventTrigger(key, since=since), kwargs={"key": key, "since": since}
            )
        return event.payload

    with (
        start_worker(app, pool="threads", concurrency=4, perform_ping_check=False),
        Triggerer(app),
    ):
        yield app


def await_event(app: Celery, key: str, since: datetime | None = None) -> Any:
    return app.tasks["t.await_event"].delay(key, since)


def deferred(result: Any) -> None:
    deadline = time.monotonic() + 10
    while result.state != "DEFERRED":
        assert time.monotonic() < deadline, f"the task never deferred ({result.state})"
        time.sleep(0.02)


def test_an_event_wakes_a_waiting_task_at_once(app: Celery) -> None:
    waiting = await_event(app, "order:1")
    deferred(waiting)
    time.sleep(0.3)  # the trigger is running and has looked once
    started = time.monotonic()
    celery_defer.send_event(app, "order:1", {"paid": True, "amount": "12.50"})
    assert waiting.get(timeout=10) == {"paid": True, "amount": "12.50"}
    assert time.monotonic() - started < 2.0  # the hint, not the 5 s scan


def test_an_event_sent_before_the_task_deferred_still_resumes_it(app: Celery) -> None:
    celery_defer.send_event(app, "order:2", ["early", 1])
    assert await_event(app, "order:2").get(timeout=10) == ["early", 1]


def test_the_newest_event_of_the_key_wins(app: Celery) -> None:
    for n in range(3):
        celery_defer.send_event(app, "order:3", n)
    assert await_event(app, "order:3").get(timeout=10) == 2


def test_two_tasks_waiting_on_one_key_both_resume(app: Celery) -> None:
    first, second = await_event(app, "order:4"), await_event(app, "order:4")
    deferred(first)
    deferred(second)
    celery_defer.send_event(app, "order:4", "shared")
    assert (first.get(timeout=10), second.get(timeout=10)) == ("shared", "shared")


def test_an_event_older_than_since_does_not_fire_but_a_newer_one_does(app: Celery) -> None:
    celery_defer.send_event(app, "order:5", "stale")
    time.sleep(0.01)
    waiting = await_event(app, "order:5", since=datetime.now(timezone.utc))
    deferred(waiting)
    time.sleep(0.5)  # it looked at least once, and found only the stale event
    assert waiting.state == "DEFERRED"
    celery_defer.send_event(app, "order:5", "fresh")
    assert waiting.get(timeout=10) == "fresh"


def test_an_event_older_than_the_retention_does_not_fire(app: Celery) -> None:
    """Kept ``defer_event_retention`` (a day by default): an older event no longer counts."""
    store = store_for(app)
    old = datetime.now(timezone.utc) - timedelta(days=1, minutes=1)
    with sql_engine(store).begin() as conn:  # an event sent a day and a minute ago
        conn.execute(
            sa.insert(external_events).values(
                key="report:1", payload=dumps("too old"), created_at=old
            )
        )
    waiting = await_event(app, "report:1")
    deferred(waiting)
    time.sleep(0.5)  # it looked, and found nothing within the retention
    assert waiting.state == "DEFERRED"
    celery_defer.send_event(app, "report:1", "in time")
    assert waiting.get(timeout=10) == "in time"


def test_events_of_other_keys_do_not_fire(app: Celery) -> None:
    waiting = await_event(app, "order:6")
    deferred(waiting)
    celery_defer.send_event(app, "order:66", "not mine")
    celery_defer.send_event(app, "order:", "not mine either")
    time.sleep(0.5)
    assert waiting.state == "DEFERRED"
    celery_defer.send_event(app, "order:6", "mine")
    assert waiting.get(timeout=10) == "mine"


# -- eager mode ---------------------------------------------------------------------------------


def test_eager_mode_resumes_on_a_stored_event(store_url: str) -> None:
    app = make_app(store_url, task_always_eager=True)

    @app.task(base=DeferrableTask, bind=True, shared=False, name="t.eager_event")
    def eager_event(self: DeferrableTask, event: Any = None) -> Any:
        if event is None:
            self.defer(trigger=ExternalEventTrigger("eager:1"), timeout=5)
        return event.payload

    celery_defer.send_event(app, "eager:1", {"ok": True})
    assert eager_event.delay().get() == {"ok": True}
    assert store_for(app).latest_events(["eager:1"], datetime(2000, 1, 1, tzinfo=timezone.utc))[
        "eager:1"
    ].key == ("eager:1")

"""What only the in-memory store has: reset(), its clock, its lock, and ``memory://``.

The store contract itself (every operation's semantics) is tested on memory, SQLite and
PostgreSQL alike in tests/contract/test_store_contract.py; this module tests the fake as a
fake, as procrastinate tests its ``InMemoryConnector``.
"""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import pytest
from celery import Celery

from celery_defer.exceptions import StoreError
from celery_defer.external_events import matches
from celery_defer.store import (
    DEFERRED,
    RUNNING,
    InMemoryStore,
    NewDeferral,
    TriggerOutcome,
    store_for,
)
from celery_defer.testing import InMemoryStore as PublicInMemoryStore
from tests.support.store_backends import ManualClock

pytestmark = pytest.mark.timeout(60)

HEALTH = 60.0


def deferral(task_id: str, timeout_at: datetime | None = None) -> NewDeferral:
    return NewDeferral(
        task_id, "proj.t", "run", json.dumps({"n": task_id}), "{}", "proj.Trigger", "{}", timeout_at
    )


def filled(store: InMemoryStore) -> int:
    """Put one of everything in ``store``; returns the trigger id."""
    store.register_triggerer("t1", "host", 1, 10)
    stored = store.save_deferral(deferral("a"))
    store.claim_triggers("t1", 10, HEALTH)
    store.add_event("approved", "true")
    return stored.trigger_id


def test_it_is_the_public_testing_helper() -> None:
    assert PublicInMemoryStore is InMemoryStore
    assert "InMemoryStore" in __import__("celery_defer.testing").testing.__all__


def test_reset_forgets_everything_and_ids_keep_counting() -> None:
    store = InMemoryStore()
    first = filled(store)
    store.reset()
    assert store.get_deferral("a") is None
    assert store.list_deferrals() == []
    assert store.held_trigger_ids("t1") == set()
    assert store.heartbeat("t1") is False  # the triggerer is forgotten too
    assert store.latest_events(["approved"], datetime(2000, 1, 1, tzinfo=timezone.utc)) == {}
    stats = store.stats()
    assert (stats.triggerers, stats.oldest, stats.unowned_triggers) == ([], None, 0)
    # A late outcome for a forgotten trigger must never land on a new one.
    again = store.save_deferral(deferral("a"))
    assert again.trigger_id > first and again.generation == 1
    assert store.fire([TriggerOutcome(first, '"late"')]) == []
    assert store.get_deferral("a") is not None


def test_create_schema_and_close_keep_the_rows() -> None:
    store = InMemoryStore()
    store.save_deferral(deferral("a"))
    store.create_schema()
    store.close()
    info = store.get_deferral("a")
    assert info is not None and info.state == DEFERRED


def test_every_timestamp_comes_from_the_clock_as_aware_utc() -> None:
    start = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
    clock = ManualClock(start)
    store = InMemoryStore(clock=clock)
    store.register_triggerer("t1", "host", 1, 10)
    store.save_deferral(deferral("a", timeout_at=datetime(2030, 1, 1, 15, 0, tzinfo=timezone.utc)))
    clock.advance(timedelta(minutes=5))
    [claimed] = store.claim_triggers("t1", 10, health_timeout=3600)
    store.fire([TriggerOutcome(claimed.id, "{}")])
    event = store.add_event("k", "1")
    info = store.get_deferral("a")
    assert info is not None
    assert (info.created_at, info.updated_at) == (start, start + timedelta(minutes=5))
    assert info.timeout_at == datetime(2030, 1, 1, 15, 0, tzinfo=timezone.utc)
    assert event.created_at == start + timedelta(minutes=5)
    [triggerer] = store.stats().triggerers
    assert triggerer.started_at == triggerer.heartbeat_at == start
    stamps = [info.created_at, info.updated_at, info.timeout_at, event.created_at]
    assert all(s is not None and s.tzinfo is timezone.utc for s in stamps)


def test_a_clock_in_another_zone_is_stored_as_utc() -> None:
    paris = timezone(timedelta(hours=1))
    store = InMemoryStore(clock=lambda: datetime(2030, 1, 1, 13, 0, tzinfo=paris))
    event = store.add_event("k", "1")
    assert event.created_at == datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert event.created_at.tzinfo is timezone.utc


def test_a_naive_clock_is_refused() -> None:
    store = InMemoryStore(clock=lambda: datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="the clock's now is naive"):
        store.save_deferral(deferral("a"))


def test_time_passes_only_with_the_clock() -> None:
    clock = ManualClock()
    store = InMemoryStore(clock=clock)
    store.register_triggerer("silent", "host", 1, 10)
    trigger_id = store.save_deferral(deferral("a")).trigger_id
    store.claim_triggers("silent", 10, HEALTH)
    store.register_triggerer("other", "host", 2, 10)
    assert store.claim_triggers("other", 10, HEALTH) == []  # no time passed: still alive
    clock.advance(HEALTH + 1)
    assert store.heartbeat("other") is True
    assert [c.id for c in store.claim_triggers("other", 10, HEALTH)] == [trigger_id]
    assert store.heartbeat("silent") is False


def test_events_are_found_by_the_clock_and_match_aware_since() -> None:
    clock = ManualClock(datetime(2030, 1, 1, tzinfo=timezone.utc))
    store = InMemoryStore(clock=clock)
    old = store.add_event("k", "1")
    clock.advance(60)
    new = store.add_event("k", "2")
    assert store.latest_events(["k", "k", "other"], old.created_at) == {"k": new}
    assert store.latest_events(["k"], new.created_at + timedelta(seconds=1)) == {}
    assert matches(new, old.created_at) and not matches(old, new.created_at)
    assert store.delete_events(new.created_at, 10) == 1
    assert store.latest_events(["k"], old.created_at) == {"k": new}


def test_register_twice_is_refused_like_a_primary_key() -> None:
    store = InMemoryStore()
    store.register_triggerer("t1", "host", 1, 10)
    with pytest.raises(StoreError, match="already registered"):
        store.register_triggerer("t1", "host", 1, 10)


# -- one lock ---------------------------------------------------------------------------


def test_two_triggerers_claiming_from_eight_threads_never_share_a_trigger() -> None:
    store = InMemoryStore()
    ids = {store.save_deferral(deferral(f"t{i:04}")).trigger_id for i in range(2000)}
    for name in ("a", "b"):
        store.register_triggerer(name, "host", 1, 10_000)
    start = threading.Barrier(8)

    def claim_all(thread: int) -> tuple[str, list[int]]:
        triggerer_id = "ab"[thread % 2]
        start.wait(timeout=10)
        got: list[int] = []
        while batch := store.claim_triggers(triggerer_id, 7, HEALTH):
            got.extend(c.id for c in batch)
        return triggerer_id, got

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(claim_all, range(8)))
    claimed = [i for _, got in results for i in got]
    assert len(claimed) == len(set(claimed)) == len(ids)
    assert set(claimed) == ids
    by_triggerer = {name: {i for n, got in results if n == name for i in got} for name in "ab"}
    assert by_triggerer["a"] & by_triggerer["b"] == set()
    assert store.held_trigger_ids("a") == by_triggerer["a"]
    assert store.held_trigger_ids("b") == by_triggerer["b"]


def test_a_resume_claimed_from_eight_threads_runs_once() -> None:
    store = InMemoryStore()
    stored = store.save_deferral(deferral("a"))
    start = threading.Barrier(8)

    def fire_and_begin(n: int) -> tuple[int, bool]:
        start.wait(timeout=10)
        orders = store.fire([TriggerOutcome(stored.trigger_id, json.dumps(n))])
        return len(orders), store.begin_resume("a", 1)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(fire_and_begin, range(8)))
    assert sum(fired for fired, _ in results) == 1
    assert sum(began for _, began in results) == 1
    info = store.get_deferral("a")
    assert info is not None and info.state == RUNNING


# -- memory:// -----------------------------------------------------------------------------


def test_memory_url_gives_one_store_per_app() -> None:
    app, other = Celery(set_as_current=False), Celery(set_as_current=False)
    app.conf.defer_database_url = other.conf.defer_database_url = "memory://"
    store = store_for(app)
    assert isinstance(store, InMemoryStore)
    assert store_for(app) is store  # every caller of this app in this process shares it
    assert store_for(other) is not store
    store.save_deferral(deferral("a"))
    assert store_for(app).get_deferral("a") is not None
    assert store_for(other).get_deferral("a") is None


APP_MODULE = """
from celery import Celery
import celery_defer

app = Celery("memapp", broker="memory://")
app.conf.defer_database_url = "memory://"
celery_defer.install(app)
"""

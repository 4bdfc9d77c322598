"""The store's read-only inspection queries (list, describe, stats): memory, SQLite, PostgreSQL."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from celery_defer import serialization
from celery_defer.store import NewDeferral, Store, TriggerOutcome

pytestmark = pytest.mark.timeout(30)


def defer(
    store: Store,
    task_id: str,
    task_name: str = "proj.t",
    classpath: str = "celery_defer.triggers.DateTimeTrigger",
) -> int:
    stored = store.save_deferral(
        NewDeferral(
            task_id=task_id,
            task_name=task_name,
            method="run",
            kwargs=serialization.dumps({"token": "s3cret"}),
            request=json.dumps({}),
            trigger_classpath=classpath,
            trigger_kwargs=serialization.dumps(
                {"moment": datetime(2030, 1, 1, tzinfo=timezone.utc)}
            ),
            timeout_at=None,
        )
    )
    return stored.trigger_id


def test_list_filters_and_orders_oldest_first(store: Store) -> None:
    defer(store, "a", "proj.one")
    defer(store, "b", "proj.two", "my_triggers.Poll_100%")
    fired = defer(store, "c", "proj.one")
    store.fire([TriggerOutcome(fired, "{}")])  # c: firing, its trigger gone

    assert [d.task_id for d in store.list_deferrals()] == ["a", "b", "c"]
    assert [d.task_id for d in store.list_deferrals(states=["firing"])] == ["c"]
    assert [d.task_id for d in store.list_deferrals(task_name="proj.one")] == ["a", "c"]
    assert [d.task_id for d in store.list_deferrals(trigger_contains="Poll_100%")] == ["b"]
    # LIKE wildcards in the substring are literal, not patterns.
    assert store.list_deferrals(trigger_contains="Poll%100") == []
    assert store.list_deferrals(trigger_contains="_") != []
    assert [d.task_id for d in store.list_deferrals(limit=1)] == ["a"]
    c = store.list_deferrals(states=["firing"])[0]
    assert (c.trigger_id, c.trigger_classpath, c.triggerer_id) == (None, None, None)


def test_describe_returns_the_stored_values(store: Store) -> None:
    trigger_id = defer(store, "a")
    store.register_triggerer("t1", "h", 1, 5)
    store.claim_triggers("t1", 5, 30.0)
    detail = store.describe_deferral("a")
    assert detail is not None
    assert detail.trigger_id == trigger_id and detail.triggerer_id == "t1"
    assert serialization.loads(detail.kwargs) == {"token": "s3cret"}
    assert detail.trigger_kwargs is not None
    assert serialization.loads(detail.trigger_kwargs)["moment"].year == 2030
    assert detail.outcome is None
    assert store.describe_deferral("missing") is None


def test_stats(store: Store) -> None:
    empty = store.stats()
    assert empty.triggerers == [] and empty.oldest is None and empty.unowned_triggers == 0
    assert empty.by_state == {"deferred": 0, "firing": 0, "resumed": 0, "running": 0, "ended": 0}

    for task_id in ("a", "b", "c"):
        defer(store, task_id)
    store.register_triggerer("t1", "host", 7, 10)
    store.register_triggerer("t2", "host", 8, 10)
    store.claim_triggers("t1", 2, 30.0)
    stats = store.stats()
    assert [(t.id, t.pid, t.running, t.capacity) for t in stats.triggerers] == [
        ("t1", 7, 2, 10),
        ("t2", 8, 0, 10),
    ]
    assert stats.by_state["deferred"] == 3  # type: ignore[index]  # a str key finds the state
    assert stats.oldest is not None and stats.oldest.task_id == "a"
    assert stats.unowned_triggers == 1

"""The store at batch sizes the triggerer reaches under load.

Claims and fires of more rows than one ``IN (...)`` list holds (on memory, SQLite and
PostgreSQL), and on the SQL stores alone: the claim path of dialects without
``UPDATE ... RETURNING``, and the partial index that keeps a claim cheap, added to stores made
before it existed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timezone

import sqlalchemy as sa

from celery_defer.store import DEFERRED, FIRING, RESUMED, NewDeferral, SqlStore, TriggerOutcome
from celery_defer.store.sql.schema import deferrals, triggers, unowned_triggers
from tests.support.store_backends import Backend, ManualClock, SqlBackend

MakeStore = Callable[..., SqlStore]

MANY = 2500  # more than the store's IN-list chunk (1000), twice over


def store_many(backend: Backend, n: int) -> list[int]:
    """``n`` deferrals, one per trigger; returns the trigger ids.

    The SQL stores get them in bulk (saving one at a time takes a round trip each).
    """
    if not isinstance(backend, SqlBackend):
        return [
            backend.store.save_deferral(
                NewDeferral(f"t{i:05d}", "proj.t", "run", "{}", "{}", "c", "{}", None)
            ).trigger_id
            for i in range(n)
        ]
    store = backend.sql
    now = datetime.now(timezone.utc)
    with store.engine.begin() as conn:
        ids = (
            conn.execute(
                sa.insert(triggers).returning(triggers.c.id, sort_by_parameter_order=True),
                [{"classpath": "c", "kwargs": "{}", "created_at": now} for _ in range(n)],
            )
            .scalars()
            .all()
        )
        conn.execute(
            sa.insert(deferrals),
            [
                {
                    "task_id": f"t{i:05d}",
                    "task_name": "proj.t",
                    "trigger_id": trigger_id,
                    "method": "run",
                    "kwargs": "{}",
                    "request": "{}",
                    "state": DEFERRED,
                    "outcome": None,
                    "generation": 1,
                    "timeout_at": None,
                    "created_at": now,
                    "updated_at": now,
                }
                for i, trigger_id in enumerate(ids)
            ],
        )
    return list(ids)


def test_claim_fire_and_mark_many_in_one_call(backend: Backend) -> None:
    store = backend.store
    ids = store_many(backend, MANY)
    store.register_triggerer("t1", "host", 1, MANY)
    claimed = store.claim_triggers("t1", MANY + 10, 60.0)
    assert [c.id for c in claimed] == ids  # all of them, in id order
    assert store.held_trigger_ids("t1") == set(ids)

    outcomes = [TriggerOutcome(i, json.dumps({"event": i})) for i in ids]
    orders = store.fire(outcomes)
    assert len(orders) == MANY
    # each deferral carries its own trigger's outcome
    by_task = {o.task_id: json.loads(o.outcome)["event"] for o in orders}
    assert by_task == {f"t{n:05d}": trigger_id for n, trigger_id in enumerate(ids)}
    assert store.held_trigger_ids("t1") == set()  # fired triggers are deleted
    assert backend.states() == {FIRING: MANY}
    assert store.fire(outcomes) == []  # a second fire of the same triggers resumes nothing

    store.mark_resumed(orders)
    assert backend.states() == {RESUMED: MANY}


def test_claim_without_update_returning(sql_store: SqlStore, make_store: MakeStore) -> None:
    """The path of MySQL and MariaDB: lock, then update in chunks."""
    store = sql_store
    ids = store_many(SqlBackend("sql", store, make_store, ManualClock()), MANY)
    store.register_triggerer("t1", "host", 1, MANY)
    store.engine.dialect.update_returning = False
    first = store.claim_triggers("t1", 1500, 60.0)
    rest = store.claim_triggers("t1", 1500, 60.0)
    assert [c.id for c in first + rest] == ids
    assert store.claim_triggers("t1", 10, 60.0) == []
    assert store.held_trigger_ids("t1") == set(ids)


def test_unowned_index_is_added_to_an_older_store(store_url: str, make_store: MakeStore) -> None:
    store = make_store(store_url)
    store.create_schema()

    def indexes() -> set[str | None]:
        return {i["name"] for i in sa.inspect(store.engine).get_indexes(triggers.name)}

    assert unowned_triggers.name in indexes()
    with store.engine.begin() as conn:
        conn.execute(sa.text(f"DROP INDEX {unowned_triggers.name}"))
    assert unowned_triggers.name not in indexes()
    make_store(store_url).create_schema()  # what any process does on first use
    assert unowned_triggers.name in indexes()

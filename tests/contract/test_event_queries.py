"""External events in the store: the event queries (SQLite and PostgreSQL) and the schema
upgrade that added them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from celery_defer.store import SqlStore
from celery_defer.store.sql.schema import SCHEMA_VERSION, external_events, schema_info

pytestmark = pytest.mark.timeout(60)

MakeStore = Callable[[str], SqlStore]


# -- the store's event queries, on SQLite and PostgreSQL ---------------------------------------


@pytest.fixture
def events_store(store_url: str) -> Iterator[SqlStore]:
    """A SQL store with its schema, on each SQL backend (``store_url``: an empty database)."""
    store = SqlStore(store_url)
    store.create_schema()
    yield store
    store.close()


def backdate(store: SqlStore, event_id: int, age: timedelta) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            sa.update(external_events)
            .where(external_events.c.id == event_id)
            .values(created_at=datetime.now(timezone.utc) - age)
        )


def test_latest_events_gives_the_newest_of_each_key_since_a_cutoff(events_store: SqlStore) -> None:
    first = events_store.add_event("a", '"a1"')
    events_store.add_event("a", '"a2"')
    only_old = events_store.add_event("b", '"b1"')
    events_store.add_event("c", '"c1"')
    backdate(events_store, only_old.id, timedelta(hours=2))
    backdate(events_store, first.id, timedelta(hours=2))
    found = events_store.latest_events(
        ["a", "b", "c", "missing"], datetime.now(timezone.utc) - timedelta(hours=1)
    )
    assert {key: event.payload for key, event in found.items()} == {"a": '"a2"', "c": '"c1"'}
    assert found["c"].created_at <= datetime.now(timezone.utc)
    assert events_store.latest_events([], datetime(2000, 1, 1, tzinfo=timezone.utc)) == {}


def test_latest_events_takes_thousands_of_keys_in_one_call(events_store: SqlStore) -> None:
    keys = [f"job:{n}" for n in range(2500)]
    for key in keys[::500]:
        events_store.add_event(key, f'"{key}"')
    found = events_store.latest_events(keys, datetime(2000, 1, 1, tzinfo=timezone.utc))
    assert sorted(found) == sorted(keys[::500])


def test_delete_events_removes_the_old_ones_in_bounded_batches(events_store: SqlStore) -> None:
    old = [events_store.add_event("k", str(n)) for n in range(5)]
    events_store.add_event("k", '"new"')
    for event in old:
        backdate(events_store, event.id, timedelta(days=2))
    cutoff = datetime.now(timezone.utc) - timedelta(days=1)
    assert events_store.delete_events(cutoff, 3) == 3
    assert events_store.delete_events(cutoff, 3) == 2
    assert events_store.delete_events(cutoff, 3) == 0
    assert (
        events_store.latest_events(["k"], datetime(2000, 1, 1, tzinfo=timezone.utc))["k"].payload
        == '"new"'
    )


def test_a_version_1_store_is_upgraded_with_the_events_table(events_store: SqlStore) -> None:
    """What a store made by 0.1 looks like: no defer_events, version 1."""
    with events_store.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE defer_events"))
        conn.execute(sa.update(schema_info).values(version=1))
    upgraded = SqlStore(events_store.url)
    try:
        upgraded.create_schema()
        assert upgraded.schema_version() == SCHEMA_VERSION == 3
        upgraded.add_event("after-upgrade", "1")
        assert set(
            upgraded.latest_events(["after-upgrade"], datetime(2000, 1, 1, tzinfo=timezone.utc))
        ) == {"after-upgrade"}
    finally:
        upgraded.close()


# -- the command line -----------------------------------------------------------------------------

APP_MODULE = """
from celery import Celery
import celery_defer

app = Celery("eventsapp", broker="defer-filesystem://localhost//", backend="file://{data}/results")
app.conf.update(
    broker_transport_options={{"data_folder_in": "{data}/broker",
                               "data_folder_out": "{data}/broker",
                               "control_folder": "{data}/control"}},
    defer_database_url="sqlite:///{data}/store.sqlite3",
)
"""

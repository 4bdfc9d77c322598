"""Pooled connections: no ping on the hot path, a ping (and a fresh connection) after idling.

A connection killed while it sat in the pool (what a database restart does to every one) is
replaced at its next checkout instead of failing the store call that draws it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from celery_defer.exceptions import StoreError
from celery_defer.store import NewDeferral, SqlStore
from celery_defer.store.sql import engine as store_engine

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[SqlStore]:
    store = SqlStore(postgres_url)
    store.create_schema()
    store.engine.dispose()  # one pooled connection from here on: the one each test kills
    yield store
    store.close()


def _backend_pid(store: SqlStore) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def test_a_connection_killed_while_idle_is_replaced_not_an_error(
    pg_store: SqlStore, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_engine, "IDLE_PING", 0.05)
    first = _backend_pid(pg_store)
    admin = sa.create_engine(postgres_url)
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    admin.dispose()
    time.sleep(0.1)  # longer than IDLE_PING: the next checkout pings, finds it dead
    assert pg_store.get_deferral("nobody") is None  # no StoreError
    assert _backend_pid(pg_store) != first


def test_after_an_idle_ping_single_statement_operations_still_work(
    pg_store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ping must leave no transaction open: the single-statement operations switch the
    connection to autocommit, which psycopg refuses inside a transaction."""
    monkeypatch.setattr(store_engine, "IDLE_PING", 0.01)
    _backend_pid(pg_store)
    for n in range(3):
        time.sleep(0.05)  # idle: the next checkout pings
        stored = pg_store.save_deferral(
            NewDeferral(f"t{n}", "proj.t", "run", "{}", "{}", "c", "{}", None)
        )
        time.sleep(0.05)
        assert pg_store.begin_resume(f"t{n}", stored.generation) is False  # not fired yet
        time.sleep(0.05)
        pg_store.finish(f"t{n}", stored.generation)
    assert pg_store.get_deferral("t2") is not None


def test_a_connection_in_steady_use_is_not_pinged(
    pg_store: SqlStore, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trade-off, shown: a connection back in the pool within IDLE_PING is used without a
    ping, so one killed in that window fails one call (the callers retry); the next works."""
    monkeypatch.setattr(store_engine, "IDLE_PING", 3600.0)
    first = _backend_pid(pg_store)
    admin = sa.create_engine(postgres_url)
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    admin.dispose()
    with pytest.raises(StoreError, match="get_deferral failed"):
        pg_store.get_deferral("nobody")
    assert pg_store.get_deferral("nobody") is None
    assert _backend_pid(pg_store) != first

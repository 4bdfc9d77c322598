"""Fixtures of the store contract tests: a clean, empty store per test, on every backend.

``store`` (with ``backend``, its helpers beneath the interface; see
tests/support/store_backends.py) runs a test on the in-memory store, SQLite and PostgreSQL.
``sql_store`` and ``store_url`` are for what only the SQL store has: a schema, tables, a URL.

SQLite gets a fresh file in ``tmp_path``. PostgreSQL gets a schema of its own (named after
this process, so that two test runs sharing one server never see each other's rows), dropped
and recreated before each test and put first on the ``search_path`` of the URL the store is
given: the store's unqualified table names land there, and a test starts with no tables at
all, which is also what the "no schema yet" tests need. Every store of ``backend`` gets a
``ManualClock``, which only moves when a test advances it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from celery_defer.store import SqlStore, Store
from tests.support.store_backends import Backend, ManualClock, MemoryBackend, SqlBackend

SQL_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.integration),
]
BACKENDS = [pytest.param("memory", id="memory"), *SQL_BACKENDS]

MakeStore = Callable[..., SqlStore]


@pytest.fixture(scope="session")
def postgres_scratch(postgres_url: str) -> Iterator[tuple[sa.Engine, str, str]]:
    """(admin engine, schema name, store URL whose search_path is that schema)."""
    schema = f"celery_defer_store_{os.getpid()}"
    url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
    admin = sa.create_engine(postgres_url, pool_pre_ping=True)  # lives across DB restarts
    yield admin, schema, url.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


def _empty_database(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database (no tables) of ``kind``."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'defer.db'}"
    admin, schema, url = request.getfixturevalue("postgres_scratch")
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    return str(url)


@pytest.fixture(params=SQL_BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database (no tables) on each SQL backend."""
    return _empty_database(request.param, request, tmp_path)


@pytest.fixture
def make_store() -> Iterator[MakeStore]:
    """Build extra SqlStores (e.g. one per thread); all are closed after the test."""
    stores: list[SqlStore] = []

    def make(url: str, **options: Any) -> SqlStore:
        store = SqlStore(url, **options)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def sql_store(store_url: str, make_store: MakeStore) -> SqlStore:
    """A SQL store with its schema, on an otherwise empty database."""
    store = make_store(store_url)
    store.create_schema()
    return store


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path, make_store: MakeStore) -> Backend:
    """An empty store (with its schema) on each backend, and its helpers."""
    if request.param == "memory":
        return MemoryBackend()
    clock = ManualClock()
    store = make_store(_empty_database(request.param, request, tmp_path), clock=clock)
    store.create_schema()
    return SqlBackend(request.param, store, make_store, clock)


@pytest.fixture
def store(backend: Backend) -> Store:
    """The store of ``backend``: what the contract tests talk to."""
    return backend.store

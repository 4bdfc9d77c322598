"""In-process apps for tests: a real worker (threads pool) and a real triggerer running in the
test's own process.

By default an app runs on kombu's memory transport, Celery's in-memory result cache and a
SQLite store, so the suite needs no server. Two environment variables move every in-process
app to real services instead (tox's store and broker factors set them; see tox.ini):

``CELERY_DEFER_TEST_STORE``
    ``sqlite`` (default), or ``postgres``: :func:`make_app` replaces the SQLite URL a test
    gives it by a fresh schema (with its tables) in the database of
    ``CELERY_DEFER_TEST_POSTGRES_URL``, put first on the URL's ``search_path`` as in
    tests/contract/conftest.py; the ``store_url`` fixture returns such a URL too. The schemas
    are dropped when the session ends.
``CELERY_DEFER_TEST_BROKER``
    ``memory`` (default), ``redis`` (``CELERY_DEFER_TEST_REDIS_URL``) or ``amqp``
    (``CELERY_DEFER_TEST_AMQP_URL``). Every app still gets queue names of its own, deleted
    when the session ends; results stay in memory.

tests/conftest.py checks these at start-up: a selected service that does not answer stops the
session with an error, never a skip, so such a run can never pass on the defaults.
"""

from __future__ import annotations

import contextlib
import gc
import os
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from celery import Celery, bootsteps
from celery.contrib.testing.worker import start_worker
from kombu import Connection
from sqlalchemy.engine import make_url

import celery_defer
from celery_defer.store import SqlStore, Store, store_for

STORE_ENV = "CELERY_DEFER_TEST_STORE"
BROKER_ENV = "CELERY_DEFER_TEST_BROKER"
STORES = ("sqlite", "postgres")
BROKERS = ("memory", "redis", "amqp")
#: The service URL variable each non-default choice needs (read by tests/conftest.py too).
SERVICE_ENV = {
    "postgres": "CELERY_DEFER_TEST_POSTGRES_URL",
    "redis": "CELERY_DEFER_TEST_REDIS_URL",
    "amqp": "CELERY_DEFER_TEST_AMQP_URL",
}

# What the session made, closed or removed by cleanup() at the end.
_apps: weakref.WeakSet[Celery] = weakref.WeakSet()
_schemas: list[str] = []
_broker_leftovers: list[tuple[str, str, list[str]]] = []  # (broker URL, app suffix, queues)


def selected_store() -> str:
    return os.environ.get(STORE_ENV, "").strip().lower() or "sqlite"


def selected_broker() -> str:
    return os.environ.get(BROKER_ENV, "").strip().lower() or "memory"


def _service(name: str) -> str:
    return os.environ[SERVICE_ENV[name]].strip()


def fresh_store_url(directory: Path) -> str:
    """The URL of a new, empty store: a SQLite file in ``directory``, or a PostgreSQL schema."""
    if selected_store() == "sqlite":
        return f"sqlite:///{directory / 'store.sqlite3'}"
    return _postgres_schema_url()


def _postgres_schema_url() -> str:
    base = _service("postgres")
    schema = f"celery_defer_inproc_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    finally:
        admin.dispose()
    _schemas.append(schema)
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    rendered = url.render_as_string(hide_password=False)
    # Create the tables now, as `celery defer init-db` would: on an empty PostgreSQL schema,
    # two threads creating them on first use at once can fail one with a StoreError (a
    # duplicate defer_schema row), which is a store bug of its own, not what these tests test.
    store = SqlStore(rendered)
    try:
        store.create_schema()
    finally:
        store.close()
    return rendered


class _WakeTheEventLoop(bootsteps.StartStopStep):  # type: ignore[misc]  # Celery: untyped
    """Wake the worker's event loop every 0.2 s.

    With RabbitMQ the loop otherwise sleeps up to 10 s when no timer is due (start_worker runs
    without heartbeats), so a stopping in-process worker took about 10 s to notice: as long
    as start_worker's default shutdown_timeout, and its teardown failed.
    """

    requires = ("celery.worker.components:Hub",)

    def start(self, worker: object) -> None:
        hub = getattr(worker, "hub", None)
        if hub is not None:
            hub.call_repeatedly(0.2, _nothing)


def _nothing() -> None:
    pass


def _broker(app: Celery, suffix: str) -> None:
    """Point ``app`` at the selected broker.

    Results stay in Celery's in-memory cache whatever the broker: the worker runs in this
    process, and some tests count that backend's lookups. The Redis and database result
    backends are tested with real processes (tests/integration).
    """
    broker = selected_broker()
    app.conf.result_backend = "cache+memory://"
    if broker == "memory":
        app.conf.update(
            broker_url="memory://",
            broker_transport_options={"polling_interval": 0.01},
        )
        return
    app.conf.update(broker_url=_service(broker), broker_connection_retry_on_startup=True)
    app.steps["worker"].add(_WakeTheEventLoop)
    queues = [app.conf.defer_trigger_queue, app.conf.task_default_queue]
    queues.append(f"{app.conf.task_default_queue}.special")  # tests/inprocess/test_task.py adds it
    _broker_leftovers.append((app.conf.broker_url, suffix, queues))


def make_app(store_url: str, **conf: object) -> Celery:
    """A Celery app isolated from every other test's app.

    The memory transport is global to the process, and a real broker is shared with other
    runs, so each app gets queue names of its own: a message left over by one test can never
    reach another test's worker. With ``CELERY_DEFER_TEST_STORE=postgres`` a SQLite
    ``store_url`` stands for "a store of this test's own" and becomes a fresh schema.
    """
    if selected_store() == "postgres" and store_url.startswith("sqlite"):
        store_url = _postgres_schema_url()
    suffix = uuid.uuid4().hex[:8]
    app = Celery(f"t{suffix}", set_as_current=False)
    app.conf.update(
        defer_database_url=store_url,
        defer_triggerer_heartbeat=0.2,
        defer_triggerer_health_timeout=2.0,
        defer_sweep_interval=0.5,
        defer_trigger_queue=f"celery_defer.triggers.{suffix}",
        task_default_queue=f"celery.{suffix}",
        result_extended=True,
    )
    _broker(app, suffix)
    app.conf.update(conf)
    celery_defer.install(app)
    # Close the store's pooled connections when the app goes: left to the garbage collector,
    # each one warns (ResourceWarning: sqlite3 on Python 3.13+, psycopg), which fails a test.
    weakref.finalize(app, store_for(app).close)
    _apps.add(app)
    return app


def cleanup() -> None:
    """Close the apps' stores; delete the queues and drop the schemas made on shared servers."""
    for app in list(_apps):
        store_for(app).close()
    gc.collect()  # apps already dropped close their connections now, not after the session
    for broker_url, suffix, queues in _broker_leftovers:
        with contextlib.suppress(Exception):
            _remove_from_broker(broker_url, suffix, queues)
    _broker_leftovers.clear()
    if _schemas:
        admin = sa.create_engine(_service("postgres"), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(sa.text("SET lock_timeout = '10s'"))
                for schema in _schemas:
                    conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        finally:
            admin.dispose()
        _schemas.clear()


def _remove_from_broker(broker_url: str, suffix: str, queues: list[str]) -> None:
    """Delete one app's queues, exchanges (RabbitMQ) and binding keys (Redis)."""
    if broker_url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(broker_url)
        try:
            # The queues, and kombu's _kombu.binding*.<exchange> sets: every name has the suffix.
            keys = list(client.scan_iter(match=f"*.{suffix}*", count=1000))
            if keys:
                client.delete(*keys)
        finally:
            client.close()
        return
    with Connection(broker_url, connect_timeout=3) as conn:
        channel = conn.default_channel
        for name in queues:  # each queue has a direct exchange of the same name
            with contextlib.suppress(Exception):
                channel.queue_delete(name)
            with contextlib.suppress(Exception):
                channel.exchange_delete(name)


@contextmanager
def running(
    app: Celery, concurrency: int = 1, capacity: int | None = None
) -> Iterator[celery_defer.Triggerer]:
    """A real worker (threads pool) and a real triggerer, both in this process."""
    with (
        start_worker(
            app,
            pool="threads",
            concurrency=concurrency,
            perform_ping_check=False,
            shutdown_timeout=10.0,
        ),
        celery_defer.Triggerer(app, capacity=capacity) as triggerer,
    ):
        yield triggerer


def sql_engine(store: Store) -> sa.Engine:
    """The engine of an in-process app's SQL store, for the tests that write raw rows."""
    assert isinstance(store, SqlStore), f"{store!r} is not a SQL store"
    return store.engine

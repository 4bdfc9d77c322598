"""External events: send_event, the store's event queries (SQLite and PostgreSQL), the schema
upgrade that added them, the sweep's retention, and ``celery -A proj defer send-event``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from inprocess import make_app
from sqlalchemy.engine import make_url

import celery_defer
from celery_defer.broker.event_hints import announce_event, event_hint_listener
from celery_defer.broker.listener import BrokerListener
from celery_defer.exceptions import InvalidEvent
from celery_defer.serialization import loads
from celery_defer.store import SqlStore, store_for
from celery_defer.store.sql.schema import SCHEMA_VERSION, external_events, schema_info
from celery_defer.sweep import sweep

pytestmark = pytest.mark.timeout(60)

MakeStore = Callable[[str], SqlStore]


# -- send_event -----------------------------------------------------------------------------------


def test_send_event_stores_the_payload_with_its_types(app: Celery) -> None:
    moment = datetime(2030, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    event_id = celery_defer.send_event(app, "invoice:9", {"at": moment, "lines": (1, 2)})
    stored = store_for(app).latest_events(["invoice:9"], datetime(2000, 1, 1, tzinfo=timezone.utc))[
        "invoice:9"
    ]
    assert stored.id == event_id
    assert loads(stored.payload) == {"at": moment, "lines": (1, 2)}


@pytest.mark.parametrize(
    ("key", "payload", "message"),
    [
        ("", None, "non-empty str"),
        (None, None, "non-empty str"),
        ("k" * 256, None, "at most 255"),
        ("k", {1, 2}, "event payload: object of type set"),
        ("k", "x" * 70_000, "over the limit of 65536"),
    ],
)
def test_a_bad_event_is_refused_and_nothing_is_stored(
    app: Celery, key: Any, payload: Any, message: str
) -> None:
    with pytest.raises(InvalidEvent, match=message):
        celery_defer.send_event(app, key, payload)
    assert store_for(app).latest_events(["k"], datetime(2000, 1, 1, tzinfo=timezone.utc)) == {}


def test_the_sweep_deletes_events_past_the_retention(store_url: str) -> None:
    app = make_app(store_url, defer_event_retention=60)
    for n in range(3):
        celery_defer.send_event(app, "old", n)
    celery_defer.send_event(app, "new", "kept")
    store = store_for(app)
    with store.engine.begin() as conn:  # the first three were sent two minutes ago
        conn.execute(
            sa.update(external_events)
            .where(external_events.c.key == "old")
            .values(created_at=datetime.now(timezone.utc) - timedelta(minutes=2))
        )
    report = sweep(app)
    assert report.events_deleted == 3
    assert set(store.latest_events(["old", "new"], datetime(2000, 1, 1, tzinfo=timezone.utc))) == {
        "new"
    }
    assert sweep(app).events_deleted == 0


@pytest.mark.integration
@pytest.mark.parametrize("broker", ["redis", "amqp"])
def test_every_triggerer_hears_the_hint_on_real_brokers(
    request: pytest.FixtureRequest, broker: str
) -> None:
    """Hints go to a fanout exchange: each triggerer's own queue gets every one."""
    url = request.getfixturevalue(f"{broker}_url")
    if broker == "redis":
        url = url.rstrip("/") + "/14"
    app = Celery("hints", broker=url, set_as_current=False)
    heard: dict[str, list[str]] = {"one": [], "two": []}
    both = threading.Barrier(3, timeout=10)

    def listener(name: str) -> BrokerListener:
        def on_hint(key: str) -> None:
            heard[name].append(key)
            both.wait()

        return event_hint_listener(app, f"triggerer-{name}", on_hint)

    listeners = [listener("one"), listener("two")]
    for each in listeners:
        each.start()
    try:
        assert all(each.ready.wait(10) for each in listeners)
        time.sleep(0.2)  # the bindings are declared before the consumers start
        announce_event(app, "invoice:1")
        both.wait()
        assert heard == {"one": ["invoice:1"], "two": ["invoice:1"]}
    finally:
        for each in listeners:
            each.stop()
        for each in listeners:
            each.join(10)
        app.close()


# -- the store's event queries, on SQLite and PostgreSQL ---------------------------------------


@pytest.fixture(scope="module")
def postgres_events_url(postgres_url: str) -> Iterator[tuple[sa.Engine, str, str]]:
    """(admin engine, schema, URL whose search_path is a schema of this module's own)."""
    schema = f"celery_defer_events_{os.getpid()}"
    url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
    admin = sa.create_engine(postgres_url)
    yield admin, schema, url.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def events_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'events.db'}"
    else:
        admin, schema, url = request.getfixturevalue("postgres_events_url")
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    store = SqlStore(url)
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
        assert upgraded.schema_version() == SCHEMA_VERSION == 2
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


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for folder in ("broker", "control", "results"):
        (tmp_path / folder).mkdir()
    (tmp_path / "eventsapp.py").write_text(APP_MODULE.format(data=tmp_path))
    return tmp_path


def celery(project: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "eventsapp", *argv],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_send_event_command_stores_the_event(project: Path) -> None:
    done = celery(
        project,
        "defer",
        "send-event",
        "approval:7",
        "--payload",
        '{"approved": true, "by": "alice"}',
    )
    assert done.returncode == 0, done.stderr
    assert "sent event 'approval:7'" in done.stdout
    store = SqlStore(f"sqlite:///{project / 'store.sqlite3'}")
    try:
        event = store.latest_events(["approval:7"], datetime(2000, 1, 1, tzinfo=timezone.utc))[
            "approval:7"
        ]
        assert loads(event.payload) == {"approved": True, "by": "alice"}
    finally:
        store.close()


def test_send_event_command_refuses_bad_json_naming_the_option(project: Path) -> None:
    done = celery(project, "defer", "send-event", "approval:7", "--payload", "{approved: yes")
    assert done.returncode != 0
    assert "--payload" in done.stderr
    assert "not valid JSON" in done.stderr
    assert not (project / "store.sqlite3").exists()

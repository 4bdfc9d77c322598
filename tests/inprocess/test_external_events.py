"""External events: send_event, the sweep's retention, and ``celery -A proj defer send-event``.

The store's event queries are in tests/contract/test_event_queries.py, the broker hints on
real brokers in tests/integration/test_event_hints_real.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery

import celery_defer
from celery_defer.exceptions import InvalidEvent
from celery_defer.serialization import loads
from celery_defer.store import SqlStore, store_for
from celery_defer.store.sql.schema import external_events
from celery_defer.sweep import sweep
from tests.support.inprocess import make_app, sql_engine

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
    with sql_engine(store).begin() as conn:  # the first three were sent two minutes ago
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

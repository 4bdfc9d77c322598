"""The write that makes a deferral durable is also what wakes the triggerer (DESIGN §5).

On PostgreSQL the saving statement NOTIFYs and each triggerer LISTENs; the in-memory store
calls its listeners. The triggerers here scan the store only every 30 s and no broker notice
is sent (the deferral is saved straight into the store), so a trigger claimed and fired
within a couple of seconds was woken by the save itself.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from celery_defer import Triggerer
from celery_defer.store import NewDeferral, SqlStore, Store, store_for
from celery_defer.testing import SuccessTrigger
from tests.support.inprocess import make_app

pytestmark = pytest.mark.timeout(60)

#: Far longer than the test waits: only a wake-up can make the triggerer claim in time.
SCAN = 30.0


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[str]:
    schema = f"celery_defer_wake_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
    yield url.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def _save(store: Store, task_id: str) -> None:
    classpath, kwargs = SuccessTrigger().serialize()
    assert kwargs == {}
    store.save_deferral(NewDeferral(task_id, "wake.task", "run", "{}", "{}", classpath, "{}", None))


def _fired_within(store: Store, task_id: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        info = store.get_deferral(task_id)
        if info is not None and info.state != "deferred":
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize(
    "kind", ["memory", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def test_a_saved_deferral_wakes_a_triggerer_without_any_broker_notice(
    kind: str, request: pytest.FixtureRequest
) -> None:
    url = "memory://" if kind == "memory" else request.getfixturevalue("postgres_schema_url")
    app = make_app(url, defer_triggerer_heartbeat=SCAN, defer_triggerer_health_timeout=2 * SCAN)
    store = store_for(app)
    assert store.notifies_new_triggers
    with Triggerer(app):
        time.sleep(0.3)  # its first claim (of nothing) is behind it
        for n in range(3):  # each save wakes it, not only the first
            task_id = f"wake-{n}"
            _save(store, task_id)
            assert _fired_within(store, task_id, 3.0), f"{task_id} was not claimed at once"


def test_sqlite_cannot_notify_so_the_task_side_sends_a_notice(tmp_path: Path) -> None:
    # Built directly: make_app() may turn a SQLite URL into PostgreSQL (CELERY_DEFER_TEST_STORE).
    store = SqlStore(f"sqlite:///{tmp_path / 'defer.db'}")
    try:
        assert store.notifies_new_triggers is False
        assert store.new_trigger_listener(lambda: None) is None
    finally:
        store.close()

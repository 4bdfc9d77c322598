"""Encryption at rest (``defer_encryption_keys``): sealed rows, resumes, rotation, failures.

These cases run a real worker and triggerer in this process and look at the raw rows of a
real store: SQLite, and PostgreSQL when ``CELERY_DEFER_TEST_POSTGRES_URL`` is set. A process
restarted with other keys is a new app on the same store and queues. The primitives (keyring,
seal, codec) are in tests/unit/test_encryption.py.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery
from celery.contrib.testing.worker import start_worker
from click.testing import CliRunner

import celery_defer
from celery_defer import DeferrableTask, TriggerFailed, send_event
from celery_defer.cli import rotate_keys
from celery_defer.encryption import (
    is_sealed,
    unseal,
)
from celery_defer.exceptions import EncryptionError
from celery_defer.serialization import dumps
from celery_defer.store import store_for
from celery_defer.store.sql.schema import deferrals, triggers
from celery_defer.testing import SuccessTrigger, wait_until_deferred
from celery_defer.triggers import ExternalEventTrigger, TriggerEvent
from tests.support import inprocess
from tests.support.inprocess import make_app
from tests.support.keys import KEY_A, KEY_B, KEY_C, SECRET, TRIGGER_SECRET, ring

pytestmark = pytest.mark.timeout(90)


# -- end to end -----------------------------------------------------------------------------


class VaultTrigger(ExternalEventTrigger):
    """Waits for an external event; its kwargs hold a secret it reports when it fires."""

    def __init__(self, key: str, token: str) -> None:
        super().__init__(key)
        self.token = token

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.VaultTrigger", {"key": self.key, "token": self.token})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        async for event in super().run():
            yield TriggerEvent({"token": self.token, "event": event.payload})


def build(store_url: str, keys: Any, like: Celery | None = None) -> Celery:
    """An app with these keys; ``like``: the same queues (the same project, restarted)."""
    queues = {}
    if like is not None:
        queues = {
            "task_default_queue": like.conf.task_default_queue,
            "defer_trigger_queue": like.conf.defer_trigger_queue,
        }
    app = make_app(store_url, defer_encryption_keys=keys, **queues)

    @app.task(base=DeferrableTask, bind=True, shared=False, name="enc.fetch")
    def fetch(
        self: DeferrableTask, key: str, event: Any = None, password: str | None = None
    ) -> Any:
        if event is None:
            self.defer(
                trigger=VaultTrigger(key, TRIGGER_SECRET), kwargs={"key": key, "password": SECRET}
            )
        return {"password": password, "trigger": event.payload}

    return app


@contextmanager
def worker(app: Celery) -> Iterator[None]:
    with start_worker(
        app, pool="threads", concurrency=2, perform_ping_check=False, shutdown_timeout=10.0
    ):
        yield


@contextmanager
def worker_and_triggerer(app: Celery) -> Iterator[celery_defer.Triggerer]:
    with worker(app), celery_defer.Triggerer(app) as triggerer:
        yield triggerer


def wait_running(triggerer: celery_defer.Triggerer, count: int) -> None:
    """Wait until ``triggerer`` runs ``count`` triggers (each phase starts from a known state)."""
    deadline = time.monotonic() + 10
    while triggerer.running_triggers != count:
        assert time.monotonic() < deadline, f"{triggerer.running_triggers} run, not {count}"
        time.sleep(0.02)


def wait_stored(app: Celery, result: Any) -> None:
    """Wait until the task's deferral is in the store (it turns DEFERRED just before)."""
    wait_until_deferred(result)
    deadline = time.monotonic() + 10
    while store_for(app).get_deferral(result.id) is None:
        assert time.monotonic() < deadline, f"the deferral of {result.id} was never stored"
        time.sleep(0.02)


def expected(key: str) -> dict[str, Any]:
    return {"password": SECRET, "trigger": {"token": TRIGGER_SECRET, "event": f"go-{key}"}}


def release(app: Celery, key: str) -> Any:
    send_event(app, key, f"go-{key}")


def raw_rows(app: Celery) -> list[str]:
    """Every stored kwargs and trigger kwargs text, read straight from the tables."""
    engine = sa.create_engine(app.conf.defer_database_url)
    try:
        with engine.connect() as conn:
            values = list(conn.execute(sa.select(deferrals.c.kwargs)).scalars())
            values += conn.execute(sa.select(triggers.c.kwargs)).scalars()
    finally:
        engine.dispose()
    return values


def rotate(app: Celery, *argv: str) -> Any:
    return CliRunner().invoke(rotate_keys, list(argv), obj=SimpleNamespace(app=app))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return inprocess.fresh_store_url(tmp_path)
    request.getfixturevalue("postgres_url")  # skips when PostgreSQL is not configured
    return inprocess._postgres_schema_url()


def test_secrets_are_sealed_at_rest_and_resume_in_clear(url: str) -> None:
    app = build(url, [KEY_A])
    fetch = app.tasks["enc.fetch"]
    with worker_and_triggerer(app):
        result = fetch.delay("k1")
        wait_stored(app, result)
        stored = raw_rows(app)
        assert len(stored) == 2
        assert all(is_sealed(text) for text in stored)
        assert not any(SECRET in text or TRIGGER_SECRET in text for text in stored)
        release(app, "k1")
        assert result.get(timeout=20) == expected("k1")
        # The resume message carries the sealed kwargs in its header, as stored: its body,
        # which the result backend copies (result_extended), holds no user value at all.
        assert SECRET not in repr(result.kwargs)
        assert result.kwargs == {}


def test_rows_in_clear_keep_working_and_can_be_sealed(url: str) -> None:
    clear_app = build(url, None)
    with worker(clear_app):
        early, late = (clear_app.tasks["enc.fetch"].delay(k) for k in ("c1", "c2"))
        wait_stored(clear_app, early)
        wait_stored(clear_app, late)
    assert any(SECRET in text for text in raw_rows(clear_app))
    app = build(url, [KEY_A], like=clear_app)
    with worker_and_triggerer(app):
        release(app, "c1")
        assert app.AsyncResult(early.id).get(timeout=20) == expected("c1")
        done = rotate(app, "--seal-clear")
        assert done.exit_code == 0, done.output
        # The waiting deferral, and the ended one kept for `defer show`: nothing stays in clear.
        assert "rewrote 2 deferral kwargs and 1 trigger kwargs" in done.output
        assert SECRET not in done.output
        assert not any(SECRET in text or TRIGGER_SECRET in text for text in raw_rows(app))
        release(app, "c2")
        assert app.AsyncResult(late.id).get(timeout=20) == expected("c2")


def test_key_rotation(url: str) -> None:
    under_a = build(url, [KEY_A])
    with worker_and_triggerer(under_a) as triggerer:
        results = {k: under_a.tasks["enc.fetch"].delay(k) for k in ("r1", "r2", "r3")}
        for result in results.values():
            wait_stored(under_a, result)
        wait_running(triggerer, 3)

    # The new key first, the old one kept: what was sealed under A still resumes.
    both = build(url, [KEY_B, KEY_A], like=under_a)
    with worker_and_triggerer(both):
        release(both, "r1")
        assert both.AsyncResult(results["r1"].id).get(timeout=20) == expected("r1")
        done = rotate(both, "--batch-size", "1")
        assert done.exit_code == 0, done.output
        # Two waiting, one ended (kept for `defer show`): nothing stays under the old key.
        assert "rewrote 3 deferral kwargs and 2 trigger kwargs" in done.output
        again = rotate(both)
        assert "rewrote 0 deferral kwargs and 0 trigger kwargs" in again.output
    stored = raw_rows(both)
    assert len(stored) == 5 and all(unseal(ring(KEY_B), text) for text in stored)  # 3 + 2

    # Only the new key: the rotated rows resume.
    only_b = build(url, [KEY_B], like=under_a)
    with worker_and_triggerer(only_b):
        release(only_b, "r2")
        assert only_b.AsyncResult(results["r2"].id).get(timeout=20) == expected("r2")

    # Only the old key: nothing opens, and the task fails saying so.
    only_a = build(url, [KEY_A], like=under_a)
    with (
        worker_and_triggerer(only_a),
        pytest.raises(TriggerFailed, match="encrypted and none of the 1 key"),
    ):
        only_a.AsyncResult(results["r3"].id).get(timeout=20)


def test_a_value_no_key_opens_fails_only_its_task(url: str) -> None:
    app = build(url, [KEY_A])
    fetch = app.tasks["enc.fetch"]
    stranger = ring(KEY_C)
    with worker(app):
        bad_kwargs, bad_trigger, good = (fetch.delay(k) for k in ("u1", "u2", "u3"))
        for result in (bad_kwargs, bad_trigger, good):
            wait_stored(app, result)
        # Sealed by a key this project does not have (a removed key, another project's).
        engine = sa.create_engine(app.conf.defer_database_url)
        try:
            with engine.begin() as conn:
                conn.execute(
                    sa.update(deferrals)
                    .where(deferrals.c.task_id == bad_kwargs.id)
                    .values(kwargs=stranger.seal(dumps({"key": "u1", "password": SECRET})))
                )
                trigger_id = conn.execute(
                    sa.select(deferrals.c.trigger_id).where(deferrals.c.task_id == bad_trigger.id)
                ).scalar_one()
                conn.execute(
                    sa.update(triggers)
                    .where(triggers.c.id == trigger_id)
                    .values(kwargs=stranger.seal(dumps({"key": "u2", "token": "t"})))
                )
        finally:
            engine.dispose()
        with celery_defer.Triggerer(app):
            with pytest.raises(TriggerFailed, match=r"could not be rebuilt.*encrypted"):
                bad_trigger.get(timeout=20)
            release(app, "u1")
            with pytest.raises(EncryptionError, match="kwargs are encrypted and none of"):
                bad_kwargs.get(timeout=20)
            release(app, "u3")
            assert good.get(timeout=20) == expected("u3")
            # Still running: a task deferring now resumes too.
            later = fetch.delay("u4")
            wait_stored(app, later)
            release(app, "u4")
            assert later.get(timeout=20) == expected("u4")


def test_eager_mode_runs_with_keys_configured(tmp_path: Path) -> None:
    app = Celery("eager", set_as_current=False)
    app.conf.update(
        task_always_eager=True,
        defer_database_url=f"sqlite:///{tmp_path / 's.db'}",
        defer_encryption_keys=[KEY_A],
    )

    @app.task(base=DeferrableTask, bind=True, shared=False, name="enc.eager")
    def eager(self: DeferrableTask, event: Any = None, password: str | None = None) -> Any:
        if event is None:
            self.defer(trigger=SuccessTrigger(), kwargs={"password": SECRET})
        return password

    assert eager.delay().get(timeout=5) == SECRET

"""Infrastructure failing under a deferral: the store at defer time, the broker at resume.

Real failures, not mocks: the app's store is a real store on a URL where nothing listens, or
a SQLite file whose directory does not exist yet; a triggerer's broker connection for
publishing is refused. Never a silent loss: the task retries with an error naming the store
and then fails, or it is stored and resumed once as soon as the failing piece is back.

The matrix's one worker serves these tests too: Celery's in-process test workers share global
state (``celery.worker.state.should_terminate``), so a second one stopping would stop it.
Hence the store is swapped under the shared app rather than given to an app of its own.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import celery_defer.store
import celery_defer.worker.outage
from celery_defer import Triggerer
from celery_defer.exceptions import StoreError
from celery_defer.store import SqlStore
from celery_defer.sweep import sweep
from tests.inprocess.bad_input.kit import RESUMED, Live, assert_untouched
from tests.support.inprocess import make_app
from tests.support.waiting import eventually, wait_for_state

DEAD_STORE = "postgresql+psycopg://postgres@127.0.0.1:1/test"  # nothing listens on port 1
DEAD_BROKER = "amqp://guest:guest@127.0.0.1:1//"


@contextmanager
def store_at(live: Live, url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The shared app's worker (and triggerers) use a real store at ``url`` meanwhile."""
    store = SqlStore(url)
    monkeypatch.setitem(celery_defer.store._stores, live.app, (os.getpid(), store))
    try:
        yield
    finally:
        monkeypatch.undo()
        store.close()


def test_store_unreachable_at_defer_time_retries_then_fails_naming_the_store(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DEFERRED state written before the save must not stay behind: the task shows
    RETRY with the store's error while it is re-sent, then FAILURE, never a silent loss."""
    monkeypatch.setattr(
        celery_defer.worker.outage, "MAX_STORE_RESENDS", 1
    )  # one re-send, then fail
    with store_at(live, DEAD_STORE, monkeypatch):
        result = live.defer("good")
        wait_for_state(result, "RETRY", timeout=10.0)
        assert isinstance(result.info, StoreError)
        assert f"on the deferral store {DEAD_STORE}: " in str(result.info)
        assert live.plain.delay(1).get(timeout=10, interval=0.02) == 2  # the worker is fine
        with pytest.raises(StoreError, match=r"could not be stored after 1 attempts") as caught:
            result.get(timeout=15, interval=0.02)
        assert f"on the deferral store {DEAD_STORE}: " in str(caught.value)
        assert "Connection refused" in str(caught.value)
        assert result.state == "FAILURE"
    assert result.id not in RESUMED
    assert live.store.get_deferral(result.id) is None


def test_store_unreachable_at_defer_time_then_back_is_not_lost(
    live: Live, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The re-sent execution stores the deferral once the store is reachable again."""
    missing = tmp_path / "not-yet"
    url = f"sqlite:///{missing / 'store.sqlite3'}"
    with store_at(live, url, monkeypatch):
        result = live.defer("good", tag="came back")
        wait_for_state(result, "RETRY", timeout=10.0)
        assert f"on the deferral store {url}: " in str(result.info)
        assert "unable to open database file" in str(result.info)
        missing.mkdir()  # the store is back before the re-send (2 s later)
        with Triggerer(live.app) as triggerer:
            assert result.get(timeout=15, interval=0.02) == {"tag": "came back", "payload": True}
            assert_untouched(live, triggerer)
        assert celery_defer.store.store_for(live.app).get_deferral(result.id) is None
    assert RESUMED.count(result.id) == 1


def _state(live: Live, result: Any) -> str | None:
    deferral = live.store.get_deferral(result.id)
    return None if deferral is None else deferral.state


def test_broker_unreachable_at_resume_time_is_published_later_and_resumes_once(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    """A triggerer whose broker refuses connections keeps the resumes ``firing``; the sweep
    of a healthy process publishes them later, and each task resumes exactly once."""
    conf = live.app.conf
    cut_off = make_app(
        conf.defer_database_url,
        defer_database_url=conf.defer_database_url,
        defer_trigger_queue=conf.defer_trigger_queue,  # it hears the same notices
        task_default_queue=conf.task_default_queue,
        broker_write_url=DEAD_BROKER,  # it cannot publish; it reads notices as before
    )
    resume_log = caplog.at_level(logging.WARNING, logger="celery_defer.broker.resumes")
    with resume_log, Triggerer(cut_off):
        late = live.defer("good", tag="late")
        also = live.defer("good", tag="also late")
        for result in (late, also):

            def fired(r: Any = result) -> bool:
                return _state(live, r) == "firing"

            eventually(fired, "the trigger fired")
        eventually(lambda: "broker unreachable" in caplog.text, "the publish failed")
        time.sleep(0.5)  # a few more attempts of the triggerer's own
        assert (late.state, also.state) == ("DEFERRED", "DEFERRED")  # waiting, not lost
    later = datetime.now(timezone.utc) + timedelta(seconds=conf.defer_triggerer_health_timeout)
    assert sweep(live.app, now=later).republished == 2
    assert late.get(timeout=10, interval=0.02) == {"tag": "late", "payload": True}
    assert also.get(timeout=10, interval=0.02) == {"tag": "also late", "payload": True}
    assert sweep(live.app, now=later).republished == 0
    with live.triggerer() as triggerer:
        assert_untouched(live, triggerer)
    time.sleep(0.3)  # a duplicate would run by now
    assert (RESUMED.count(late.id), RESUMED.count(also.id)) == (1, 1)

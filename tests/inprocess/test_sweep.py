"""The beat sweep: timeouts are covered in test_task.py; here the outbox and the beat entry."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

import celery_defer
from celery_defer import DeferrableTask
from celery_defer.store import FIRING, DeferralInfo, TriggerOutcome, store_for
from celery_defer.sweep import SWEEP_TASK_NAME, sweep
from celery_defer.testing import SuccessTrigger
from celery_defer.wire import Outcome
from tests.support.inprocess import make_app, sql_engine


@pytest.fixture
def worker_app(store_url: str) -> Iterator[Celery]:
    app = make_app(store_url)

    @app.task(base=DeferrableTask, bind=True, shared=False, name="t.stranded")
    def stranded(self: DeferrableTask, event: Any = None) -> Any:
        if event is None:
            self.defer(trigger=SuccessTrigger())
        return event.payload

    with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False):
        yield app


def deferred_task(app: Celery) -> tuple[Any, DeferralInfo]:
    """Start the stranded task (no triggerer runs here) and wait until it is stored."""
    result = app.tasks["t.stranded"].delay()
    deadline = time.monotonic() + 5
    while (deferral := store_for(app).get_deferral(result.id)) is None:
        assert time.monotonic() < deadline, "the task never deferred"
        time.sleep(0.01)
    assert deferral.trigger_id is not None
    return result, deferral


def test_a_resume_stored_but_never_published_is_sent_by_the_sweep(worker_app: Celery) -> None:
    """The triggerer died between storing the event and publishing: nothing is lost."""
    store = store_for(worker_app)
    result, deferral = deferred_task(worker_app)
    assert deferral.trigger_id is not None
    # What a triggerer does before it publishes (and then it is killed):
    orders = store.fire(
        [TriggerOutcome(deferral.trigger_id, Outcome.event({"late": True}).dumps())]
    )
    assert [o.task_id for o in orders] == [result.id]
    info = store.get_deferral(result.id)
    assert info is not None and info.state == FIRING

    assert sweep(worker_app).republished == 0  # too recent: its publisher may be alive
    later = datetime.now(timezone.utc) + timedelta(minutes=5)
    assert sweep(worker_app, now=later).republished == 1
    assert result.get(timeout=10) == {"late": True}
    assert store.get_deferral(result.id) is None


def test_unused_triggers_are_deleted(worker_app: Celery) -> None:
    store = store_for(worker_app)
    _, deferral = deferred_task(worker_app)
    assert deferral.trigger_id is not None
    assert sweep(worker_app).triggers_deleted == 0  # still needed
    store.fire([TriggerOutcome(deferral.trigger_id, Outcome.event(1).dumps())])  # deletes it
    with sql_engine(store).begin() as conn:  # plus an orphan, as a crashed writer could leave
        conn.exec_driver_sql(
            "INSERT INTO defer_triggers (classpath, kwargs, created_at) "
            "VALUES ('celery_defer.testing.SuccessTrigger', '{}', '2026-01-01 00:00:00')"
        )
    assert sweep(worker_app).triggers_deleted == 1


def test_triggers_of_a_triggerer_gone_for_good_are_handed_back(worker_app: Celery) -> None:
    store = store_for(worker_app)
    _, deferral = deferred_task(worker_app)
    store.register_triggerer("gone", "host", 1, 10)
    assert [c.id for c in store.claim_triggers("gone", 10, 30.0)] == [deferral.trigger_id]
    assert sweep(worker_app).triggers_released == 0  # registered: its own
    with sql_engine(store).begin() as conn:  # reaped by a peer after that claim committed
        conn.exec_driver_sql("DELETE FROM defer_triggerers WHERE id = 'gone'")
    assert sweep(worker_app).triggers_released == 1
    assert [c.id for c in store.claim_triggers("next", 10, 30.0)] == [deferral.trigger_id]


def test_install_adds_the_beat_entry_after_configuration(store_url: str) -> None:
    app = Celery("beat_late", set_as_current=False)
    celery_defer.install(app)
    app.config_from_object({"defer_sweep_interval": 7.5, "defer_database_url": store_url})
    entry = app.conf.beat_schedule[SWEEP_TASK_NAME]
    assert entry["task"] == SWEEP_TASK_NAME
    assert entry["schedule"] == 7.5
    assert entry["options"]["expires"] == 7.5
    assert SWEEP_TASK_NAME in app.tasks


def test_install_on_a_configured_app(store_url: str) -> None:
    app = make_app(store_url)  # make_app calls install() after configuring
    entry = app.conf.beat_schedule[SWEEP_TASK_NAME]
    assert entry["schedule"] == 0.5
    report = app.tasks[SWEEP_TASK_NAME].apply().get()
    assert json.loads(json.dumps(report)) == {
        "timed_out": 0,
        "republished": 0,
        "triggers_deleted": 0,
        "events_deleted": 0,
        "triggers_released": 0,
        "ended_deleted": 0,
    }

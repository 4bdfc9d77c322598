"""The triggerer sweeps itself: a deferral times out on time with no beat and no sweep task.

A real worker and a real triggerer in this process (SQLite store, memory broker); nobody
sends ``celery_defer.sweep``.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from celery_defer import DeferrableTask, TriggerTimeout
from celery_defer.triggers import TimeDeltaTrigger
from tests.support.inprocess import make_app, running

pytestmark = pytest.mark.timeout(60)


def test_a_timeout_fails_the_task_within_seconds_without_beat(store_url: str) -> None:
    # The beat interval is far longer than the test: only the triggerer's own sweep is in time.
    app = make_app(store_url, defer_sweep_interval=3600.0)

    @app.task(base=DeferrableTask, bind=True, name=f"{app.main}.slow")
    def slow(self: DeferrableTask) -> None:  # never resumed: its timeout fails it
        self.defer(TimeDeltaTrigger(timedelta(hours=1)), timeout=1.0)

    with running(app):
        began = time.monotonic()
        result = slow.delay()
        with pytest.raises(TriggerTimeout):
            result.get(timeout=15)
        took = time.monotonic() - began
    assert took < 1.0 + 3.0  # the timeout, one scan (1 s), a resume through the worker

"""Timers are data: a timer beyond ``defer_timer_horizon`` stays a row until its moment nears.

A real worker and a real triggerer in this process (SQLite store, memory broker); the
horizon is short so the test sees a timer left unclaimed, then claimed by the periodic scan
and fired on time.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from celery_defer import DeferrableTask
from celery_defer.exceptions import ConfigurationError
from celery_defer.settings import Settings
from celery_defer.store import store_for
from celery_defer.triggers import DateTimeTrigger
from tests.support.inprocess import make_app, running
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)

HORIZON = 1.0  # the scan runs every 0.2 s (make_app's heartbeat): five scans inside it


def test_a_far_timer_stays_a_row_until_the_horizon_then_fires_on_time(
    store_url: str,
) -> None:
    app = make_app(store_url, defer_timer_horizon=HORIZON)

    @app.task(base=DeferrableTask, bind=True, name=f"{app.main}.nap")
    def nap(self: DeferrableTask, moment: str, event: Any = None) -> float:
        if event is None:
            self.defer(DateTimeTrigger(datetime.fromisoformat(moment)), kwargs={"moment": moment})
        late: float = (datetime.now(timezone.utc) - event.payload).total_seconds()
        return late

    store = store_for(app)
    with running(app):
        moment = datetime.now(timezone.utc) + timedelta(seconds=3)
        result = nap.delay(moment.isoformat())
        eventually(lambda: store.get_deferral(result.id) is not None, what="the deferral")
        info = store.get_deferral(result.id)
        assert info is not None and info.trigger_id is not None
        time.sleep(0.6)  # several scans: still far, so still nobody's
        [summary] = store.list_deferrals()
        assert summary.triggerer_id is None
        late = result.get(timeout=15)
    assert 0 <= late < 0.5  # claimed by a scan before its moment, fired at it


def test_a_horizon_shorter_than_two_scans_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="defer_timer_horizon"):
        Settings.from_app(make_app("memory://", defer_timer_horizon=0.3))  # scans 0.2 s apart

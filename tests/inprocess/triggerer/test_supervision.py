"""A triggerer never lives on with a dead loop inside it (#15, finding 1).

An unexpected error in one of its loops (here: the store call the loop makes raises
something that is not a StoreError, once) is logged with its traceback, and the triggerer
stops on its own, handing its triggers back; ``run()`` raises, so `celery triggerer` exits
non-zero and its supervisor restarts it. Before, the claim loop died silently and the
triggerer heart-beat on without ever claiming again.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from celery_defer import Triggerer
from celery_defer.exceptions import CeleryDeferError
from celery_defer.store import store_for
from tests.support.inprocess import make_app
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(60)

# loop name -> the store method it calls on every round
LOOPS = {"claim": "claim_triggers", "heartbeat": "heartbeat"}


@pytest.mark.parametrize("loop", list(LOOPS))
def test_a_loop_that_fails_stops_the_triggerer_loudly(
    loop: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app("memory://", defer_triggerer_heartbeat=0.2, defer_triggerer_health_timeout=2.0)
    store = store_for(app)
    method = LOOPS[loop]
    real = getattr(store, method)
    calls = {"n": 0}

    def fails_once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the first round passes: the triggerer is running by then
            raise ZeroDivisionError(f"injected into {method}")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, method, fails_once)
    triggerer = Triggerer(app)
    raised: list[BaseException] = []

    def run() -> None:
        try:
            triggerer.run()
        except BaseException as exc:
            raised.append(exc)

    with caplog.at_level(logging.ERROR, logger="celery_defer.triggerer"):
        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        wait_until(lambda: not thread.is_alive(), timeout=20, what="the triggerer to stop")
    [error] = raised
    assert isinstance(error, CeleryDeferError)
    assert f"injected into {method}" in str(error)
    [record] = [r for r in caplog.records if f"its {loop} loop failed" in r.getMessage()]
    assert record.exc_info is not None and isinstance(record.exc_info[1], ZeroDivisionError)
    assert store.stats().triggerers == []  # it unregistered: its triggers are free

"""The blocked-loop watchdog: it names the blocking trigger while the loop is still blocked."""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_defer import DeferrableTask, Triggerer
from celery_defer.store import store_for
from celery_defer.testing import SuccessTrigger
from celery_defer.triggers import BaseTrigger, TriggerEvent
from tests.support.blocking import HelperBlocker, Records
from tests.support.inprocess import make_app

pytestmark = pytest.mark.timeout(60)


class Blocker(BaseTrigger):
    """Blocks the event loop with time.sleep: the mistake the watchdog exists for."""

    started = ended = 0.0

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.Blocker", {"seconds": self.seconds})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        Blocker.started = time.time()
        time.sleep(self.seconds)
        Blocker.ended = time.time()
        yield TriggerEvent("unblocked")


@pytest.fixture
def app(store_url: str) -> Iterator[Celery]:
    app = make_app(store_url)

    @app.task(base=DeferrableTask, bind=True, shared=False, name="t.wait")
    def wait(self: DeferrableTask, block: float = 0.0, event: Any = None) -> Any:
        if event is None:
            trigger = Blocker(block) if block else SuccessTrigger()
            self.defer(trigger=trigger, kwargs={"block": block})
        return event.payload

    @app.task(base=DeferrableTask, bind=True, shared=False, name="t.helper_blocks")
    def helper_blocks(self: DeferrableTask, event: Any = None) -> Any:
        if event is None:
            self.defer(trigger=HelperBlocker(1.0))
        return event.payload

    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False):
        yield app


def test_a_blocking_trigger_is_named_while_it_blocks(app: Celery, records: Records) -> None:
    wait = app.tasks["t.wait"]
    with Triggerer(app, metrics_port=0) as triggerer:
        assert wait.delay().get(timeout=10) is True  # the loop runs
        blocked = wait.delay(1.5)
        assert blocked.get(timeout=15) == "unblocked"
        # Other triggers keep firing once the stall is over.
        started = time.monotonic()
        assert [r.get(timeout=10) for r in [wait.delay() for _ in range(5)]] == [True] * 5
        assert time.monotonic() - started < 5
        assert triggerer.metrics_address is not None
        port = triggerer.metrics_address[1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            scraped = response.read().decode()

    warnings = [r for r in records.records if r.levelno == logging.WARNING]
    during = [r for r in warnings if "so far" in r.getMessage()]
    after = [r for r in warnings if "in total" in r.getMessage()]
    assert len(during) == 1, [r.getMessage() for r in warnings]
    assert len(after) == 1, [r.getMessage() for r in warnings]
    stall, end = during[0], after[0]
    # Reported during the stall, soon after the threshold (0.5 s by default).
    assert Blocker.started + 0.5 <= stall.created < Blocker.ended
    assert stall.created - Blocker.started < 1.0
    assert f"trigger {__name__}.Blocker (id " in stall.getMessage()
    assert "test_watchdog.py:" in stall.getMessage() and "in run" in stall.getMessage()
    assert stall.trigger == f"{__name__}.Blocker"  # type: ignore[attr-defined]
    assert isinstance(stall.trigger_id, int)  # type: ignore[attr-defined]
    # The final line comes after the stall and says how long it lasted.
    assert end.created >= Blocker.ended
    assert 1.2 <= end.blocked_seconds <= 2.5  # type: ignore[attr-defined]
    assert end.trigger_id == stall.trigger_id  # type: ignore[attr-defined]
    assert "celery_defer_triggerer_loop_blocked_total 1\n" in scraped


def test_the_trigger_is_named_from_a_helper_deep_down(app: Celery, records: Records) -> None:
    """The runner marks the trigger's task; the watchdog names that trigger and its stored
    id from whatever blocks under it, renaming nothing and reading no frame variable."""
    helper_blocks = app.tasks["t.helper_blocks"]
    store = store_for(app)
    with Triggerer(app):
        blocked = helper_blocks.delay()
        deadline = time.monotonic() + 10
        while (info := store.get_deferral(blocked.id)) is None or info.trigger_id is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        trigger_id = info.trigger_id
        assert blocked.get(timeout=15) == "unblocked"

    (stall,) = [r for r in records.records if "so far" in r.getMessage()]
    assert stall.trigger == f"{HelperBlocker.__module__}.HelperBlocker"  # type: ignore[attr-defined]
    assert stall.trigger_id == trigger_id  # type: ignore[attr-defined]
    assert (
        f"trigger {HelperBlocker.__module__}.HelperBlocker (id {trigger_id})" in stall.getMessage()
    )
    assert "in _block_here" in stall.getMessage()
    assert HelperBlocker.started <= stall.created < HelperBlocker.ended

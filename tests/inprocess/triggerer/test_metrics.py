"""The triggerer's Prometheus endpoint, scraped over HTTP while triggers fire, fail and wait."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_defer import DeferrableTask, Triggerer, TriggerFailed, TriggerTimeout
from celery_defer.exceptions import ConfigurationError
from celery_defer.testing import FailureTrigger, SuccessTrigger
from celery_defer.triggers import BaseTrigger, DateTimeTrigger
from tests.support.inprocess import make_app
from tests.support.waiting import eventually

pytestmark = pytest.mark.timeout(60)

LATENESS = "celery_defer_trigger_fire_lateness_seconds"
TIMED_OUT = "celery_defer_deferrals_timed_out_total"


@pytest.fixture
def app(store_url: str) -> Iterator[Celery]:
    app = make_app(store_url)

    @app.task(base=DeferrableTask, bind=True, shared=False, name="t.wait")
    def wait(self: DeferrableTask, kind: str, seconds: float = 0.0, event: Any = None) -> Any:
        if event is None:
            makers: dict[str, Callable[[], BaseTrigger]] = {
                "success": SuccessTrigger,
                "failure": FailureTrigger,
                "timer": lambda: DateTimeTrigger(
                    datetime.now(timezone.utc) + timedelta(seconds=seconds)
                ),
            }
            trigger = makers[kind]()
            self.defer(
                trigger=trigger,
                kwargs={"kind": kind, "seconds": seconds},
                timeout=0.3 if kind == "timer" and seconds > 60 else None,
            )
        return event.payload

    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False):
        yield app


def scrape(triggerer: Triggerer) -> dict[str, float]:
    assert triggerer.metrics_address is not None
    url = f"http://127.0.0.1:{triggerer.metrics_address[1]}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_change_as_triggers_fire_fail_and_wait(app: Celery) -> None:
    wait = app.tasks["t.wait"]
    with Triggerer(app, capacity=7, metrics_port=0) as triggerer:
        before = scrape(triggerer)
        assert before["celery_defer_triggerer_capacity"] == 7
        assert before["celery_defer_triggerer_running_triggers"] == 0
        assert before["celery_defer_triggerer_capacity_left"] == 7
        assert before["celery_defer_triggers_fired_total"] == 0
        assert before["celery_defer_triggers_failed_total"] == 0
        assert before["celery_defer_triggerer_loop_blocked_total"] == 0
        assert before[f'{LATENESS}_bucket{{le="+Inf"}}'] == 0

        assert wait.delay("success").get(timeout=10) is True
        with pytest.raises(TriggerFailed):
            wait.delay("failure").get(timeout=10)
        wait.delay("timer", 0.2).get(timeout=10)
        wait.delay("timer", 30.0)  # within defer_timer_horizon: claimed, and running
        eventually(
            lambda: scrape(triggerer)["celery_defer_triggerer_running_triggers"] == 1,
            "one running trigger",
            timeout=5.0,
        )

        after = scrape(triggerer)
        assert after["celery_defer_triggers_fired_total"] == 2
        assert after["celery_defer_triggers_failed_total"] == 1
        assert after["celery_defer_triggerer_capacity_left"] == 6
        # Only the timer that fired is in the lateness histogram: fired on time, give or take.
        assert after[f"{LATENESS}_count"] == 1
        assert after[f'{LATENESS}_bucket{{le="+Inf"}}'] == 1
        assert 0 <= after[f"{LATENESS}_sum"] < 1.0
        assert after[f'{LATENESS}_bucket{{le="1.0"}}'] == 1

        assert triggerer.metrics_address is not None
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(
                f"http://127.0.0.1:{triggerer.metrics_address[1]}/other", timeout=5
            )
        missing.value.close()
        assert missing.value.code == 404


def test_the_triggerer_counts_the_timeouts_it_swept(app: Celery) -> None:
    """Every triggerer sweeps (timeouts within a second), so the count it serves is its own."""
    wait = app.tasks["t.wait"]
    with Triggerer(app, capacity=2, metrics_port=0) as triggerer:
        assert scrape(triggerer)[TIMED_OUT] == 0
        with pytest.raises(TriggerTimeout):
            wait.delay("timer", 3600.0).get(timeout=10)  # its timeout: 0.3 s
        assert scrape(triggerer)[TIMED_OUT] == 1


@pytest.mark.parametrize("port", [-1, 70000, "9100", True])
def test_a_bad_metrics_port_is_refused(store_url: str, port: Any) -> None:
    with pytest.raises(ConfigurationError, match="metrics_port must be a port number"):
        Triggerer(make_app(store_url), metrics_port=port)

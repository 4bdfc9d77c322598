"""How to test your own deferrable task: one that waits a day, tested in milliseconds.

Run it with ``python -m pytest examples/test_user_example.py``. In your project, the
``pytest_plugins`` line goes in your top-level ``conftest.py`` and the task lives in your
own tasks module; everything else is what your test would look like.

* ``celery_app``, ``celery_worker`` and ``celery_config`` are Celery's classic fixtures
  (``celery.contrib.pytest``): an app on the in-memory broker and a worker in a thread.
* ``celery_defer_triggerer`` (``celery_defer.contrib.pytest``) runs a real triggerer in the
  test's process, next to that worker, on a SQLite store in a temporary directory.
* ``skip_time()`` makes timer triggers fire as soon as they start waiting; ``fast_forward()``
  moves their clock by a given amount, for tests about *what happens before* the day is over.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery, shared_task

from celery_defer import DEFERRED, DeferrableTask, TriggerTimeout
from celery_defer.testing import fast_forward, skip_time, wait_until_deferred
from celery_defer.triggers import TimeDeltaTrigger

pytest_plugins = ("celery.contrib.pytest", "celery_defer.contrib.pytest")


# -- the code under test (normally in your project) -----------------------------------------


@shared_task(base=DeferrableTask, bind=True, name="shop.remind_tomorrow")
def remind_tomorrow(self: DeferrableTask, name: str, event: Any = None) -> str:
    """Send a reminder one day after the order: the worker is free meanwhile."""
    if event is None:
        self.defer(
            trigger=TimeDeltaTrigger(timedelta(days=1)),
            kwargs={"name": name},
            timeout=timedelta(days=2),
        )
    return f"good morning, {name}"


@shared_task(base=DeferrableTask, bind=True, name="shop.wait_for_payment")
def wait_for_payment(self: DeferrableTask, order: int, event: Any = None) -> str:
    """Check again in a week, but give up on the order after three days."""
    if event is None:
        self.defer(
            trigger=TimeDeltaTrigger(timedelta(weeks=1)),
            kwargs={"order": order},
            timeout=timedelta(days=3),
        )
    return "paid"


# -- the tests ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def celery_config() -> dict[str, Any]:
    return {
        "broker_url": "memory://",
        "result_backend": "cache+memory://",
        # The in-memory broker polls once a second by default: too slow for a test.
        "broker_transport_options": {"polling_interval": 0.01},
    }


@pytest.mark.timeout(30)
def test_the_reminder_comes_a_day_later(
    celery_app: Celery, celery_worker: Any, celery_defer_triggerer: Any
) -> None:
    started = time.monotonic()
    with skip_time():
        result = remind_tomorrow.delay("Ada")
        assert result.get(timeout=10) == "good morning, Ada"
    assert time.monotonic() - started < 5  # not a day


@pytest.mark.timeout(30)
def test_no_reminder_before_the_day_is_over(
    celery_app: Celery, celery_worker: Any, celery_defer_triggerer: Any
) -> None:
    result = remind_tomorrow.delay("Grace")
    wait_until_deferred(result)  # the task ran and handed its wait to the triggerer
    fast_forward(celery_app, timedelta(hours=23))
    time.sleep(0.3)
    assert result.state == DEFERRED
    fast_forward(celery_app, timedelta(hours=1))
    assert result.get(timeout=10) == "good morning, Grace"


@pytest.mark.timeout(30)
def test_an_unpaid_order_times_out_after_three_days(
    celery_app: Celery, celery_worker: Any, celery_defer_triggerer: Any
) -> None:
    result = wait_for_payment.delay(42)
    wait_until_deferred(result)
    # With the app, fast_forward moves deferral timeouts too, as the beat sweep would see them.
    fast_forward(celery_app, timedelta(days=3, minutes=1))
    with pytest.raises(TriggerTimeout):
        result.get(timeout=10)

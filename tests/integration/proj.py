"""The Celery app the real-service integration tests run as real processes.

``celery -A proj worker|triggerer|beat`` imports this module with the
environment set by ``test_real_services.py``; the test process builds its own
client app from the same environment with :func:`create_app`. Everything that
differs per run (broker, result backend, store, queue names) comes from
``CDIT_*`` variables, so runs never share queues or tables.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import Any

import celery
from celery import Celery

import celery_defer
from celery_defer import DeferrableTask, TaskDeferred
from celery_defer.testing import FailureTrigger, SuccessTrigger
from celery_defer.triggers import BaseTrigger, TimeDeltaTrigger, TriggerEvent

#: Environment variables the test sets for every process.
BROKER_URL = "CDIT_BROKER_URL"
RESULT_BACKEND = "CDIT_RESULT_BACKEND"
DATABASE_URL = "CDIT_DATABASE_URL"
QUEUE = "CDIT_QUEUE"
TRIGGER_QUEUE = "CDIT_TRIGGER_QUEUE"
MARKER_REDIS_URL = "CDIT_MARKER_REDIS_URL"  # where tasks and triggers leave markers


def _redis(env: Mapping[str, str] | None = None) -> Any:
    import redis

    return redis.Redis.from_url((env or os.environ)[MARKER_REDIS_URL])


class SleepForeverTrigger(BaseTrigger):
    """Never fires. Marks ``<marker>:started`` when run, ``<marker>:cleanup`` in cleanup()."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("proj.SleepForeverTrigger", {"marker": self.marker})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await asyncio.to_thread(_redis().incr, f"{self.marker}:started")
        while True:
            await asyncio.sleep(3600)
        yield TriggerEvent(None)  # pragma: no cover - makes run() an async generator

    async def cleanup(self) -> None:
        await asyncio.to_thread(_redis().incr, f"{self.marker}:cleanup")


class WaitThenAdd(DeferrableTask):
    """Defers once on a TimeDeltaTrigger, resumes in ``finish``."""

    name = "proj.wait_then_add"

    def run(self, x: int, y: int, seconds: float = 2.0) -> None:
        self.defer(
            trigger=TimeDeltaTrigger(timedelta(seconds=seconds)),
            method_name="finish",
            kwargs={"total": x + y},
        )

    def finish(self, total: int, event: Any = None) -> dict[str, Any]:
        return {"total": total, "task_id": self.request.id, "fired_at": event.payload.isoformat()}


class CountDeferrals(DeferrableTask):
    """Defers ``times`` times in succession, counting; returns the count."""

    name = "proj.count_deferrals"

    def run(self, times: int = 3, count: int = 0, event: Any = None) -> int:
        if count < times:
            self.defer(trigger=SuccessTrigger(), kwargs={"times": times, "count": count + 1})
        return count


def _wait_somewhere_deep(seconds: float, label: str) -> None:
    """A helper the task calls: the deferral starts here, not in the task body."""
    raise TaskDeferred(
        TimeDeltaTrigger(timedelta(seconds=seconds)), method_name="done", kwargs={"label": label}
    )


class NestedDefer(DeferrableTask):
    """Defers from a nested helper (raising TaskDeferred), through ``except Exception``."""

    name = "proj.nested_defer"

    def run(self, label: str) -> None:
        try:
            self._helper(label)
        except Exception:  # must not swallow the deferral (TaskDeferred is a BaseException)
            raise AssertionError("TaskDeferred was caught by except Exception") from None

    def _helper(self, label: str) -> None:
        _wait_somewhere_deep(0.5, label)

    def done(self, label: str, event: Any = None) -> dict[str, Any]:
        return {"label": label, "task_id": self.request.id}


def _short_wait(seconds: float) -> BaseTrigger:
    """A trigger firing after ``seconds`` (at once for 0)."""
    if seconds > 0:
        return TimeDeltaTrigger(timedelta(seconds=seconds))
    return SuccessTrigger()


class DeferDouble(DeferrableTask):
    """Canvas step: defers for ``seconds``, resumes in ``finish`` and returns ``2 * x``."""

    name = "proj.defer_double"

    def run(self, x: int, seconds: float = 0.0) -> None:
        self.defer(trigger=_short_wait(seconds), method_name="finish", kwargs={"x": x})

    def finish(self, x: int, event: Any = None) -> int:
        return 2 * x


class DeferThenAdd(DeferrableTask):
    """Canvas step: defers ``times`` times in succession, then returns ``x + times``."""

    name = "proj.defer_then_add"

    def run(self, x: int, times: int = 3, count: int = 0, event: Any = None) -> int:
        if count < times:
            self.defer(
                trigger=SuccessTrigger(), kwargs={"x": x, "times": times, "count": count + 1}
            )
        return x + count


class DeferThenFail(DeferrableTask):
    """Defers for ``seconds``, then fails in ``explode`` with a ValueError."""

    name = "proj.defer_then_fail"

    def run(self, message: str, seconds: float = 0.0) -> None:
        self.defer(trigger=_short_wait(seconds), method_name="explode", kwargs={"message": message})

    def explode(self, message: str, event: Any = None) -> None:
        raise ValueError(message)


class RetryAfterResume(DeferrableTask):
    """Defers once; the resumed ``again`` calls ``self.retry()`` ``times`` times."""

    name = "proj.retry_after_resume"

    def run(self, times: int = 2) -> None:
        self.defer(trigger=SuccessTrigger(), method_name="again", kwargs={"times": times})

    def again(self, times: int, event: Any = None) -> int:
        if self.request.retries < times:
            raise self.retry(countdown=0.1, max_retries=times + 1)
        return int(self.request.retries)


class SlowResume(DeferrableTask):
    """Defers once (a short first execution); the resumed ``work`` sleeps ``seconds``."""

    name = "proj.slow_resume"

    def run(self, seconds: float = 3.0) -> None:
        self.defer(trigger=SuccessTrigger(), method_name="work", kwargs={"seconds": seconds})

    def work(self, seconds: float, event: Any = None) -> str:
        time.sleep(seconds)
        return "slept"


class DeadlineTwoSeconds(DeferrableTask):
    """A total deadline of 2 s; defers on an hour-long timer without a timeout."""

    name = "proj.deadline_two_seconds"
    deadline = 2

    def run(self, event: Any = None) -> str:
        self.defer(trigger=TimeDeltaTrigger(timedelta(hours=1)))
        return "unreachable"


class ReportRequest(DeferrableTask):
    """Defers for ``seconds``; the resumed ``report`` returns what its request carries.

    With ``marker``, the report is also stored in Redis under ``<marker>:report``
    (for ``ignore_result=True``, where the backend keeps nothing).
    """

    name = "proj.report_request"

    def run(self, marker: str | None = None, seconds: float = 0.0) -> None:
        self.defer(trigger=_short_wait(seconds), method_name="report", kwargs={"marker": marker})

    def report(self, marker: str | None, event: Any = None) -> dict[str, Any]:
        delivery_info = self.request.delivery_info or {}
        report = {
            "task_id": self.request.id,
            "routing_key": delivery_info.get("routing_key"),
            "exchange": delivery_info.get("exchange"),
            "priority": delivery_info.get("priority"),
            "headers": dict(self.request.headers or {}),
            "ignore_result": bool(self.request.ignore_result),
        }
        if marker is not None:
            _redis().set(f"{marker}:report", json.dumps(report), ex=600)
        return report


def create_app(env: Mapping[str, str] | None = None) -> Celery:
    """The app, configured from ``env`` (default: ``os.environ``)."""
    env = os.environ if env is None else env
    app = Celery("proj", broker=env[BROKER_URL], backend=env[RESULT_BACKEND])
    queue = env[QUEUE]
    app.conf.update(
        defer_database_url=env[DATABASE_URL],
        defer_trigger_queue=env[TRIGGER_QUEUE],
        defer_triggerer_heartbeat=1,
        defer_triggerer_health_timeout=10,
        defer_sweep_interval=1,
        task_default_queue=queue,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        # Celery 5.5's threads pool with a prefetch multiplier of 1 takes the next message only
        # on a 2 s tick (five trivial tasks: 8 s; 0.02 s on 5.4 and 5.6), which the timing
        # tests would blame on celery-defer.
        worker_prefetch_multiplier=4 if celery.VERSION[:2] == (5, 5) else 1,
        # tests on a shared Redis/RabbitMQ: keep nothing around for long
        result_expires=3600,
    )
    celery_defer.install(app)

    @app.task(name="proj.ping", shared=False)
    def ping() -> str:
        return "pong"

    for task_class in (
        WaitThenAdd,
        CountDeferrals,
        NestedDefer,
        DeferDouble,
        DeferThenAdd,
        DeferThenFail,
        RetryAfterResume,
        SlowResume,
        DeadlineTwoSeconds,
        ReportRequest,
    ):
        app.register_task(task_class())

    @app.task(name="proj.add", shared=False)
    def add(x: int, y: int = 1) -> int:
        return x + y

    @app.task(name="proj.double", shared=False)
    def double(x: int) -> int:
        return 2 * x

    @app.task(name="proj.count_call", shared=False)
    def count_call(*args: Any, marker: str) -> int:
        """A callback or errback (any arguments): counts its runs in Redis under ``marker``."""
        count = int(_redis(env).incr(marker))
        _redis(env).expire(marker, 600)
        return count

    @app.task(name="proj.sum_and_count", shared=False)
    def sum_and_count(values: list[int], marker: str) -> dict[str, Any]:
        """A chord callback: counts its runs in Redis under ``marker``, returns the total."""
        runs = int(_redis(env).incr(marker))
        _redis(env).expire(marker, 600)
        return {"total": sum(values), "values": values, "runs": runs}

    @app.task(name="proj.fail_fast", base=DeferrableTask, bind=True, shared=False)
    def fail_fast(self: DeferrableTask, event: Any = None) -> str:
        if event is None:
            self.defer(trigger=FailureTrigger())
        return "unreachable"

    @app.task(name="proj.too_slow", base=DeferrableTask, bind=True, shared=False)
    def too_slow(self: DeferrableTask, event: Any = None) -> str:
        self.defer(trigger=TimeDeltaTrigger(timedelta(hours=1)), timeout=timedelta(seconds=1))
        return "unreachable"

    @app.task(name="proj.bad_kwargs", base=DeferrableTask, bind=True, shared=False)
    def bad_kwargs(self: DeferrableTask, event: Any = None) -> str:
        self.defer(trigger=SuccessTrigger(), kwargs={"thing": object()})
        return "unreachable"

    @app.task(name="proj.sleep_forever", base=DeferrableTask, bind=True, shared=False)
    def sleep_forever(self: DeferrableTask, marker: str, event: Any = None) -> str:
        self.defer(trigger=SleepForeverTrigger(marker), kwargs={"marker": marker})
        return "unreachable"

    @app.task(name="proj.record_errback", shared=False)
    def record_errback(task_id: str, *, marker: str) -> None:
        """An errback (old style: gets the failed task's id); leaves a marker in Redis.

        ``marker`` is keyword-only: older Celery (5.3) counts a second positional parameter
        as a new-style errback and calls it as (request, exc, traceback).
        """
        _redis(env).set(f"{marker}:errback", task_id, ex=600)

    return app


app = create_app() if BROKER_URL in os.environ else None

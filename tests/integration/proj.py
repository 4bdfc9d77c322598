"""The Celery app the real-service integration tests run as real processes.

``celery -A proj worker|triggerer|beat`` imports this module with the
environment set by ``test_real_services.py``; the test process builds its own
client app from the same environment with :func:`create_app`. Everything that
differs per run (broker, result backend, store, queue names) comes from
``CDIT_*`` variables, so runs never share queues or tables.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from datetime import timedelta
from typing import Any

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
        worker_prefetch_multiplier=1,
        # tests on a shared Redis/RabbitMQ: keep nothing around for long
        result_expires=3600,
    )
    celery_defer.install(app)

    @app.task(name="proj.ping", shared=False)
    def ping() -> str:
        return "pong"

    for task_class in (WaitThenAdd, CountDeferrals, NestedDefer):
        app.register_task(task_class())

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
    def record_errback(task_id: str, marker: str) -> None:
        """An errback (old style: gets the failed task's id); leaves a marker in Redis."""
        _redis(env).set(f"{marker}:errback", task_id, ex=600)

    return app


app = create_app() if BROKER_URL in os.environ else None

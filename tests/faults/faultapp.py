"""The Celery app the fault tests run as real processes (``celery -A faultapp ...``).

Configured entirely from the environment (see :mod:`faultkit`), so the test, the worker,
the triggerer and beat agree. Its one task defers until a moment, then records each run of
its resumed method in Redis (``HINCRBY <prefix>:done <task id> 1``), which is how a test
counts lost and duplicated resumes; a key, when set, holds resumed methods mid-run so a
test can kill the worker while they execute.

Fault hooks, each set by an environment variable in one process only: they stand for
what a real outage does to that process (the kills themselves are real ``SIGKILL``s):

``FAULT_HANG_BEFORE_PUBLISH``
    The triggerer stores the first fired events, touches this file, and then never
    publishes their resumes (as if it died right there; the test kills it).
``FAULT_PARTITIONED``
    Once this file exists, the triggerer keeps running its triggers but its heartbeats,
    claims and reconciliations no longer reach the store: the others declare it dead and
    take its triggers, while it still fires them, storing its events as a triggerer does
    when a partition heals.
"""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from celery import Celery

import celery_defer
from celery_defer import DeferrableTask
from celery_defer.triggers import DateTimeTrigger

env = os.environ

app = Celery("faultapp", set_as_current=True)
app.conf.update(
    broker_url=env["FAULT_BROKER_URL"],
    broker_connection_retry_on_startup=True,
    # No result backend: a test counts runs in Redis, not results.
    result_backend=None,
    task_ignore_result=True,
    task_default_queue=env["FAULT_QUEUE"],
    task_acks_late=env.get("FAULT_ACKS_LATE") == "1",
    task_reject_on_worker_lost=env.get("FAULT_ACKS_LATE") == "1",
    worker_prefetch_multiplier=1,
    broker_transport_options={"visibility_timeout": 30},
    defer_database_url=env["FAULT_STORE_URL"],
    defer_trigger_queue=env["FAULT_TRIGGER_QUEUE"],
    defer_triggerer_heartbeat=0.5,
    defer_triggerer_health_timeout=float(env.get("FAULT_HEALTH_TIMEOUT", "3")),
    defer_sweep_interval=1.0,
    defer_resume_republish_after=float(env.get("FAULT_REPUBLISH_AFTER", "300")),
    defer_triggerer_capacity=5000,
)
celery_defer.install(app)

_markers = redis.Redis.from_url(env["FAULT_MARKER_URL"])
_prefix = env["FAULT_PREFIX"]


class WaitUntil(DeferrableTask):
    """Defers until ``moment`` (ISO), then counts the run of its resumed method."""

    name = "faultapp.wait_until"
    ignore_result = True

    def run(self, moment: str) -> None:
        self.defer(trigger=DateTimeTrigger(datetime.fromisoformat(moment)), method_name="done")

    def done(self, event: Any = None) -> None:
        task_id = self.request.id
        _markers.hincrby(f"{_prefix}:started", task_id, 1)
        while _markers.get(f"{_prefix}:hold"):
            _markers.sadd(f"{_prefix}:held", task_id)
            time.sleep(0.05)
        _markers.hincrby(f"{_prefix}:done", task_id, 1)


app.register_task(WaitUntil())


def _install_fault_hooks() -> None:
    marker = env.get("FAULT_HANG_BEFORE_PUBLISH")
    if marker:
        from celery_defer.broker import resumes

        def hang(app: Any, orders: Any) -> Any:
            # Written whole, then renamed: the test reads it as soon as it exists.
            written = Path(f"{marker}.tmp")
            written.write_text(str(len(orders)))
            written.replace(marker)
            while True:  # the events are stored; their resumes are never sent
                time.sleep(3600)

        resumes.publish_until_unreachable = hang

    if env.get("FAULT_PARTITIONED"):
        from celery_defer.triggerer import runner

        real_main = runner.TriggerRunner.main

        async def partitioned_main(self: Any) -> None:
            real_heartbeat = self.store.heartbeat
            held = self.running

            def heartbeat(triggerer_id: str) -> bool:
                if Path(env["FAULT_PARTITIONED"]).exists():
                    return True  # nothing reaches the database, nothing is noticed
                return bool(real_heartbeat(triggerer_id))

            real_claim = self.store.claim_triggers

            def claim_triggers(*args: Any) -> Any:
                if Path(env["FAULT_PARTITIONED"]).exists():
                    return []
                return real_claim(*args)

            def held_trigger_ids(triggerer_id: str) -> set[int]:
                return set(held)

            self.store.heartbeat = heartbeat
            self.store.claim_triggers = claim_triggers
            self.store.held_trigger_ids = held_trigger_ids
            await real_main(self)

        runner.TriggerRunner.main = partitioned_main  # type: ignore[method-assign]


_install_fault_hooks()

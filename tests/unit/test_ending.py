"""A deferring execution ends with Celery's Ignore outcome, through Celery's own tracer.

The worker calls ``task.__trace__`` (built by ``celery.app.trace.build_tracer``);
these tests build it the same way and call it as the pool does, on the
in-memory store, and look at what the pool would hand the worker's request.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import Celery
from celery.app.trace import IGNORED, build_tracer
from celery.exceptions import Ignore
from celery.signals import task_postrun

from celery_defer import DeferrableTask
from celery_defer.store import store_for
from celery_defer.triggers import TimeDeltaTrigger
from celery_defer.worker.ending import ExecutionEnded


def _deferring_task(app: Celery) -> Any:
    @app.task(base=DeferrableTask, bind=True, name=f"{app.main}.ending.wait")
    def wait(self: DeferrableTask, n: int) -> None:
        self.defer(TimeDeltaTrigger(timedelta(hours=1)), kwargs={"n": n})

    return wait


def _request(task_id: str, task: Any) -> dict[str, Any]:
    return {
        "id": task_id,
        "task": task.name,
        "delivery_info": {"exchange": "", "routing_key": "celery", "redelivered": False},
        "headers": {},
        "hostname": "unit@localhost",
    }


def test_the_worker_tracer_ends_a_deferral_as_ignored_without_the_tracer_frames(
    app: Celery,
) -> None:
    task = _deferring_task(app)
    task.__trace__ = build_tracer(task.name, task, app=app, hostname="unit@localhost")
    postrun: list[Any] = []

    def record(state: Any = None, **_: Any) -> None:
        postrun.append(state)

    task_postrun.connect(record, weak=False)
    try:
        retval, info, _runtime, _rstr = task.__trace__("t-1", (7,), {}, _request("t-1", task))
    finally:
        task_postrun.disconnect(record)

    assert info.state == IGNORED
    assert isinstance(info.retval, Ignore)
    assert isinstance(retval.exception.exc, Ignore)  # what Request.on_failure acks
    assert "trace_task" not in retval.traceback  # no frame of Celery's tracer described
    stored = store_for(app).get_deferral("t-1")
    assert stored is not None and stored.method == "run"
    assert app.AsyncResult("t-1").state == "DEFERRED"
    assert postrun == [None]  # the one documented difference from Celery's Ignore path


def test_a_tracer_celery_built_elsewhere_still_gets_plain_ignore(app: Celery) -> None:
    task = _deferring_task(app)
    unwrapped = build_tracer(task.name, task, app=app, hostname="unit@localhost")

    retval, info, _runtime, _rstr = unwrapped("t-2", (1,), {}, _request("t-2", task))

    assert info.state == IGNORED
    assert not isinstance(retval.exception, ExecutionEnded)
    stored = store_for(app).get_deferral("t-2")
    assert stored is not None and stored.method == "run"


def test_wrapping_twice_wraps_once(app: Celery) -> None:
    task = _deferring_task(app)
    tracer = build_tracer(task.name, task, app=app)
    task.__trace__ = tracer
    first = task.__trace__
    task.__trace__ = first
    assert task.__trace__ is first
    assert first.__wrapped__ is tracer
    task.__trace__ = None
    assert task.__trace__ is None

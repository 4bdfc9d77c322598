"""DeferrableTask end to end, in process: a real worker and triggerer on the memory transport."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from celery import Celery
from kombu import Queue

from celery_defer import (
    DEFERRED,
    DeferrableTask,
    InvalidDeferral,
    TaskDeferred,
    TriggerFailed,
    TriggerTimeout,
)
from celery_defer.exceptions import StoreError
from celery_defer.store import store_for
from celery_defer.sweep import sweep
from celery_defer.testing import FailureTrigger, SuccessTrigger
from celery_defer.triggers import TimeDeltaTrigger
from celery_defer.worker import outage
from tests.support.inprocess import make_app, running
from tests.support.waiting import eventually, wait_for_state


def seconds(value: float) -> TimeDeltaTrigger:
    return TimeDeltaTrigger(timedelta(seconds=value))


class WaitThenAdd(DeferrableTask):
    name = "t.wait_then_add"

    def run(self, x: int, y: int) -> None:
        self.defer(trigger=seconds(0.3), method_name="finish", kwargs={"total": x + y})

    def finish(self, total: int, event: Any = None) -> dict[str, Any]:
        return {"total": total, "fired_at": event.payload.isoformat(), "id": self.request.id}


def _helper(task: DeferrableTask, depth: int) -> None:
    if depth:
        _helper(task, depth - 1)
    task.defer(trigger=SuccessTrigger(), method_name="done", kwargs={"depth": 3})


class Nested(DeferrableTask):
    name = "t.nested"

    def run(self) -> None:
        try:
            _helper(self, 3)
        except Exception:  # TaskDeferred is a BaseException: not swallowed here
            raise AssertionError("except Exception swallowed the deferral") from None

    def done(self, depth: int, event: Any = None) -> int:  # noqa: ARG002
        return depth


class _OddTrigger(SuccessTrigger):
    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("celery_defer.testing.SuccessTrigger", {"handle": object()})


REFUSALS: dict[str, tuple[dict[str, Any], str]] = {
    "kwargs": ({"kwargs": {"blob": object()}}, r"kwargs\['blob'\].*object"),
    "missing": ({"method_name": "missing"}, "has no method 'missing'"),
    "not_callable": ({"method_name": "not_callable"}, "'not_callable' .* is not callable"),
    "dunder": ({"method_name": "__init__"}, "is private"),
    "task_api": ({"method_name": "apply_async"}, "Celery's Task API"),
    "negative": ({"timeout": -5}, "must not be negative"),
    "not_a_number": ({"timeout": "soon"}, "timedelta or a number of seconds"),
    "nan": ({"timeout": float("nan")}, "finite number"),
    "event_kwarg": ({"kwargs": {"event": 1}}, "must not contain 'event'"),
    "not_a_trigger": ({"trigger": "not a trigger"}, "BaseTrigger instance"),
    "trigger_kwargs": ({"trigger": _OddTrigger()}, r"trigger kwargs\['handle'\]"),
}


class Refused(DeferrableTask):
    name = "t.refused"
    not_callable = 42

    def run(self, case: str) -> None:
        options: dict[str, Any] = {"trigger": SuccessTrigger(), **REFUSALS[case][0]}
        self.defer(**options)


class Live:
    """One app, worker and triggerer shared by this module's tests, with their tasks."""

    def __init__(self, app: Celery) -> None:
        self.app = app
        self.errors: list[str] = []
        self.calls: list[Any] = []
        self.wait_then_add = app.register_task(WaitThenAdd())
        self.nested = app.register_task(Nested())
        self.refused = app.register_task(Refused())

        @app.task(base=DeferrableTask, bind=True, shared=False, name="t.poll")
        def poll(self: DeferrableTask, job: str, event: Any = None) -> Any:
            if event is None:
                self.defer(trigger=SuccessTrigger(), kwargs={"job": job})
            return [job, event.payload]

        @app.task(base=DeferrableTask, bind=True, shared=False, name="t.sleepy")
        def sleepy(self: DeferrableTask, n: int, event: Any = None) -> int:
            if event is None:
                self.defer(trigger=seconds(2), kwargs={"n": n})
            return n

        @app.task(base=DeferrableTask, bind=True, shared=False, name="t.counter")
        def counter(self: DeferrableTask, count: int = 0, event: Any = None) -> int:  # noqa: ARG001
            if count < 3:
                self.defer(trigger=seconds(0.05), kwargs={"count": count + 1})
            return count

        @app.task(base=DeferrableTask, bind=True, shared=False, name="t.raw")
        def raw(self: DeferrableTask, event: Any = None) -> str:  # noqa: ARG001
            if event is None:
                raise TaskDeferred(SuccessTrigger(), kwargs={})
            return "raw"

        @app.task(base=DeferrableTask, bind=True, shared=False, name="t.doomed")
        def doomed(self: DeferrableTask, event: Any = None) -> None:  # noqa: ARG001
            self.defer(trigger=FailureTrigger())

        @app.task(shared=False, name="t.on_error")
        def on_error(request: Any, exc: Exception, traceback: Any) -> None:  # noqa: ARG001
            self.errors.append(f"{request.id}:{type(exc).__name__}")

        @app.task(base=DeferrableTask, bind=True, shared=False, name="t.too_slow")
        def too_slow(self: DeferrableTask, event: Any = None) -> None:  # noqa: ARG001
            self.defer(trigger=seconds(3600), timeout=timedelta(seconds=0.2))

        @app.task(shared=False, name="t.record")
        def record(value: Any) -> None:
            self.calls.append(value)

        @app.task(base=DeferrableTask, bind=True, shared=False, name="t.linked")
        def linked(self: DeferrableTask, event: Any = None) -> str:
            if event is None:
                self.defer(trigger=seconds(0.2))
            return "end"

        @app.task(base=DeferrableTask, bind=True, shared=False, name="t.where")
        def where(self: DeferrableTask, event: Any = None) -> Any:
            if event is None:
                self.defer(trigger=SuccessTrigger())
            return [self.request.delivery_info.get("routing_key"), self.request.headers]

        self.where = where
        self.poll, self.sleepy, self.counter, self.raw = poll, sleepy, counter, raw
        self.doomed, self.on_error, self.too_slow = doomed, on_error, too_slow
        self.record, self.linked = record, linked


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    app = make_app(f"sqlite:///{tmp_path_factory.mktemp('store') / 'store.sqlite3'}")
    default = app.conf.task_default_queue
    app.conf.task_queues = (Queue(default), Queue(f"{default}.special"))
    tasks = Live(app)
    with running(app, concurrency=1):
        yield tasks


def test_class_task_defers_and_resumes_under_its_own_id(live: Live) -> None:
    result = live.wait_then_add.delay(1, 2)
    wait_for_state(result, DEFERRED)
    info = result.info
    assert info["trigger"] == "celery_defer.triggers.DateTimeTrigger"
    assert info["method"] == "finish"
    assert info["timeout_at"] is None
    value = result.get(timeout=10)
    assert value["total"] == 3
    assert value["id"] == result.id
    assert result.state == "SUCCESS"
    assert store_for(live.app).get_deferral(result.id) is None  # forgotten once finished


def test_function_task_reenters_run_with_the_event(live: Live) -> None:
    assert live.poll.delay("j1").get(timeout=10) == ["j1", True]


def test_worker_slot_is_freed_while_deferred(live: Live) -> None:
    started = time.monotonic()
    results = [live.sleepy.delay(1), live.sleepy.delay(2)]
    assert [r.get(timeout=10) for r in results] == [1, 2]
    elapsed = time.monotonic() - started
    # With concurrency 1, blocking the slot would take 4 s; deferring takes about 2 s.
    assert elapsed < 3.5, elapsed


def test_three_successive_deferrals(live: Live) -> None:
    result = live.counter.delay()
    assert result.get(timeout=10) == 3
    assert store_for(live.app).get_deferral(result.id) is None


def test_defer_from_a_nested_helper_and_through_except_exception(live: Live) -> None:
    assert live.nested.delay().get(timeout=10) == 3


def test_task_deferred_raised_directly(live: Live) -> None:
    assert live.raw.delay().get(timeout=10) == "raw"


def test_trigger_failure_fails_the_task_naming_the_trigger(live: Live) -> None:
    result = live.doomed.delay()
    with pytest.raises(TriggerFailed, match="FailureTrigger raised RuntimeError"):
        result.get(timeout=10)
    assert result.state == "FAILURE"


def test_timeout_through_the_sweep_runs_the_errback(live: Live) -> None:
    result = live.too_slow.apply_async(link_error=live.on_error.s())
    wait_for_state(result, DEFERRED)
    assert result.info["timeout_at"] is not None
    time.sleep(0.3)
    assert sweep(live.app).timed_out == 1
    with pytest.raises(TriggerTimeout):
        result.get(timeout=10)
    eventually(lambda: live.errors, timeout=5.0)
    assert live.errors == [f"{result.id}:TriggerTimeout"]
    assert sweep(live.app).timed_out == 0  # claim-then-act: never twice


def test_success_callbacks_fire_once_at_the_real_end(live: Live) -> None:
    result = live.linked.apply_async(link=live.record.s())
    wait_for_state(result, DEFERRED)
    assert live.calls == []  # nothing at deferral time
    assert result.get(timeout=10) == "end"
    eventually(lambda: live.calls, timeout=5.0)
    time.sleep(0.2)
    assert live.calls == ["end"]


def test_the_resume_keeps_queue_and_headers(live: Live) -> None:
    special = f"{live.app.conf.task_default_queue}.special"
    result = live.where.apply_async(queue=special, headers={"tenant": "acme"})
    routing_key, headers = result.get(timeout=10)
    assert routing_key == special
    assert headers["tenant"] == "acme"


def test_a_resume_is_resent_while_the_store_is_unreachable(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the first claim of the resume fails as if the database were down."""
    store = store_for(live.app)
    real_begin = store.begin_resume
    failures: list[str] = []

    def flaky_begin(task_id: str, generation: int, **options: Any) -> bool:
        if not failures:
            failures.append(task_id)
            raise StoreError("begin_resume failed: connection refused (injected)")
        return real_begin(task_id, generation, **options)

    monkeypatch.setattr(store, "begin_resume", flaky_begin)
    result = live.poll.delay("flaky")
    assert result.get(timeout=15) == ["flaky", True]  # re-sent after ~2 s, then resumed
    assert failures == [result.id]


@pytest.mark.parametrize("failing_save", [1, 2], ids=["first-execution", "resumed-method"])
def test_a_deferral_is_resent_while_the_store_is_unreachable(
    live: Live, monkeypatch: pytest.MonkeyPatch, failing_save: int
) -> None:
    """Fault injection: one save of the deferral fails as if the database were down.

    The execution is re-sent (no retry consumed) and runs again; when it was a
    resumed method, the re-sent copy takes over the resume it had claimed.
    """
    store = store_for(live.app)
    real_save = store.save_deferral
    saves: list[str] = []

    def flaky_save(deferral: Any) -> Any:
        saves.append(deferral.task_id)
        if len(saves) == failing_save:
            raise StoreError("save_deferral failed: connection refused (injected)")
        return real_save(deferral)

    monkeypatch.setattr(store, "save_deferral", flaky_save)
    result = live.counter.delay()
    assert result.get(timeout=20) == 3  # three deferrals stored, one save failed
    assert saves == [result.id] * 4
    assert store.get_deferral(result.id) is None


def test_a_store_that_stays_down_fails_the_deferring_task(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:

    store = store_for(live.app)

    def down(deferral: Any) -> Any:  # noqa: ARG001
        raise StoreError("save_deferral failed: connection refused (injected)")

    monkeypatch.setattr(store, "save_deferral", down)
    monkeypatch.setattr(outage, "MAX_STORE_RESENDS", 1)
    result = live.poll.delay("lost?")
    wait_for_state(result, "RETRY")  # not DEFERRED: nothing waits on a trigger
    with pytest.raises(StoreError, match=r"could not be stored after 1 attempts.*refused"):
        result.get(timeout=15)
    assert result.state == "FAILURE"


def test_a_resume_after_expires_is_revoked_as_celery_would(live: Live) -> None:
    result = live.sleepy.apply_async((7,), expires=1.0)  # waits 2 s, expires after 1 s
    wait_for_state(result, DEFERRED)
    wait_for_state(result, "REVOKED", timeout=10)


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_fail_the_task_and_store_nothing(live: Live, case: str) -> None:
    result = live.refused.delay(case)
    with pytest.raises(InvalidDeferral, match=REFUSALS[case][1]):
        result.get(timeout=10)
    assert store_for(live.app).get_deferral(result.id) is None


def test_eager_mode_runs_the_trigger_inline(store_url: str) -> None:
    app = make_app(store_url, task_always_eager=True)

    @app.task(base=DeferrableTask, bind=True, shared=False, name="t.eager")
    def eager(self: DeferrableTask, n: int = 0, event: Any = None) -> Any:
        if n < 2:
            self.defer(trigger=seconds(0.01), kwargs={"n": n + 1})
        return [n, isinstance(event.payload, datetime)]

    assert eager.delay().get(timeout=5) == [2, True]
    assert eager.apply().get() == [2, True]
    assert eager(0) == [2, True]  # a direct call too


def test_eager_mode_fails_like_the_worker(store_url: str) -> None:
    app = make_app(store_url, task_always_eager=True)

    @app.task(base=DeferrableTask, bind=True, shared=False, name="t.eager_fail")
    def eager_fail(self: DeferrableTask, event: Any = None) -> None:  # noqa: ARG001
        self.defer(trigger=FailureTrigger())

    @app.task(base=DeferrableTask, bind=True, shared=False, name="t.eager_timeout")
    def eager_timeout(self: DeferrableTask, event: Any = None) -> None:  # noqa: ARG001
        self.defer(trigger=seconds(60), timeout=0.05)

    with pytest.raises(TriggerFailed, match="FailureTrigger"):
        eager_fail.apply().get()
    started = datetime.now(timezone.utc)
    with pytest.raises(TriggerTimeout):
        eager_timeout.apply().get()
    assert datetime.now(timezone.utc) - started < timedelta(seconds=5)

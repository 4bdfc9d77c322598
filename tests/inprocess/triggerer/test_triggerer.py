"""The triggerer in process: capacity, notices, clean stop, and triggers that break the contract.

One worker serves the module; each test starts its own triggerer. The store scan runs only
every 5 s here (``defer_triggerer_heartbeat``), so a test finishing in well under that proves
the new-trigger notice woke the triggerer.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker
from sqlalchemy import update

from celery_defer import DeferrableTask, Triggerer, TriggerFailed
from celery_defer.exceptions import ConfigurationError
from celery_defer.store import store_for
from celery_defer.store.sql.schema import triggers
from celery_defer.testing import SuccessTrigger
from celery_defer.triggers import BaseTrigger, TriggerEvent
from tests.support.inprocess import make_app, sql_engine


class ProbeTrigger(BaseTrigger):
    """Counts how many probes run at once, then fires after ``hold`` seconds."""

    lock = threading.Lock()
    now = 0
    peak = 0

    def __init__(self, hold: float) -> None:
        self.hold = hold

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.ProbeTrigger", {"hold": self.hold})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        with ProbeTrigger.lock:
            ProbeTrigger.now += 1
            ProbeTrigger.peak = max(ProbeTrigger.peak, ProbeTrigger.now)
        try:
            await asyncio.sleep(self.hold)
        finally:
            with ProbeTrigger.lock:
                ProbeTrigger.now -= 1
        yield TriggerEvent("probed")


class ForeverTrigger(BaseTrigger):
    """Never fires; records its cleanup."""

    cleaned: ClassVar[list[str]] = []

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.ForeverTrigger", {"tag": self.tag})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        await asyncio.Event().wait()
        yield TriggerEvent(None)  # pragma: no cover

    async def cleanup(self) -> None:
        ForeverTrigger.cleaned.append(self.tag)


class ReturnsEvent(BaseTrigger):
    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.ReturnsEvent", {})

    async def run(self) -> TriggerEvent:  # type: ignore[override]  # the mistake under test
        return TriggerEvent(1)


class EndsEmpty(BaseTrigger):
    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.EndsEmpty", {})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        return
        yield  # pragma: no cover


class YieldsJunk(BaseTrigger):
    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.YieldsJunk", {})

    async def run(self) -> AsyncIterator[Any]:
        yield {"not": "an event"}


class YieldsUnstorable(BaseTrigger):
    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.YieldsUnstorable", {})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        yield TriggerEvent(object())


class NoSuperInit(SuccessTrigger):
    def __init__(self) -> None:  # forgot super().__init__(): must still work
        self.note = "no super"

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.NoSuperInit", {})


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Celery]:
    store = tmp_path_factory.mktemp("store") / "store.sqlite3"
    app = make_app(
        f"sqlite:///{store}", defer_triggerer_heartbeat=5.0, defer_triggerer_health_timeout=30.0
    )

    @app.task(base=DeferrableTask, bind=True, shared=False, name="t.wait_on")
    def wait_on(self: DeferrableTask, kind: str, arg: Any = None, event: Any = None) -> Any:
        if event is None:
            made = {
                "probe": lambda: ProbeTrigger(arg),
                "forever": lambda: ForeverTrigger(arg),
                "success": SuccessTrigger,
                "returns": ReturnsEvent,
                "empty": EndsEmpty,
                "junk": YieldsJunk,
                "unstorable": YieldsUnstorable,
                "no_super": NoSuperInit,
            }[kind]()
            self.defer(trigger=made, kwargs={"kind": kind, "arg": arg})
        return event.payload

    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False):
        yield app


def wait_on(app: Celery) -> Any:
    return app.tasks["t.wait_on"]


def test_a_notice_wakes_the_triggerer_before_its_scan(app: Celery) -> None:
    with Triggerer(app):
        time.sleep(0.2)  # past the first scan: from here on only a notice can wake it
        started = time.monotonic()
        assert wait_on(app).delay("success").get(timeout=10) is True
        assert time.monotonic() - started < 2.0


def test_never_more_than_capacity_and_the_rest_wait_their_turn(app: Celery) -> None:
    ProbeTrigger.peak = 0
    with Triggerer(app, capacity=3):
        results = [wait_on(app).delay("probe", 0.2) for _ in range(8)]
        assert [r.get(timeout=20) for r in results] == ["probed"] * 8
    assert ProbeTrigger.peak == 3


def test_stop_cleans_up_and_hands_triggers_back(app: Celery) -> None:
    store = store_for(app)
    triggerer = Triggerer(app).start()
    result = wait_on(app).delay("forever", "stop-test")
    deadline = time.monotonic() + 5
    while triggerer.running_triggers == 0:
        assert time.monotonic() < deadline, "the triggerer never picked the trigger up"
        time.sleep(0.02)
    triggerer.stop()
    assert "stop-test" in ForeverTrigger.cleaned
    assert store.held_trigger_ids(triggerer.id) == set()
    taken = store.claim_triggers("another-triggerer", 100, 30.0)
    info = store.get_deferral(result.id)
    assert info is not None and info.trigger_id in {t.id for t in taken}
    store.unregister_triggerer("another-triggerer")


def test_a_stop_during_a_claim_hands_back_what_that_claim_takes(
    app: Celery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim still committing when the triggerer stops must not outlive its hand-back.

    The real claim is held back until the stop is under way: a triggerer that handed its
    triggers back without waiting for it would leave them owned by a triggerer that no
    longer exists, where no heartbeat ever expires them.
    """
    store = store_for(app)
    real_claim = store.claim_triggers
    armed, in_claim, go, claimed = (threading.Event() for _ in range(4))

    def held_claim(*args: Any) -> Any:
        if not armed.is_set():
            return real_claim(*args)
        in_claim.set()
        go.wait(10)
        try:
            return real_claim(*args)
        finally:
            claimed.set()

    monkeypatch.setattr(store, "claim_triggers", held_claim)
    triggerer = Triggerer(app).start()
    time.sleep(0.3)  # past its first claim
    armed.set()
    result = wait_on(app).delay("forever", "claim-during-stop")
    assert in_claim.wait(10), "the new-trigger notice never led to a claim"
    stopper = threading.Thread(target=triggerer.stop)
    stopper.start()
    time.sleep(0.5)  # the stop is under way while the claim waits
    go.set()
    stopper.join(20)
    assert not stopper.is_alive()
    assert claimed.wait(10)
    info = store.get_deferral(result.id)
    assert info is not None
    trigger_id = info.trigger_id
    assert trigger_id not in store.held_trigger_ids(triggerer.id)
    taken = store.claim_triggers("another-triggerer", 100, 30.0)
    assert trigger_id in {t.id for t in taken}
    store.unregister_triggerer("another-triggerer")


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("returns", r"ReturnsEvent.run\(\) is a coroutine function"),
        ("empty", "EndsEmpty ended without yielding an event"),
        ("junk", "YieldsJunk yielded dict, not a TriggerEvent"),
        ("unstorable", "YieldsUnstorable yielded a payload that cannot be stored"),
    ],
)
def test_a_trigger_breaking_the_contract_fails_its_task_only(
    app: Celery, kind: str, message: str
) -> None:
    with Triggerer(app):
        bad = wait_on(app).delay(kind)
        good = wait_on(app).delay("success")
        with pytest.raises(TriggerFailed, match=message):
            bad.get(timeout=10)
        assert good.get(timeout=10) is True


def test_a_trigger_without_super_init_still_runs(app: Celery) -> None:
    with Triggerer(app):
        assert wait_on(app).delay("no_super").get(timeout=10) is True


@pytest.mark.parametrize(
    ("classpath", "message"),
    [
        ("celery_defer_gone.triggers.Vanished", "could not be rebuilt.*does not import"),
        ("os.system", "could not be rebuilt.*not a BaseTrigger subclass"),
    ],
)
def test_a_stored_classpath_that_is_not_a_trigger_is_never_run(
    app: Celery, classpath: str, message: str
) -> None:
    store = store_for(app)
    result = wait_on(app).delay("forever", "rewritten")
    deadline = time.monotonic() + 5
    while (deferral := store.get_deferral(result.id)) is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    with sql_engine(store).begin() as conn:  # what an upgrade or a hostile row could leave behind
        conn.execute(
            update(triggers).where(triggers.c.id == deferral.trigger_id).values(classpath=classpath)
        )
    with Triggerer(app), pytest.raises(TriggerFailed, match=message):
        result.get(timeout=10)


@pytest.mark.parametrize("capacity", [0, -1, 1.5, True])
def test_bad_capacity_is_refused(app: Celery, capacity: Any) -> None:
    with pytest.raises(ConfigurationError, match="capacity must be a positive integer"):
        Triggerer(app, capacity=capacity)

"""Contract tests of the :class:`~celery_defer.store.Store` interface: memory, SQLite, PostgreSQL.

Each test starts from an empty store (see ``conftest.py``) and asserts what a caller of the
store can observe. The ``backend`` helpers stand in for time passing or for states that the
interface cannot produce on its own (two deferrals on one trigger, a triggerer reaped after its
last claim); see ``tests/support/store_backends.py``. The schema tests at the top are the SQL
store's alone.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from celery_defer.exceptions import ConfigurationError, SchemaMissing, StoreError
from celery_defer.store import (
    DEFERRED,
    ENDED,
    FIRING,
    RESUMED,
    RUNNING,
    ClaimedTrigger,
    DeferralState,
    NewDeferral,
    ResumeOrder,
    SqlStore,
    Store,
    TriggerOutcome,
)
from celery_defer.store.sql.schema import SCHEMA_VERSION, schema_info
from tests.support.store_backends import Backend, ManualClock

MakeStore = Callable[..., SqlStore]

TASK = "proj.tasks.wait_for_it"
CLASSPATH = "celery_defer.triggers.temporal.TimeDeltaTrigger"
TRIGGER_KWARGS = json.dumps({"delta": 5})
EVENT = json.dumps({"event": {"fired": True}})
HEALTH = 60.0


def deferral(task_id: str, timeout_at: datetime | None = None) -> NewDeferral:
    kwargs, request = json.dumps({"n": task_id}), json.dumps({"id": task_id, "retries": 0})
    return NewDeferral(
        task_id, TASK, "resume", kwargs, request, CLASSPATH, TRIGGER_KWARGS, timeout_at
    )


def order(task_id: str, generation: int = 1, outcome: str = EVENT) -> ResumeOrder:
    """The ResumeOrder that ``deferral(task_id)`` must come back as."""
    d = deferral(task_id)
    return ResumeOrder(task_id, TASK, generation, d.method, d.kwargs, d.request, outcome)


def sql(store: SqlStore, statement: Any) -> Any:
    with store.engine.begin() as conn:
        return conn.execute(statement)


def fired(store: Store, task_id: str) -> ResumeOrder:
    """Defer ``task_id`` and fire its trigger: the deferral is left in ``firing``."""
    stored = store.save_deferral(deferral(task_id))
    [resume] = store.fire([TriggerOutcome(stored.trigger_id, EVENT)])
    return resume


def state(store: Store, task_id: str) -> str | None:
    info = store.get_deferral(task_id)
    return None if info is None else info.state


# -- schema ---------------------------------------------------------------------------------


def test_create_schema_again_keeps_rows(store: Store) -> None:
    store.save_deferral(deferral("a"))
    store.create_schema()
    store.create_schema()
    assert state(store, "a") == DEFERRED


def test_create_schema_twice_is_safe_and_keeps_rows(
    sql_store: SqlStore, make_store: MakeStore
) -> None:
    store = sql_store
    store.save_deferral(deferral("a"))
    store.create_schema()
    again = make_store(store.url)
    again.create_schema()
    assert store.schema_version() == again.schema_version() == SCHEMA_VERSION == 3
    assert state(again, "a") == DEFERRED


def test_store_without_schema_raises_schema_missing(store_url: str, make_store: MakeStore) -> None:
    bare = make_store(store_url, create_schema=False)
    assert bare.schema_version() is None
    with pytest.raises(SchemaMissing):
        bare.get_deferral("a")
    with pytest.raises(SchemaMissing):
        bare.save_deferral(deferral("a"))
    with pytest.raises(StoreError):  # SchemaMissing is a StoreError
        bare.claim_triggers("t", 10, HEALTH)
    bare.create_schema()
    assert bare.get_deferral("a") is None


def test_schema_newer_than_the_code_is_refused(sql_store: SqlStore, make_store: MakeStore) -> None:
    store = sql_store
    sql(store, sa.update(schema_info).values(version=SCHEMA_VERSION + 1))
    with pytest.raises(ConfigurationError, match="upgrade celery-defer"):
        make_store(store.url).create_schema()


def test_a_version_2_store_gains_the_timer_column(
    sql_store: SqlStore, make_store: MakeStore
) -> None:
    """What a store made by 0.2 looks like: no defer_triggers.wakes_at, version 2."""
    store = sql_store
    store.save_deferral(deferral("old"))
    sql(store, sa.text("DROP INDEX ix_defer_triggers_owner_wakes"))
    sql(store, sa.text("ALTER TABLE defer_triggers DROP COLUMN wakes_at"))
    sql(store, sa.update(schema_info).values(version=2))
    upgraded = make_store(store.url)
    upgraded.create_schema()
    assert upgraded.schema_version() == SCHEMA_VERSION == 3
    far = datetime.now(timezone.utc) + timedelta(hours=1)
    upgraded.save_deferral(dataclasses.replace(deferral("new"), wakes_at=far))
    upgraded.register_triggerer("t", "h", 1, 10)
    # The old row is no timer: claimed at once; the new far one stays in the store.
    assert [c.id for c in upgraded.claim_triggers("t", 10, HEALTH, horizon=60)] == [
        state_trigger(upgraded, "old")
    ]


def state_trigger(store: Store, task_id: str) -> int | None:
    info = store.get_deferral(task_id)
    return None if info is None else info.trigger_id


# -- saving ---------------------------------------------------------------------------------


def test_save_deferral_stores_a_claimable_trigger(store: Store) -> None:
    timeout_at = datetime.now(timezone(timedelta(hours=2))) + timedelta(hours=1)
    stored = store.save_deferral(deferral("a", timeout_at))
    assert stored.generation == 1
    info = store.get_deferral("a")
    assert info is not None
    assert (info.task_name, info.method, info.state, info.generation, info.trigger_id) == (
        TASK,
        "resume",
        DEFERRED,
        1,
        stored.trigger_id,
    )
    assert info.state is DeferralState.DEFERRED and str(info.state) == "deferred"
    assert info.timeout_at == timeout_at
    # Records carry aware UTC, whatever the column holds.
    assert info.timeout_at.tzinfo is timezone.utc
    assert info.created_at.tzinfo is timezone.utc and info.updated_at.tzinfo is timezone.utc
    assert store.claim_triggers("t1", 10, HEALTH) == [
        ClaimedTrigger(id=stored.trigger_id, classpath=CLASSPATH, kwargs=TRIGGER_KWARGS)
    ]


def test_redeferral_bumps_generation_and_makes_a_new_trigger(store: Store) -> None:
    first = store.save_deferral(deferral("a"))
    second = store.save_deferral(deferral("a"))
    assert (first.generation, second.generation) == (1, 2)
    assert second.trigger_id != first.trigger_id
    info = store.get_deferral("a")
    assert info is not None and (info.generation, info.trigger_id) == (2, second.trigger_id)
    # The first trigger is stale: firing it resumes nothing.
    assert store.fire([TriggerOutcome(first.trigger_id, EVENT)]) == []
    assert state(store, "a") == DEFERRED
    assert store.fire([TriggerOutcome(second.trigger_id, EVENT)]) == [order("a", 2)]


# -- claiming triggers ----------------------------------------------------------------------


def test_claim_triggers_respects_limit(store: Store) -> None:
    ids = {store.save_deferral(deferral(f"t{i}")).trigger_id for i in range(5)}
    assert store.claim_triggers("t1", 0, HEALTH) == []
    first = store.claim_triggers("t1", 2, HEALTH)
    rest = store.claim_triggers("t1", 10, HEALTH)
    assert (len(first), len(rest)) == (2, 3)
    assert {c.id for c in first + rest} == ids == store.held_trigger_ids("t1")
    assert store.claim_triggers("t1", 10, HEALTH) == []


def test_claim_triggers_skips_triggers_of_live_triggerer(store: Store) -> None:
    store.register_triggerer("alive", "host", 1, 100)
    store.register_triggerer("other", "host", 2, 100)
    ids = {store.save_deferral(deferral(f"t{i}")).trigger_id for i in range(3)}
    assert {c.id for c in store.claim_triggers("alive", 10, HEALTH)} == ids
    assert store.claim_triggers("other", 10, HEALTH) == []
    assert store.held_trigger_ids("alive") == ids
    assert store.held_trigger_ids("other") == set()


def test_claim_triggers_takes_over_silent_triggerer(store: Store, backend: Backend) -> None:
    store.register_triggerer("silent", "host", 1, 100)
    ids = {store.save_deferral(deferral(f"t{i}")).trigger_id for i in range(2)}
    assert {c.id for c in store.claim_triggers("silent", 10, HEALTH)} == ids
    backend.advance(timedelta(seconds=120))
    store.register_triggerer("new", "host", 2, 100)
    # Silent for 120 s: alive under a 300 s health timeout, dead under a 60 s one.
    assert store.claim_triggers("new", 10, 300.0) == []
    assert {c.id for c in store.claim_triggers("new", 10, HEALTH)} == ids
    assert store.held_trigger_ids("silent") == set()
    assert store.heartbeat("silent") is False  # it was reaped: it must stop
    assert store.heartbeat("new") is True


def test_timers_are_claimed_only_within_the_horizon_soonest_first(backend: Backend) -> None:
    start = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
    clock = ManualClock(start)
    timed = backend.with_clock(clock)
    timed.register_triggerer("t", "host", 1, 100)

    def timer(task_id: str, seconds: float) -> int:
        moment = start + timedelta(seconds=seconds)
        new = dataclasses.replace(deferral(task_id), wakes_at=moment, announce=False)
        return timed.save_deferral(new).trigger_id

    far, later, soon = timer("far", 3600), timer("later", 50), timer("soon", 30)
    other = timed.save_deferral(deferral("other")).trigger_id  # no moment: claimed at once
    assert [c.id for c in timed.claim_triggers("t", 1, HEALTH, horizon=60)] == [soon]
    assert [c.id for c in timed.claim_triggers("t", 10, HEALTH, horizon=60)] == [later, other]
    assert timed.claim_triggers("t", 10, HEALTH, horizon=60) == []  # far stays a row
    clock.advance(3600 - 59)
    assert timed.heartbeat("t") is True  # still alive: it keeps what it holds
    assert [c.id for c in timed.claim_triggers("t", 10, HEALTH, horizon=60)] == [far]


def test_several_triggerers_claim_fair_shares_and_leave_nothing_waiting(store: Store) -> None:
    ids = {store.save_deferral(deferral(f"t{i}")).trigger_id for i in range(100)}
    for name in ("a", "b", "c", "d"):
        store.register_triggerer(name, "host", 1, 1000)
    taken = {name: store.claim_triggers(name, 1000, HEALTH, horizon=60) for name in "abcd"}
    assert [len(taken[name]) for name in "abcd"] == [25, 25, 25, 25]
    for i in range(100, 140):  # more arrive; "a" is full (its capacity was 25)
        store.save_deferral(deferral(f"t{i}"))
    more = {name: store.claim_triggers(name, 1000, HEALTH, horizon=60) for name in "bcd"}
    assert sorted(len(c) for c in more.values()) == [10, 10, 10]  # 140 / 4 = 35 each
    rest: list[ClaimedTrigger] = []
    for _ in range(4):  # a few scans: what waits is split among the others until none is left
        for name in "bcd":
            rest += store.claim_triggers(name, 1000, HEALTH, horizon=60)
    assert len(rest) == 10
    claimed = {c.id for c in rest} | {c.id for cs in [*taken.values(), *more.values()] for c in cs}
    assert ids <= claimed and len(claimed) == 140


def test_without_a_horizon_every_timer_is_claimed(store: Store) -> None:
    far = datetime.now(timezone.utc) + timedelta(days=30)
    ids = {
        store.save_deferral(dataclasses.replace(deferral(f"t{i}"), wakes_at=far)).trigger_id
        for i in range(3)
    }
    store.register_triggerer("t", "host", 1, 100)
    assert {c.id for c in store.claim_triggers("t", 10, HEALTH)} == ids


def test_a_store_clock_ages_a_silent_triggerer_without_touching_rows(backend: Backend) -> None:
    start = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
    clock = ManualClock(start)
    timed = backend.with_clock(clock)
    timed.register_triggerer("silent", "host", 1, 100)
    ids = {timed.save_deferral(deferral(f"t{i}")).trigger_id for i in range(2)}
    assert {c.id for c in timed.claim_triggers("silent", 10, HEALTH)} == ids
    info = timed.get_deferral("t0")
    assert info is not None and info.created_at == info.updated_at == start
    [status] = timed.stats().triggerers
    assert status.started_at == status.heartbeat_at == start
    timed.register_triggerer("new", "host", 2, 100)
    clock.advance(HEALTH - 1)
    assert timed.heartbeat("new") is True
    assert timed.claim_triggers("new", 10, HEALTH) == []  # silent, but not for long enough
    clock.advance(2)
    assert {c.id for c in timed.claim_triggers("new", 10, HEALTH)} == ids
    assert timed.held_trigger_ids("silent") == set()
    assert timed.heartbeat("silent") is False  # it was reaped: it must stop
    [status] = timed.stats().triggerers
    assert (status.id, status.heartbeat_at) == ("new", start + timedelta(seconds=HEALTH - 1))


def test_the_store_clock_stamps_state_changes_and_events(backend: Backend) -> None:
    clock = ManualClock(datetime(2030, 1, 1, tzinfo=timezone.utc))
    timed = backend.with_clock(clock)
    resume = fired(timed, "a")
    clock.advance(600)
    timed.mark_resumed([resume])
    info = timed.get_deferral("a")
    assert info is not None
    assert info.updated_at - info.created_at == timedelta(seconds=600)
    # The sweep's cutoffs are compared with the clock's stamps, not the database's now.
    assert timed.unclaimed_resumes(clock(), 10) == []
    assert timed.unclaimed_resumes(clock() + timedelta(seconds=1), 10) == [order("a")]
    event = timed.add_event("k", '"v"')
    assert event.created_at == clock()
    assert timed.latest_events(["k"], clock()) == {"k": event}
    assert timed.latest_events(["k"], clock() + timedelta(microseconds=1)) == {}


def test_naive_datetimes_are_refused_before_any_sql(store: Store, backend: Backend) -> None:
    naive = datetime(2030, 1, 1)
    with pytest.raises(ValueError, match="timeout_at is naive"):
        store.save_deferral(deferral("a", naive))
    with pytest.raises(ValueError, match="naive"):
        store.claim_timed_out(naive, '"t"', 10)
    with pytest.raises(ValueError, match="naive"):
        store.stuck_firing(naive, 10)
    with pytest.raises(ValueError, match="naive"):
        store.latest_events(["k"], naive)
    with pytest.raises(ValueError, match="naive"):
        backend.with_clock(lambda: naive).heartbeat("t")
    assert store.get_deferral("a") is None


def test_records_compare_in_any_time_zone(store: SqlStore) -> None:
    karachi = timezone(timedelta(hours=5))
    timeout_at = datetime(2030, 1, 1, 17, 0, tzinfo=karachi)
    store.save_deferral(deferral("a", timeout_at))
    info = store.get_deferral("a")
    assert info is not None and info.timeout_at == datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert info.timeout_at.tzinfo is timezone.utc


def test_concurrent_claimers_never_share_a_trigger(store: Store, backend: Backend) -> None:
    ids = {store.save_deferral(deferral(f"t{i:03}")).trigger_id for i in range(200)}
    start = threading.Barrier(2)

    def claim_all(triggerer_id: str) -> list[int]:
        own = backend.another()
        own.register_triggerer(triggerer_id, "host", 1, 1000)
        start.wait(timeout=10)
        got: list[int] = []
        while batch := own.claim_triggers(triggerer_id, 10, HEALTH):
            got.extend(c.id for c in batch)
        return got

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(claim_all, ["a", "b"])
    assert len(a) == len(set(a)) and len(b) == len(set(b))
    assert set(a) & set(b) == set()
    assert set(a) | set(b) == ids


# -- firing ---------------------------------------------------------------------------------


def test_fire_moves_waiter_to_firing_and_deletes_trigger(store: Store, backend: Backend) -> None:
    stored = store.save_deferral(deferral("a"))
    store.claim_triggers("t1", 10, HEALTH)
    assert store.fire([TriggerOutcome(stored.trigger_id, EVENT)]) == [order("a")]
    info = store.get_deferral("a")
    assert info is not None and (info.state, info.trigger_id) == (FIRING, None)
    assert backend.trigger_ids() == set()
    assert store.held_trigger_ids("t1") == set()


def test_fire_maps_each_outcome_to_its_trigger(store: Store) -> None:
    a = store.save_deferral(deferral("a"))
    b = store.save_deferral(deferral("b"))
    orders = store.fire([TriggerOutcome(a.trigger_id, '"A"'), TriggerOutcome(b.trigger_id, '"B"')])
    assert sorted(orders, key=lambda o: o.task_id) == [
        order("a", outcome='"A"'),
        order("b", outcome='"B"'),
    ]


def test_fire_twice_resumes_once(store: Store) -> None:
    stored = store.save_deferral(deferral("a"))
    assert store.fire([TriggerOutcome(stored.trigger_id, EVENT)]) == [order("a")]
    assert store.fire([TriggerOutcome(stored.trigger_id, '"again"')]) == []
    assert store.fire([TriggerOutcome(999_999, EVENT)]) == []
    assert store.fire([]) == []
    assert state(store, "a") == FIRING


def test_concurrent_fire_of_one_trigger_resumes_once(store: Store, backend: Backend) -> None:
    stored = store.save_deferral(deferral("a"))
    start = threading.Barrier(2)

    def fire(outcome: str) -> list[ResumeOrder]:
        own = backend.another()
        start.wait(timeout=10)
        return own.fire([TriggerOutcome(stored.trigger_id, outcome)])

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(fire, ['"one"', '"two"']))
    assert sorted(len(r) for r in results) == [0, 1]


def test_fire_resumes_every_deferral_waiting_on_the_trigger(store: Store, backend: Backend) -> None:
    stored = store.save_deferral(deferral("a"))
    backend.add_waiter(deferral("b"), stored.trigger_id)
    orders = store.fire([TriggerOutcome(stored.trigger_id, EVENT)])
    assert sorted(orders, key=lambda o: o.task_id) == [order("a"), order("b")]
    assert (state(store, "a"), state(store, "b")) == (FIRING, FIRING)
    assert backend.trigger_ids() == set()


# -- resuming -------------------------------------------------------------------------------


def test_mark_resumed_then_begin_resume_once(store: Store) -> None:
    resume = fired(store, "a")
    store.mark_resumed([resume])
    assert state(store, "a") == RESUMED
    assert store.begin_resume("a", 1) is True
    assert state(store, "a") == RUNNING
    assert store.begin_resume("a", 1) is False  # a duplicate delivery


def test_begin_resume_from_firing(store: Store) -> None:
    # The publisher died between publishing and mark_resumed: the message still runs.
    fired(store, "a")
    assert store.begin_resume("a", 1) is True
    assert state(store, "a") == RUNNING


def test_begin_resume_refuses_stale_or_unfired(store: Store) -> None:
    fired(store, "a")
    assert store.begin_resume("a", 2) is False
    assert store.begin_resume("a", 0) is False
    assert state(store, "a") == FIRING
    store.save_deferral(deferral("b"))
    assert store.begin_resume("b", 1) is False  # still waiting for its trigger
    assert store.begin_resume("nobody", 1) is False


def test_mark_resumed_ignores_a_stale_generation(store: Store) -> None:
    resume = fired(store, "a")
    store.save_deferral(deferral("a"))  # deferred again under the same id: generation 2
    store.mark_resumed([resume])
    assert state(store, "a") == DEFERRED


def test_reopen_resume_makes_it_claimable_again(store: Store) -> None:
    fired(store, "a")
    assert store.begin_resume("a", 1) is True
    store.reopen_resume("a", 1)
    assert state(store, "a") == RESUMED
    assert store.begin_resume("a", 1) is True


def test_begin_resume_reclaims_a_running_resume_only_when_asked(store: Store) -> None:
    # An acks_late message redelivered after its worker died mid-method.
    fired(store, "a")
    assert store.begin_resume("a", 1) is True
    assert store.begin_resume("a", 1) is False  # a duplicate while it runs
    assert store.begin_resume("a", 1, reclaim=True) is True
    assert state(store, "a") == RUNNING
    assert store.begin_resume("a", 2, reclaim=True) is False  # never another generation
    store.finish("a", 1)
    assert store.begin_resume("a", 1, reclaim=True) is False  # finished: nothing to take


def test_finish_deletes_only_the_running_generation(store: Store) -> None:
    fired(store, "a")
    store.finish("a", 1)  # not running yet: kept
    assert state(store, "a") == FIRING
    assert store.begin_resume("a", 1) is True
    store.finish("a", 2)  # another generation: kept
    assert state(store, "a") == RUNNING
    store.finish("a", 1)
    assert store.get_deferral("a") is None  # ended: no deferral any more
    detail = store.describe_deferral("a")
    assert detail is not None and detail.state == ENDED  # kept for `celery defer show`


def test_a_settled_claim_is_the_only_write_and_refuses_duplicates(store: Store) -> None:
    # A task that does not ack late: its claim settles the row.
    fired(store, "a")
    assert store.begin_resume("a", 1, settle=True) is True
    assert store.get_deferral("a") is None
    assert store.describe_deferral("a").state == ENDED  # type: ignore[union-attr]
    assert store.begin_resume("a", 1, settle=True) is False  # a duplicate delivery
    assert store.begin_resume("a", 1) is False
    # Only a copy the worker re-sent itself (reclaim) takes a settled row back.
    assert store.begin_resume("a", 2, reclaim=True, settle=True) is False
    assert store.begin_resume("a", 1, reclaim=True, settle=True) is True
    assert store.begin_resume("a", 1, reclaim=True) is False  # acks_late never retakes an end


def test_a_settled_resume_reopens_for_retry_and_defers_again(store: Store) -> None:
    fired(store, "a")
    assert store.begin_resume("a", 1, settle=True) is True
    store.reopen_resume("a", 1)  # the method called self.retry()
    assert state(store, "a") == RESUMED
    assert store.begin_resume("a", 1, settle=True) is True
    stored = store.save_deferral(deferral("a"))  # the method deferred again
    assert stored.generation == 2 and state(store, "a") == DEFERRED


def test_a_deferral_after_its_ended_row_is_gone_keeps_counting_generations(
    store: Store,
) -> None:
    # The method ran past defer_ended_retention and its row was deleted: a
    # stale generation-1 resume must not claim the new deferral.
    again = dataclasses.replace(deferral("a"), after_generation=3)
    assert store.save_deferral(again).generation == 4
    assert store.save_deferral(deferral("b")).generation == 1


def test_delete_ended_deletes_only_old_ended_rows(store: Store) -> None:
    for task_id in ("a", "b", "c"):
        fired(store, task_id)
    assert store.begin_resume("a", 1, settle=True) is True
    assert store.begin_resume("b", 1, settle=True) is True
    assert store.begin_resume("c", 1) is True  # running: never deleted
    now = datetime.now(timezone.utc)
    assert store.delete_ended(now - timedelta(minutes=1), 10) == 0  # too recent
    assert store.delete_ended(now + timedelta(minutes=1), 1) == 1  # the limit holds
    assert store.delete_ended(now + timedelta(minutes=1), 10) == 1
    assert store.describe_deferral("a") is None and store.describe_deferral("b") is None
    assert state(store, "c") == RUNNING
    assert [s.task_id for s in store.list_deferrals()] == ["c"]
    assert store.list_deferrals(states=["ended"]) == []


# -- sweeping -------------------------------------------------------------------------------


def test_claim_timed_out_takes_due_deferrals_once(store: Store, backend: Backend) -> None:
    now = backend.now()
    due = store.save_deferral(deferral("due", now - timedelta(minutes=1)))
    store.save_deferral(deferral("later", now + timedelta(hours=1)))
    store.save_deferral(deferral("never"))
    timeout = json.dumps({"error": "TriggerTimeout"})
    assert store.claim_timed_out(now, timeout, 10) == [order("due", outcome=timeout)]
    assert [state(store, t) for t in ("due", "later", "never")] == [FIRING, DEFERRED, DEFERRED]
    assert store.claim_timed_out(now, timeout, 10) == []
    # The trigger firing late loses the race: nothing resumes twice.
    assert store.fire([TriggerOutcome(due.trigger_id, EVENT)]) == []


def test_claim_timed_out_respects_limit_oldest_first(store: Store, backend: Backend) -> None:
    now = backend.now()
    for minutes, task_id in [(1, "c"), (3, "a"), (2, "b")]:
        store.save_deferral(deferral(task_id, now - timedelta(minutes=minutes)))
    assert [o.task_id for o in store.claim_timed_out(now, '"t"', 2)] == ["a", "b"]
    assert [o.task_id for o in store.claim_timed_out(now, '"t"', 2)] == ["c"]


def test_stuck_firing_returns_only_firing_rows_older_than_cutoff(
    store: Store, backend: Backend
) -> None:
    fired(store, "firing")
    store.mark_resumed([fired(store, "resumed")])
    store.save_deferral(deferral("deferred"))
    now = backend.now()
    assert store.stuck_firing(now - timedelta(minutes=1), 10) == []
    assert store.stuck_firing(now + timedelta(minutes=1), 10) == [order("firing")]
    assert store.stuck_firing(now + timedelta(minutes=1), 0) == []
    # Stuck rows are reported, not claimed: asking again finds them again.
    assert store.stuck_firing(now + timedelta(minutes=1), 10) == [order("firing")]


def test_unclaimed_resumes_are_published_ones_no_worker_took(
    store: Store, backend: Backend
) -> None:
    fired(store, "firing")
    store.mark_resumed([fired(store, "resumed")])
    store.mark_resumed([fired(store, "running")])
    assert store.begin_resume("running", 1) is True
    store.save_deferral(deferral("deferred"))
    now = backend.now()
    assert store.unclaimed_resumes(now - timedelta(minutes=1), 10) == []
    assert store.unclaimed_resumes(now + timedelta(minutes=1), 10) == [order("resumed")]
    assert store.unclaimed_resumes(now + timedelta(minutes=1), 0) == []


def test_mark_resumed_again_restarts_the_unclaimed_clock(store: Store, backend: Backend) -> None:
    resume = fired(store, "a")
    store.mark_resumed([resume])
    backend.advance(timedelta(minutes=10))
    cutoff = backend.now() - timedelta(minutes=1)
    assert store.unclaimed_resumes(cutoff, 10) == [order("a")]
    store.mark_resumed([resume])  # the sweep published it again
    assert store.unclaimed_resumes(cutoff, 10) == []
    assert state(store, "a") == RESUMED


def test_delete_unused_triggers_keeps_referenced_ones(store: Store, backend: Backend) -> None:
    store.save_deferral(deferral("a"))
    current_a = store.save_deferral(deferral("a")).trigger_id  # the first trigger is orphaned
    b = store.save_deferral(deferral("b")).trigger_id
    assert store.delete_unused_triggers() == 1
    assert backend.trigger_ids() == {current_a, b}
    assert store.delete_unused_triggers() == 0


# -- triggerers -----------------------------------------------------------------------------


def test_unregister_triggerer_releases_its_triggers(store: Store) -> None:
    store.register_triggerer("leaving", "host", 1, 10)
    store.register_triggerer("staying", "host", 2, 10)
    ids = {store.save_deferral(deferral(f"t{i}")).trigger_id for i in range(3)}
    store.claim_triggers("leaving", 10, HEALTH)
    assert store.unregister_triggerer("leaving") == 3
    assert store.held_trigger_ids("leaving") == set()
    assert store.heartbeat("leaving") is False
    assert {c.id for c in store.claim_triggers("staying", 10, HEALTH)} == ids
    assert store.unregister_triggerer("nobody") == 0
    assert store.heartbeat("nobody") is False


def test_triggers_of_an_unregistered_triggerer_are_released(store: Store, backend: Backend) -> None:
    store.register_triggerer("alive", "host", 1, 10)
    store.register_triggerer("reaped", "host", 2, 10)
    kept = {store.save_deferral(deferral(f"k{i}")).trigger_id for i in range(2)}
    assert {c.id for c in store.claim_triggers("alive", 10, HEALTH)} == kept
    orphans = {store.save_deferral(deferral(f"o{i}")).trigger_id for i in range(3)}
    assert {c.id for c in store.claim_triggers("reaped", 10, HEALTH)} == orphans
    # Reaped (declared dead) by another triggerer after its last claim committed.
    backend.forget_triggerer("reaped")
    assert store.release_orphaned_triggers() == 3
    assert store.held_trigger_ids("reaped") == set()
    assert store.held_trigger_ids("alive") == kept
    assert store.release_orphaned_triggers() == 0
    assert {c.id for c in store.claim_triggers("alive", 10, HEALTH)} == orphans


def test_release_triggers_releases_only_the_given_ids(store: Store) -> None:
    t1, t2, t3 = (store.save_deferral(deferral(f"t{i}")).trigger_id for i in range(3))
    store.claim_triggers("a", 10, HEALTH)
    store.release_triggers("a", [t1, t2])
    assert store.held_trigger_ids("a") == {t3}
    assert {c.id for c in store.claim_triggers("b", 10, HEALTH)} == {t1, t2}
    store.release_triggers("a", [t1])  # no longer a's: untouched
    store.release_triggers("a", [])
    assert store.held_trigger_ids("b") == {t1, t2}
    assert store.held_trigger_ids("a") == {t3}


# -- error translation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://root@127.0.0.1:1/test",  # nothing listens on port 1
        "sqlite:////nonexistent-dir/defer_x.db",
    ],
)
def test_unreachable_database_raises_store_error(url: str, make_store: MakeStore) -> None:
    store = make_store(url)
    with pytest.raises(StoreError) as caught:
        store.save_deferral(deferral("a"))
    assert not isinstance(caught.value, (SchemaMissing, sa.exc.SQLAlchemyError))


@pytest.mark.integration
def test_missing_postgres_database_is_not_schema_missing(
    postgres_url: str, make_store: MakeStore
) -> None:
    # The database name contains "defer_": it must not pass for a missing table.
    url = sa.engine.make_url(postgres_url).set(database="celery_defer_no_such_db")
    store = make_store(url.render_as_string(hide_password=False))
    with pytest.raises(StoreError) as caught:
        store.get_deferral("a")
    assert not isinstance(caught.value, SchemaMissing)


@pytest.mark.parametrize(
    "url", ["not a url", "", "nosuchdialect://x", "postgresql+nodriver://h/db"]
)
def test_bad_url_raises_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError):
        SqlStore(url)


def test_a_timeout_deletes_the_trigger_no_one_else_waits_on(store: Store, backend: Backend) -> None:
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    alone = store.save_deferral(deferral("alone", timeout_at=past)).trigger_id
    shared = store.save_deferral(deferral("first", timeout_at=past)).trigger_id
    backend.add_waiter(deferral("second"), shared)  # waits on the same trigger, no timeout
    timed_out = store.claim_timed_out(datetime.now(timezone.utc), EVENT, 10)
    assert {o.task_id for o in timed_out} == {"alone", "first"}
    assert alone not in backend.trigger_ids()  # nobody waits on it any more
    assert shared in backend.trigger_ids()  # "second" still does
    assert store.delete_unused_triggers() == 0  # nothing left for the safety net

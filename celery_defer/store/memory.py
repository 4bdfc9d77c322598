"""The in-memory store: the whole :class:`~celery_defer.store.base.Store` contract, in one process.

``defer_database_url = "memory://"`` selects it; tests may also build one
directly (:class:`celery_defer.testing.InMemoryStore`). It is procrastinate's
``InMemoryConnector`` and dramatiq's ``StubBroker`` for celery-defer: unit
tests, eager use and a worker with an embedded triggerer in the same process
run on it with no database, and the same contract tests run on it as on SQLite
and PostgreSQL, so it cannot drift from the real store's semantics.

Every method holds one lock for its whole body, which makes it one
transaction: the conditional state changes (``deferred`` → ``firing`` →
``resumed`` → ``running``) and the claims are as exclusive as the SQL store's
row locks. It starts no thread. Every "now" comes from the injected clock, so a
test moves time by moving the clock, not by rewriting stored timestamps.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta

from celery_defer.exceptions import StoreError
from celery_defer.store.base import Clock, Listener, Store, system_clock
from celery_defer.store.memory_rotation import rewrite_in_batches
from celery_defer.store.memory_tables import (
    DeferralRow,
    SaveListener,
    Tables,
    TriggererRow,
    TriggerRow,
    utc,
    utc_or_none,
)
from celery_defer.store.records import (
    DEFERRED,
    ENDED,
    FIRING,
    RESUMED,
    RUNNING,
    Cancelled,
    ClaimedTrigger,
    DeferralDetail,
    DeferralInfo,
    DeferralState,
    DeferralSummary,
    ExternalEvent,
    NewDeferral,
    ResumeOrder,
    Rewritten,
    StoredDeferral,
    StoreStats,
    TriggerOutcome,
    claimable_states,
)

__all__ = ["InMemoryStore"]

logger = logging.getLogger(__name__)


class InMemoryStore(Store):
    """A :class:`~celery_defer.store.base.Store` in this process's memory, guarded by one lock.

    For tests, eager use, and a worker with an embedded triggerer in one
    process: another process never sees it, and it is gone when the process
    ends. ``clock`` is a zero-argument callable returning an aware UTC
    datetime (default: the wall clock); every timestamp the store writes or
    compares against comes from it, so a test can move time without sleeping.
    Records carry aware UTC datetimes.
    """

    def __init__(self, *, clock: Clock | None = None) -> None:
        self._clock: Clock = clock or system_clock
        self._lock = threading.Lock()
        self._listeners: set[Callable[[], None]] = set()
        # Ids keep counting across reset(): a late outcome or notice for a trigger
        # forgotten by a reset must never land on a new one (the SQL store never
        # reuses an id either).
        self._trigger_ids = itertools.count(1)
        self._event_ids = itertools.count(1)
        self.reset()

    def reset(self) -> None:
        """Forget every deferral, trigger, triggerer and event (between tests)."""
        with self._lock:
            self._tables = Tables()

    @property
    def tables(self) -> Tables:
        """The rows, for tests that look beneath the interface (as SQL tests read tables).

        As procrastinate's ``InMemoryConnector`` shows its jobs. Change them
        only to set up a state the interface cannot reach, with no other
        thread using the store.
        """
        return self._tables

    def _now(self) -> datetime:
        return utc(self._clock(), "the clock's now")

    # -- schema and connections (nothing to do) -------------------------------

    def create_schema(self) -> None:
        """Nothing to create: the "tables" exist as soon as the store does."""

    def close(self) -> None:
        """Nothing to release; the rows stay (a closed SQL store keeps them too)."""

    # -- task side ---------------------------------------------------------

    #: A save calls the listeners of this store directly (every triggerer that can see an
    #: in-memory store lives in its process).
    notifies_new_triggers = True

    def new_trigger_listener(self, on_notice: Callable[[], None]) -> Listener | None:
        """A listener called by every :meth:`save_deferral` of this store."""
        return SaveListener(self._listeners, on_notice)

    def save_deferral(self, deferral: NewDeferral) -> StoredDeferral:
        stored = self._save(deferral)
        for on_notice in (
            list(self._listeners) if deferral.announce else ()
        ):  # outside the lock: they may call the store
            on_notice()
        return stored

    def _save(self, deferral: NewDeferral) -> StoredDeferral:
        with self._lock:
            now = self._now()
            trigger = TriggerRow(
                next(self._trigger_ids),
                deferral.trigger_classpath,
                deferral.trigger_kwargs,
                now,
                wakes_at=utc_or_none(deferral.wakes_at, "wakes_at"),
            )
            self._tables.triggers[trigger.id] = trigger
            previous = self._tables.deferrals.get(deferral.task_id)
            self._tables.deferrals[deferral.task_id] = DeferralRow(
                task_id=deferral.task_id,
                task_name=deferral.task_name,
                trigger_id=trigger.id,
                method=deferral.method,
                kwargs=deferral.kwargs,
                request=deferral.request,
                state=DEFERRED,
                outcome=None,
                generation=(
                    deferral.after_generation + 1 if previous is None else previous.generation + 1
                ),
                timeout_at=utc_or_none(deferral.timeout_at, "timeout_at"),
                created_at=now if previous is None else previous.created_at,
                updated_at=now,
            )
            return StoredDeferral(trigger.id, self._tables.deferrals[deferral.task_id].generation)

    def begin_resume(
        self, task_id: str, generation: int, *, reclaim: bool = False, settle: bool = False
    ) -> bool:
        states = claimable_states(reclaim=reclaim, settle=settle)
        return self._move(task_id, generation, states, ENDED if settle else RUNNING)

    def reopen_resume(self, task_id: str, generation: int) -> None:
        self._move(task_id, generation, (RUNNING, ENDED), RESUMED)

    def _move(
        self, task_id: str, generation: int, states: Iterable[str], to: DeferralState
    ) -> bool:
        """Move one deferral of this generation from one of ``states`` to ``to``."""
        with self._lock:
            row = self._tables.deferrals.get(task_id)
            if row is None or row.generation != generation or row.state not in states:
                return False
            row.state, row.updated_at = to, self._now()
            return True

    def finish(self, task_id: str, generation: int) -> None:
        self._move(task_id, generation, (RUNNING,), ENDED)

    def delete_ended(self, older_than: datetime, limit: int) -> int:
        with self._lock:
            return self._tables.delete_ended(utc(older_than), limit)

    # -- triggerers --------------------------------------------------------

    def register_triggerer(self, triggerer_id: str, host: str, pid: int, capacity: int) -> None:
        with self._lock:
            if triggerer_id in self._tables.triggerers:
                # The SQL store's primary key refuses it the same way.
                raise StoreError(
                    f"register_triggerer failed: triggerer {triggerer_id!r} is already registered"
                )
            now = self._now()
            self._tables.triggerers[triggerer_id] = TriggererRow(
                triggerer_id, host, pid, capacity, started_at=now, heartbeat_at=now
            )

    def heartbeat(self, triggerer_id: str) -> bool:
        now = self._now()
        with self._lock:
            row = self._tables.triggerers.get(triggerer_id)
            if row is None:
                return False
            row.heartbeat_at = now
            return True

    def unregister_triggerer(self, triggerer_id: str) -> int:
        with self._lock:
            self._tables.triggerers.pop(triggerer_id, None)
            return self._tables.release(lambda t: t.triggerer_id == triggerer_id)

    def release_triggers(self, triggerer_id: str, trigger_ids: Sequence[int]) -> None:
        wanted = set(trigger_ids)
        with self._lock:
            self._tables.release(lambda t: t.id in wanted and t.triggerer_id == triggerer_id)

    def claim_triggers(
        self, triggerer_id: str, limit: int, health_timeout: float, horizon: float | None = None
    ) -> list[ClaimedTrigger]:
        if limit <= 0:
            return []
        with self._lock:
            cutoff = self._now() - timedelta(seconds=health_timeout)
            dead = {t.id for t in self._tables.triggerers.values() if t.heartbeat_at < cutoff}
            if dead:
                logger.warning(
                    "taking over the triggers of silent triggerers %s",
                    sorted(dead),
                    extra={"dead_triggerers": sorted(dead)},
                )
                self._tables.release(lambda t: t.triggerer_id in dead)
                for gone in dead:
                    del self._tables.triggerers[gone]
            near = None if horizon is None else self._now() + timedelta(seconds=horizon)
            unowned = self._tables.claimable(near)
            if near is not None:
                limit = self._tables.fair_limit(triggerer_id, limit, len(unowned))
            claimed: list[ClaimedTrigger] = []
            for trigger in unowned[:limit]:
                trigger.triggerer_id = triggerer_id
                claimed.append(ClaimedTrigger(trigger.id, trigger.classpath, trigger.kwargs))
            return claimed

    def held_trigger_ids(self, triggerer_id: str) -> set[int]:
        with self._lock:
            return {t.id for t in self._tables.triggers.values() if t.triggerer_id == triggerer_id}

    # -- firing and resuming -----------------------------------------------

    def fire(self, outcomes: Sequence[TriggerOutcome]) -> list[ResumeOrder]:
        if not outcomes:
            return []
        by_trigger = {o.trigger_id: o.outcome for o in outcomes}
        with self._lock:
            now = self._now()
            waiting = self._tables.waiting_on(by_trigger)
            orders = [row.to_firing(by_trigger[trigger_id], now) for trigger_id, row in waiting]
            self._tables.delete_triggers(by_trigger)
            return orders

    def mark_resumed(self, orders: Sequence[ResumeOrder]) -> None:
        with self._lock:
            now = self._now()
            for order in orders:
                row = self._tables.deferrals.get(order.task_id)
                if row and row.generation == order.generation and row.state in (FIRING, RESUMED):
                    row.state, row.updated_at = RESUMED, now

    # -- sweeping ----------------------------------------------------------

    def claim_timed_out(self, now: datetime, outcome: str, limit: int) -> list[ResumeOrder]:
        with self._lock:
            due = self._tables.timed_out(utc(now), limit)
            waited_on = {row.trigger_id for row in due if row.trigger_id is not None}
            # updated_at is the store's now, as in the SQL store: the sweep's
            # ``now`` may be a moved timer clock (celery_defer.testing.fast_forward).
            stamp = self._now()
            orders = [row.to_firing(outcome, stamp) for row in due]
            self._tables.delete_unused_of(waited_on)  # as the SQL store's timeout does
            return orders

    def stuck_firing(self, older_than: datetime, limit: int) -> list[ResumeOrder]:
        return self._left_in(FIRING, older_than, limit)

    def unclaimed_resumes(self, older_than: datetime, limit: int) -> list[ResumeOrder]:
        return self._left_in(RESUMED, older_than, limit)

    def _left_in(self, state: str, older_than: datetime, limit: int) -> list[ResumeOrder]:
        """The oldest deferrals in ``state`` since before ``older_than``; reported, not moved."""
        with self._lock:
            return [row.order() for row in self._tables.left_in(state, utc(older_than), limit)]

    def delete_unused_triggers(self) -> int:
        with self._lock:
            needed = {row.trigger_id for row in self._tables.deferrals.values()}
            unused = [i for i in self._tables.triggers if i not in needed]
            self._tables.delete_triggers(unused)
            return len(unused)

    def release_orphaned_triggers(self) -> int:
        with self._lock:
            return self._tables.release(lambda t: t.triggerer_id not in self._tables.triggerers)

    # -- cancel and inspection -----------------------------------------------

    def get_deferral(self, task_id: str) -> DeferralInfo | None:
        with self._lock:
            return self._tables.info(task_id)

    def cancel_deferrals(self, task_ids: Sequence[str]) -> Cancelled:
        with self._lock:
            deferrals = self._tables.deferrals
            cancelled = [
                row
                for task_id in dict.fromkeys(task_ids)
                if (row := deferrals.get(task_id)) is not None
                and row.state in (DEFERRED, FIRING, RESUMED)
            ]
            for row in cancelled:
                del deferrals[row.task_id]
            candidates = {row.trigger_id for row in cancelled if row.trigger_id is not None}
            unneeded = sorted(candidates - {row.trigger_id for row in deferrals.values()})
            self._tables.delete_triggers(unneeded)
            return Cancelled(task_ids=[row.task_id for row in cancelled], trigger_ids=unneeded)

    def list_deferrals(
        self,
        states: Sequence[str] = (),
        task_name: str | None = None,
        trigger_contains: str | None = None,
        limit: int = 100,
    ) -> list[DeferralSummary]:
        with self._lock:
            return self._tables.summaries(states, task_name, trigger_contains)[: max(limit, 0)]

    def describe_deferral(self, task_id: str) -> DeferralDetail | None:
        with self._lock:
            row = self._tables.deferrals.get(task_id)
            return None if row is None else row.detail(self._tables.trigger_of(row))

    def stats(self) -> StoreStats:
        with self._lock:
            return self._tables.stats()

    # -- external events -----------------------------------------------------

    def add_event(self, key: str, payload: str) -> ExternalEvent:
        with self._lock:
            event = ExternalEvent(next(self._event_ids), key, payload, self._now())
            self._tables.add_event(event)
            return event

    def latest_events(self, keys: Sequence[str], not_before: datetime) -> dict[str, ExternalEvent]:
        with self._lock:
            return self._tables.latest_events(keys, utc(not_before))

    def delete_events(self, older_than: datetime, limit: int) -> int:
        with self._lock:
            return self._tables.delete_events(utc(older_than), limit)

    # -- key rotation --------------------------------------------------------

    def rewrite_user_values(
        self, rewrite: Callable[[str], str | None], batch_size: int = 500
    ) -> Rewritten:
        """Rewrite in batches, with ``rewrite`` called outside the lock.

        As the SQL store calls it outside any transaction: it may be slow, and
        it may itself use the store.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return Rewritten(
            deferrals=rewrite_in_batches(
                self._lock,
                lambda: (
                    (r.task_id, r.kwargs, r.generation) for r in self._tables.deferrals.values()
                ),
                self._tables.set_kwargs,
                rewrite,
                batch_size,
            ),
            triggers=rewrite_in_batches(
                self._lock,
                lambda: ((t.id, t.kwargs, 0) for t in self._tables.triggers.values()),
                lambda trigger_id, _, new: self._tables.set_trigger_kwargs(trigger_id, new),
                rewrite,
                batch_size,
            ),
        )

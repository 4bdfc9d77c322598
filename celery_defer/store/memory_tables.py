"""The tables of the in-memory store, and its read-only queries over them.

Kept apart from :mod:`celery_defer.store.memory`, which owns the lock, the
clock and the state changes: here are the rows (mutable, so never returned by
a store method; tests may look at them through ``InMemoryStore.tables``), the
records they are read as (the frozen types of :mod:`celery_defer.store.records`,
the same the SQL store returns), and the selections the operations build on
(what waits on a trigger, what timed out, inspection, events). None of this
locks: every caller holds the store's lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

from celery_defer.store.records import (
    DEFERRED,
    ENDED,
    FIRING,
    DeferralDetail,
    DeferralInfo,
    DeferralState,
    DeferralSummary,
    ExternalEvent,
    ResumeOrder,
    StoreStats,
    TriggererStatus,
)

__all__ = [
    "MEMORY_URL",
    "SaveListener",
    "Tables",
    "is_memory_url",
    "utc",
    "utc_or_none",
]

#: The ``defer_database_url`` that selects the in-memory store.
MEMORY_URL = "memory://"


def is_memory_url(url: str) -> bool:
    """Whether ``defer_database_url`` names the in-memory store (``memory://``)."""
    return url.strip().lower() == MEMORY_URL


def utc(moment: datetime, name: str = "datetime") -> datetime:
    """``moment`` in UTC; a naive one is refused with a ValueError naming it, as the SQL
    store does (:func:`celery_defer.store.sql.columns.aware_utc`)."""
    if moment.utcoffset() is None:
        raise ValueError(f"the store takes aware UTC datetimes; {name} is naive: {moment!r}")
    return moment.astimezone(timezone.utc)


def utc_or_none(moment: datetime | None, name: str) -> datetime | None:
    """:func:`utc` of an optional datetime."""
    return None if moment is None else utc(moment, name)


@dataclass
class TriggerRow:
    """A trigger: what to run, and which triggerer (if any) runs it."""

    id: int
    classpath: str
    kwargs: str
    created_at: datetime
    triggerer_id: str | None = None
    #: A timer's moment (see ``BaseTrigger.wakes_at``).
    wakes_at: datetime | None = None


@dataclass
class DeferralRow:
    """A deferral, keyed by task id; ``trigger_id`` is None once it left ``deferred``."""

    task_id: str
    task_name: str
    trigger_id: int | None
    method: str
    kwargs: str
    request: str
    state: DeferralState
    outcome: str | None
    generation: int
    timeout_at: datetime | None
    created_at: datetime
    updated_at: datetime

    def to_firing(self, outcome: str, now: datetime) -> ResumeOrder:
        """Store the outcome, leave the trigger, and return the resume to publish."""
        self.state, self.outcome, self.trigger_id, self.updated_at = FIRING, outcome, None, now
        return self.order()

    def order(self) -> ResumeOrder:
        """The resume order of this deferral, with the outcome it stores."""
        # Only deferrals past 'deferred' are resumed, and those all store an outcome.
        assert self.outcome is not None
        return ResumeOrder.of(self)

    def summary(self, trigger: TriggerRow | None) -> DeferralSummary:
        """This deferral as ``celery defer list`` shows it (no user values)."""
        return DeferralSummary(
            task_id=self.task_id,
            task_name=self.task_name,
            state=self.state,
            generation=self.generation,
            method=self.method,
            trigger_id=self.trigger_id,
            trigger_classpath=None if trigger is None else trigger.classpath,
            triggerer_id=None if trigger is None else trigger.triggerer_id,
            timeout_at=self.timeout_at,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )

    def detail(self, trigger: TriggerRow | None) -> DeferralDetail:
        """This deferral with its stored values, as ``celery defer show`` shows it."""
        return DeferralDetail(
            **self.summary(trigger).__dict__,
            kwargs=self.kwargs,
            trigger_kwargs=None if trigger is None else trigger.kwargs,
            outcome=self.outcome,
        )


@dataclass
class TriggererRow:
    """A registered triggerer and its last heartbeat."""

    id: str
    host: str
    pid: int
    capacity: int
    started_at: datetime
    heartbeat_at: datetime


@dataclass
class Tables:
    """Every row of one in-memory store; :meth:`InMemoryStore.reset` replaces the lot."""

    triggers: dict[int, TriggerRow] = field(default_factory=dict)  # in id order: ids only grow
    deferrals: dict[str, DeferralRow] = field(default_factory=dict)
    triggerers: dict[str, TriggererRow] = field(default_factory=dict)
    events: dict[str, dict[int, ExternalEvent]] = field(default_factory=dict)  # by key, id order

    # -- triggers ------------------------------------------------------------

    def release(self, which: Callable[[TriggerRow], bool]) -> int:
        """Hand back the owned triggers ``which`` picks; returns how many."""
        released = 0
        for trigger in self.triggers.values():
            if trigger.triggerer_id is not None and which(trigger):
                trigger.triggerer_id = None
                released += 1
        return released

    def delete_triggers(self, trigger_ids: Iterable[int]) -> None:
        """Delete triggers; a deferral still naming one loses it (SQL's ``ON DELETE SET NULL``)."""
        gone = {i for i in trigger_ids if self.triggers.pop(i, None) is not None}
        if gone:
            for row in self.deferrals.values():
                if row.trigger_id in gone:
                    row.trigger_id = None

    def trigger_of(self, row: DeferralRow) -> TriggerRow | None:
        """The trigger row a deferral waits on, if it still has one."""
        return None if row.trigger_id is None else self.triggers.get(row.trigger_id)

    # -- deferrals -------------------------------------------------------------

    def waiting_on(self, trigger_ids: Container[int]) -> list[tuple[int, DeferralRow]]:
        """Deferrals still waiting on these triggers, in (trigger, task) order.

        The order the SQL store locks and returns them in.
        """
        return sorted(
            (
                (row.trigger_id, row)
                for row in self.deferrals.values()
                if row.state == DEFERRED
                and row.trigger_id is not None
                and row.trigger_id in trigger_ids
            ),
            key=lambda found: (found[0], found[1].task_id),
        )

    def timed_out(self, moment: datetime, limit: int) -> list[DeferralRow]:
        """Up to ``limit`` waiting deferrals whose timeout is before ``moment``, soonest first."""
        due = [
            (row.timeout_at, row.task_id, row)
            for row in self.deferrals.values()
            if row.state == DEFERRED and row.timeout_at is not None and row.timeout_at < moment
        ]
        return [row for *_, row in sorted(due, key=lambda found: found[:2])[: max(limit, 0)]]

    def left_in(self, state: str, cutoff: datetime, limit: int) -> list[DeferralRow]:
        """Up to ``limit`` deferrals left in ``state`` since before ``cutoff``, oldest first."""
        rows = [r for r in self.deferrals.values() if r.state == state and r.updated_at < cutoff]
        return sorted(rows, key=lambda row: (row.updated_at, row.task_id))[: max(limit, 0)]

    # -- key rotation --------------------------------------------------------

    def set_kwargs(self, task_id: str, generation: int, kwargs: str) -> bool:
        """Store new kwargs if the task did not defer again meanwhile."""
        row = self.deferrals.get(task_id)
        if row is None or row.generation != generation:
            return False
        row.kwargs = kwargs
        return True

    def set_trigger_kwargs(self, trigger_id: int, kwargs: str) -> bool:
        """Store new kwargs if the trigger still exists (they never change otherwise)."""
        trigger = self.triggers.get(trigger_id)
        if trigger is None:
            return False
        trigger.kwargs = kwargs
        return True

    # -- deleting --------------------------------------------------------------

    def delete_ended(self, cutoff: datetime, limit: int) -> int:
        """Delete up to ``limit`` ended deferrals last updated before ``cutoff``, oldest first."""
        ended = sorted(
            (r for r in self.deferrals.values() if r.state == ENDED and r.updated_at < cutoff),
            key=lambda r: r.updated_at,
        )
        for row in ended[: max(limit, 0)]:
            del self.deferrals[row.task_id]
        return min(len(ended), max(limit, 0))

    def delete_unused_of(self, trigger_ids: set[int]) -> None:
        """Delete those of ``trigger_ids`` no deferral waits on any more."""
        still = {row.trigger_id for row in self.deferrals.values()}
        self.delete_triggers([i for i in trigger_ids if i not in still])

    # -- claiming --------------------------------------------------------------

    def claimable(self, near: datetime | None) -> list[TriggerRow]:
        """Unowned triggers in claim order: by id; with ``near``, timers before it first.

        With ``near`` (now plus the horizon), a timer not before it is left out,
        as the SQL store's claim leaves it a row.
        """
        unowned = [t for t in self.triggers.values() if t.triggerer_id is None]
        if near is None:
            return unowned
        timers = sorted(
            (t for t in unowned if t.wakes_at is not None and t.wakes_at < near),
            key=lambda t: (t.wakes_at, t.id),
        )
        return timers + [t for t in unowned if t.wakes_at is None]

    def fair_limit(self, triggerer_id: str, limit: int, waiting: int) -> int:
        """The SQL store's fair share (``store.sql.triggerers``) of ``waiting`` triggers."""
        live = len(self.triggerers)
        if live <= 1:
            return limit
        if not waiting:
            return 0
        owners = [t.triggerer_id for t in self.triggers.values()]
        owned = sum(1 for owner in owners if owner is not None)
        mine = sum(1 for owner in owners if owner == triggerer_id)
        fair = -(-(owned + waiting) // live) - mine
        return min(limit, max(fair, -(-waiting // live)))

    # -- inspection ------------------------------------------------------------

    def info(self, task_id: str) -> DeferralInfo | None:
        """What the inspection commands show of one deferral."""
        row = self.deferrals.get(task_id)
        if row is None or row.state == ENDED:  # no deferral any more
            return None
        return DeferralInfo.of(row)

    def oldest_first(self) -> list[DeferralRow]:
        """Deferrals by when the task first deferred (then by task id, for ties)."""
        return sorted(self.deferrals.values(), key=lambda row: (row.created_at, row.task_id))

    def summaries(
        self, states: Sequence[str], task_name: str | None, trigger_contains: str | None
    ) -> list[DeferralSummary]:
        """Deferrals, oldest first, filtered as ``celery defer list`` asks.

        ``trigger_contains`` is a plain, case-sensitive substring (as PostgreSQL's
        ``LIKE`` with escaped wildcards); a deferral without a trigger never matches it.
        """
        found = []
        for row in self.oldest_first():
            trigger = self.trigger_of(row)
            if (row.state not in states) if states else row.state == ENDED:
                continue
            if task_name and row.task_name != task_name:
                continue
            if trigger_contains and (trigger is None or trigger_contains not in trigger.classpath):
                continue
            found.append(row.summary(trigger))
        return found

    def stats(self) -> StoreStats:
        """Counts by state and by triggerer, as the SQL store's stats query gives them."""
        running: dict[str | None, int] = {}
        for trigger in self.triggers.values():
            running[trigger.triggerer_id] = running.get(trigger.triggerer_id, 0) + 1
        by_state = dict.fromkeys(DeferralState, 0)
        for row in self.deferrals.values():
            by_state[row.state] += 1
        oldest = min(
            (r for r in self.deferrals.values() if r.state != ENDED),
            key=lambda r: (r.created_at, r.task_id),
            default=None,
        )
        triggerers = sorted(self.triggerers.values(), key=lambda t: (t.started_at, t.id))
        return StoreStats(
            triggerers=[
                TriggererStatus(
                    id=t.id,
                    host=t.host,
                    pid=t.pid,
                    capacity=t.capacity,
                    running=running.get(t.id, 0),
                    started_at=t.started_at,
                    heartbeat_at=t.heartbeat_at,
                )
                for t in triggerers
            ],
            by_state=by_state,
            oldest=None if oldest is None else oldest.summary(self.trigger_of(oldest)),
            unowned_triggers=running.get(None, 0),
        )

    # -- external events --------------------------------------------------------

    def add_event(self, event: ExternalEvent) -> None:
        """Keep an external event under its key."""
        self.events.setdefault(event.key, {})[event.id] = event

    def latest_events(self, keys: Iterable[str], cutoff: datetime) -> dict[str, ExternalEvent]:
        """The newest event (by id, as in the SQL store) of each key at or after ``cutoff``."""
        found: dict[str, ExternalEvent] = {}
        for key in set(keys):
            for event in reversed(self.events.get(key, {}).values()):
                if event.created_at >= cutoff:
                    found[key] = event
                    break
        return found

    def delete_events(self, cutoff: datetime, limit: int) -> int:
        """Delete up to ``limit`` of the oldest events created before ``cutoff``."""
        old = sorted(
            (
                e
                for events in self.events.values()
                for e in events.values()
                if e.created_at < cutoff
            ),
            key=lambda e: (e.created_at, e.id),
        )[: max(limit, 0)]
        for event in old:
            del self.events[event.key][event.id]
            if not self.events[event.key]:
                del self.events[event.key]
        return len(old)


class SaveListener:
    """The in-memory store's new-trigger listener: ``on_notice`` is called by every save
    while started."""

    def __init__(self, listeners: set[Callable[[], None]], on_notice: Callable[[], None]) -> None:
        self._listeners = listeners
        self._on_notice = on_notice
        self.ready = threading.Event()

    def start(self) -> None:
        """Be called from the next save on."""
        self._listeners.add(self._on_notice)
        self.ready.set()

    def stop(self) -> None:
        """Be called no more."""
        self._listeners.discard(self._on_notice)

    def join(self, timeout: float | None = None) -> None:
        """Nothing runs in the background."""

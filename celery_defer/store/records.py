"""Plain records passed across the store boundary.

The store speaks in these small frozen dataclasses so that no caller ever sees
a SQLAlchemy row, and an in-memory store can return the very same types.
Values that users supply (kwargs, trigger kwargs, events) cross as typed-JSON
text (see :mod:`celery_defer.serialization`); the store never interprets them.
Every datetime a record carries, and every datetime a store method takes, is
timezone-aware UTC: what a column needs (naive UTC on SQLite and MySQL) is the
SQL store's business alone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class DeferralState(str, enum.Enum):
    """Where a deferral row is on its way from deferring to resuming.

    The values are what the ``state`` column holds. Not to be confused with
    :data:`celery_defer.DEFERRED`, the *Celery task state* a deferred task
    shows in the result backend: that one is about the task, this one about
    the store's row.
    """

    #: The deferral waits for its trigger.
    DEFERRED = "deferred"
    #: Its trigger fired (or it timed out): the outcome is stored, the resume not yet sent.
    FIRING = "firing"
    #: The resume message was published; no worker has claimed it yet.
    RESUMED = "resumed"
    #: A worker claimed the resume and is running the method.
    RUNNING = "running"
    #: The resume ran (or is running, claimed by a worker that does not ack late:
    #: its claim is its only write). Kept ``defer_ended_retention`` seconds for
    #: ``celery defer show``, then deleted by the sweep; not a deferral any more.
    ENDED = "ended"

    def __str__(self) -> str:
        """The value, as logs and CLI tables show it."""
        # The value, as in logs and CLI tables; not "DeferralState.DEFERRED".
        return str(self.value)


# Short names, kept for the code that compares states (they are the enum's members).
DEFERRED = DeferralState.DEFERRED
FIRING = DeferralState.FIRING
RESUMED = DeferralState.RESUMED
RUNNING = DeferralState.RUNNING
ENDED = DeferralState.ENDED


def claimable_states(*, reclaim: bool, settle: bool) -> tuple[DeferralState, ...]:
    """The states a resume may be claimed from (see ``Store.begin_resume``)."""
    if not reclaim:
        return (FIRING, RESUMED)
    return (FIRING, RESUMED, RUNNING, ENDED) if settle else (FIRING, RESUMED, RUNNING)


#: The state values as plain strings, for filters and CLI choices.
STATES: tuple[str, ...] = tuple(state.value for state in DeferralState)


@dataclass(frozen=True)
class NewDeferral:
    """What the task side stores when a task defers."""

    task_id: str
    task_name: str
    method: str
    kwargs: str
    request: str
    trigger_classpath: str
    trigger_kwargs: str
    timeout_at: datetime | None
    #: The generation this execution resumed (0: a first execution). A task
    #: deferring again gets a higher one even if its ended row was deleted meanwhile.
    after_generation: int = 0
    #: A timer's moment (``BaseTrigger.wakes_at``): triggerers claim it only near then.
    wakes_at: datetime | None = None
    #: Whether to wake the triggerers now (False for a timer beyond the horizon).
    announce: bool = True


@dataclass(frozen=True)
class StoredDeferral:
    """Where :meth:`Store.save_deferral` put a deferral."""

    trigger_id: int
    generation: int


@dataclass(frozen=True)
class ClaimedTrigger:
    """A trigger a triggerer now owns and must run."""

    id: int
    classpath: str
    kwargs: str


@dataclass(frozen=True)
class TriggerOutcome:
    """What a trigger ended with: its first event, or an error (typed-JSON text)."""

    trigger_id: int
    outcome: str


@dataclass(frozen=True)
class ResumeOrder:
    """A deferral whose outcome is stored and whose resume must be published."""

    task_id: str
    task_name: str
    generation: int
    method: str
    kwargs: str
    request: str
    outcome: str

    @classmethod
    def of(cls, row: Any, outcome: str | None = None) -> ResumeOrder:
        """The order of a stored deferral row (a SQL row or an in-memory one: same names).

        ``outcome``, when given, is the one about to be stored with the row.
        """
        return cls(
            task_id=row.task_id,
            task_name=row.task_name,
            generation=row.generation,
            method=row.method,
            kwargs=row.kwargs,
            request=row.request,
            outcome=row.outcome if outcome is None else outcome,
        )


@dataclass(frozen=True)
class Cancelled:
    """What :meth:`Store.cancel_deferrals` removed."""

    task_ids: list[str]
    trigger_ids: list[int]


@dataclass(frozen=True)
class DeferralInfo:
    """A deferral as inspection tools and tests see it."""

    task_id: str
    task_name: str
    state: DeferralState
    generation: int
    method: str
    trigger_id: int | None
    timeout_at: datetime | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Any) -> DeferralInfo:
        """The info of a stored deferral row (a SQL row or an in-memory one: same names)."""
        return cls(**{name: getattr(row, name) for name in _INFO_FIELDS})


_INFO_FIELDS = tuple(DeferralInfo.__dataclass_fields__)


@dataclass(frozen=True)
class ExternalEvent:
    """An event sent with ``celery_defer.send_event``; ``payload`` is typed-JSON text."""

    id: int
    key: str
    payload: str
    created_at: datetime


# -- inspection (celery_defer.store.inspection) --------------------------------


@dataclass(frozen=True)
class DeferralSummary:
    """A deferral as ``celery defer list`` shows it.

    It carries no user values: kwargs and trigger kwargs may hold secrets, and
    a listing is the kind of output that ends up pasted into a ticket.
    ``trigger_classpath`` and ``triggerer_id`` are None once the trigger
    fired (the deferral is then past ``deferred``) or while no triggerer owns it.
    """

    task_id: str
    task_name: str
    state: DeferralState
    generation: int
    method: str
    trigger_id: int | None
    trigger_classpath: str | None
    triggerer_id: str | None
    timeout_at: datetime | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class DeferralDetail(DeferralSummary):
    """One deferral with its stored values (typed-JSON text), for ``celery defer show``."""

    kwargs: str
    trigger_kwargs: str | None
    outcome: str | None


@dataclass(frozen=True)
class TriggererStatus:
    """A registered triggerer and how many triggers it owns now."""

    id: str
    host: str
    pid: int
    capacity: int
    running: int
    started_at: datetime
    heartbeat_at: datetime


@dataclass(frozen=True)
class StoreStats:
    """What ``celery defer stats`` reports: triggerers, deferrals by state, the oldest one."""

    triggerers: list[TriggererStatus]
    by_state: dict[DeferralState, int]
    oldest: DeferralSummary | None
    unowned_triggers: int


@dataclass(frozen=True)
class Rewritten:
    """How many stored user values ``rewrite_user_values`` changed, per table."""

    deferrals: int
    triggers: int

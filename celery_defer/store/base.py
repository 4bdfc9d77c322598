"""The store interface: every domain operation on deferrals and triggers.

Callers (task side, triggerer, sweep, CLI) only use these methods; each is one
transaction. Implementations translate their driver's errors into
:class:`~celery_defer.exceptions.StoreError` so nothing above ``store/``
handles database exceptions.

Every datetime crossing this interface is timezone-aware UTC, and "now" is
the store's :data:`Clock`, so a test can move time for a store without
touching its rows.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Protocol

from celery_defer.store.records import (
    Cancelled,
    ClaimedTrigger,
    DeferralDetail,
    DeferralInfo,
    DeferralSummary,
    ExternalEvent,
    NewDeferral,
    ResumeOrder,
    Rewritten,
    StoredDeferral,
    StoreStats,
    TriggerOutcome,
)

#: Where a store reads "now": a zero-argument callable returning an aware UTC
#: datetime. Every timestamp a store writes (creation, update, heartbeat, event)
#: and every "now" it compares against (a triggerer's health) comes from it,
#: never from the database's clock, so tests can move time by moving the clock.
Clock = Callable[[], datetime]


def system_clock() -> datetime:
    """The default :data:`Clock`: this machine's time, aware UTC."""
    return datetime.now(timezone.utc)


class Listener(Protocol):
    """A background listener a triggerer starts and stops with its loop."""

    #: Set once it listens (what is sent from then on is heard).
    ready: threading.Event

    def start(self) -> None:
        """Begin listening (in a thread of its own)."""

    def stop(self) -> None:
        """Ask it to stop; returns at once."""

    def join(self, timeout: float | None = None) -> None:
        """Wait for it to have stopped."""


class Store(abc.ABC):
    """Persistence of triggers, deferrals and triggerers."""

    #: Whether :meth:`save_deferral` itself wakes the triggerers (PostgreSQL's NOTIFY in the
    #: saving statement, the in-memory store's callbacks): then the task side sends no
    #: new-trigger notice through the broker (DESIGN §5: the write that makes a deferral
    #: durable is also what wakes the triggerer).
    notifies_new_triggers: bool = False

    def new_trigger_listener(self, on_notice: Callable[[], None]) -> Listener | None:  # noqa: ARG002
        """A listener calling ``on_notice`` when a deferral is saved, or None (no such means)."""
        return None

    @abc.abstractmethod
    def create_schema(self) -> None:
        """Create (or upgrade) the tables; safe to call twice."""

    @abc.abstractmethod
    def save_deferral(self, deferral: NewDeferral) -> StoredDeferral:
        """Store a new trigger and the deferral waiting on it, in one transaction.

        A task that defers again under the same id replaces its previous
        deferral with a new generation, so stale resumes can be told apart.
        """

    @abc.abstractmethod
    def begin_resume(
        self, task_id: str, generation: int, *, reclaim: bool = False, settle: bool = False
    ) -> bool:
        """Claim a published resume for execution; False means a stale duplicate.

        ``reclaim`` also takes a resume already claimed (``running``): for the
        one copy of a resume whose execution was cut off, a message redelivered
        to an ``acks_late`` task after its worker died, or a resume the worker
        re-sent itself because the store was down. ``settle`` makes the claim
        the resume's only write: the row moves straight to ``ended`` (a task
        that does not ack late: its message is acked before the method runs,
        so a crash loses that run whatever the store says); with both, an
        ``ended`` row of this generation is taken too.
        """

    @abc.abstractmethod
    def reopen_resume(self, task_id: str, generation: int) -> None:
        """Make a claimed or settled resume claimable again (the method called ``retry()``)."""

    @abc.abstractmethod
    def finish(self, task_id: str, generation: int) -> None:
        """Record that a claimed resume's execution ended (returned or raised): ``ended``."""

    @abc.abstractmethod
    def delete_ended(self, older_than: datetime, limit: int) -> int:
        """Delete up to ``limit`` ended deferrals last updated before ``older_than``."""

    @abc.abstractmethod
    def register_triggerer(self, triggerer_id: str, host: str, pid: int, capacity: int) -> None:
        """Record a running triggerer and its first heartbeat."""

    @abc.abstractmethod
    def heartbeat(self, triggerer_id: str) -> bool:
        """Refresh a triggerer's heartbeat; False if it was declared dead meanwhile."""

    @abc.abstractmethod
    def unregister_triggerer(self, triggerer_id: str) -> int:
        """Remove a triggerer and hand its triggers back; returns how many."""

    @abc.abstractmethod
    def release_triggers(self, triggerer_id: str, trigger_ids: Sequence[int]) -> None:
        """Hand some of a triggerer's triggers back for others to claim."""

    @abc.abstractmethod
    def claim_triggers(
        self, triggerer_id: str, limit: int, health_timeout: float, horizon: float | None = None
    ) -> list[ClaimedTrigger]:
        """Take up to ``limit`` unowned triggers (and those of dead triggerers).

        With ``horizon`` (seconds), a timer trigger is taken only once its
        moment is within ``horizon`` of now (soonest first, before the others);
        without, every unowned trigger is taken, in id order.
        """

    @abc.abstractmethod
    def held_trigger_ids(self, triggerer_id: str) -> set[int]:
        """The ids of triggers a triggerer owns (to stop the ones no longer needed)."""

    @abc.abstractmethod
    def fire(self, outcomes: Sequence[TriggerOutcome]) -> list[ResumeOrder]:
        """Store outcomes: each still-deferred waiter moves to ``firing``.

        Only deferrals still in ``deferred`` move, which is what makes a
        trigger that ran in two places resume its tasks once. Fired triggers
        are deleted. Returns the resumes to publish.
        """

    @abc.abstractmethod
    def mark_resumed(self, orders: Sequence[ResumeOrder]) -> None:
        """Record that these resumes were published."""

    @abc.abstractmethod
    def claim_timed_out(self, now: datetime, outcome: str, limit: int) -> list[ResumeOrder]:
        """Move deferrals past their timeout to ``firing`` with ``outcome``."""

    @abc.abstractmethod
    def stuck_firing(self, older_than: datetime, limit: int) -> list[ResumeOrder]:
        """Deferrals left in ``firing`` (their publisher died): to publish again."""

    @abc.abstractmethod
    def unclaimed_resumes(self, older_than: datetime, limit: int) -> list[ResumeOrder]:
        """Resumes published before ``older_than`` that no worker has claimed.

        Their message may be lost (a broker restarted without persistence);
        the sweep publishes them again, and :meth:`mark_resumed` restarts
        their clock. A surviving copy makes the later one a dropped duplicate.
        """

    @abc.abstractmethod
    def delete_unused_triggers(self) -> int:
        """Delete triggers no deferral waits on; returns how many."""

    @abc.abstractmethod
    def release_orphaned_triggers(self) -> int:
        """Hand back triggers owned by a triggerer that is no longer registered.

        A claim that commits after its triggerer was reaped (declared dead)
        leaves such rows; no heartbeat will ever expire them. Returns how many.
        """

    @abc.abstractmethod
    def get_deferral(self, task_id: str) -> DeferralInfo | None:
        """One deferral, or None (an ``ended`` row is no deferral any more: None)."""

    @abc.abstractmethod
    def cancel_deferrals(self, task_ids: Sequence[str]) -> Cancelled:
        """Forget these tasks' deferrals (revoked), unless a worker is running them.

        Triggers that no other deferral waits on are deleted too; their ids
        are returned so the triggerer running them can stop them.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""

    # -- external events (celery_defer.store.events) ------------------------

    @abc.abstractmethod
    def add_event(self, key: str, payload: str) -> ExternalEvent:
        """Store an external event (``payload`` is typed-JSON text), stamped now."""

    @abc.abstractmethod
    def latest_events(self, keys: Sequence[str], not_before: datetime) -> dict[str, ExternalEvent]:
        """The newest event of each key created at or after ``not_before``.

        Keys without such an event are absent. One call serves every waiter
        of a triggerer, however many keys it watches.
        """

    @abc.abstractmethod
    def delete_events(self, older_than: datetime, limit: int) -> int:
        """Delete up to ``limit`` events created before ``older_than``; returns how many."""

    # -- inspection (celery_defer.store.inspection) -------------------------

    @abc.abstractmethod
    def list_deferrals(
        self,
        states: Sequence[str] = (),
        task_name: str | None = None,
        trigger_contains: str | None = None,
        limit: int = 100,
    ) -> list[DeferralSummary]:
        """Deferrals, oldest first, filtered by state, exact task name, classpath substring."""

    @abc.abstractmethod
    def describe_deferral(self, task_id: str) -> DeferralDetail | None:
        """One deferral with its kwargs, trigger kwargs and outcome, or None."""

    @abc.abstractmethod
    def stats(self) -> StoreStats:
        """Triggerers and what they run, deferrals by state, the oldest deferral."""

    # -- key rotation (celery_defer.store.rotation) ---------------------------

    @abc.abstractmethod
    def rewrite_user_values(
        self, rewrite: Callable[[str], str | None], batch_size: int = 500
    ) -> Rewritten:
        """Pass every stored kwargs and trigger kwargs text through ``rewrite``.

        ``rewrite`` returns the text to store instead, or None to leave it.
        Rows are read and written in batches of ``batch_size``, each batch in
        short transactions; a row changed meanwhile (a task deferring again, a
        trigger that fired) is left as it now is.
        """

"""The SQLAlchemy store: SQLite (embedded default), PostgreSQL, MySQL/MariaDB.

:class:`SqlStore` owns what every statement shares: the engine, the
transaction (one short transaction per method), the schema check before the
first one, and the clock. The statements themselves are plain functions in
the sibling modules, one per concern, each taking the open connection; every
method here is the same few lines: check the input, begin, delegate.

Claims lock rows with ``FOR UPDATE SKIP LOCKED`` where the dialect has it
(PostgreSQL, MySQL 8, MariaDB 10.6); SQLite has no row locks, so every SQLite
transaction starts with ``BEGIN IMMEDIATE``, which serialises writers across
processes and makes the same select-then-update sequences safe there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

from sqlalchemy import Connection, Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from celery_defer.exceptions import ConfigurationError
from celery_defer.store.base import Clock, Listener, Store, system_clock
from celery_defer.store.records import (
    FIRING,
    RESUMED,
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
from celery_defer.store.sql import (
    deferrals,
    events,
    firing,
    inspection,
    recovery,
    rotation,
    schema,
    triggerers,
)
from celery_defer.store.sql.columns import aware_utc
from celery_defer.store.sql.engine import create_store_engine, translated
from celery_defer.store.sql.notify import NotifyListener

__all__ = ["SqlStore"]


class SqlStore(Store):
    """A :class:`~celery_defer.store.base.Store` on any SQLAlchemy 2 database.

    ``create_schema`` creates (or upgrades) the tables before the first
    transaction; pass False where a missing schema must be an error
    (:class:`~celery_defer.exceptions.SchemaMissing`). ``clock`` is where
    "now" comes from (see :data:`~celery_defer.store.base.Clock`).
    """

    def __init__(self, url: str, *, create_schema: bool = True, clock: Clock | None = None) -> None:
        try:
            make_url(url)
        except ArgumentError as exc:
            raise ConfigurationError(f"defer_database_url is not a database URL: {url!r}") from exc
        self.url = url
        self.engine: Engine = create_store_engine(url)
        self.clock: Clock = clock or system_clock
        self._schema_checked = not create_schema
        self.notifies_new_triggers = self.engine.dialect.name == "postgresql"
        # One statement is its own transaction: on PostgreSQL the operations that are one
        # statement run in autocommit, one round trip instead of BEGIN, statement, COMMIT.
        self._single = (
            self.engine.execution_options(isolation_level="AUTOCOMMIT")
            if self.notifies_new_triggers
            else self.engine
        )

    def new_trigger_listener(self, on_notice: Callable[[], None]) -> Listener | None:
        """On PostgreSQL, a LISTEN on the channel every save notifies; elsewhere None."""
        if not self.notifies_new_triggers:
            return None
        return NotifyListener(self.engine, on_notice)

    def _now(self) -> datetime:
        return aware_utc(self.clock(), "the store clock's time")

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        if not self._schema_checked:
            self.create_schema()
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _one_statement(self) -> Iterator[Connection]:
        """For an operation that is a single statement on this dialect (see ``_single``)."""
        if not self._schema_checked:
            self.create_schema()
        with self._single.begin() as conn:
            yield conn

    # -- schema -----------------------------------------------------------

    @translated
    def create_schema(self) -> None:
        schema.create_schema(self.engine, self.url)
        self._schema_checked = True

    @translated
    def schema_version(self) -> int | None:
        """The stored schema version, or None when the schema is absent."""
        return schema.schema_version(self.engine)

    # -- task side --------------------------------------------------------

    @translated
    def save_deferral(self, deferral: NewDeferral) -> StoredDeferral:
        with self._one_statement() as conn:
            return deferrals.save(conn, deferral, now=self._now())

    @translated
    def begin_resume(
        self, task_id: str, generation: int, *, reclaim: bool = False, settle: bool = False
    ) -> bool:
        with self._one_statement() as conn:
            return deferrals.begin_resume(
                conn, task_id, generation, reclaim=reclaim, settle=settle, now=self._now()
            )

    @translated
    def reopen_resume(self, task_id: str, generation: int) -> None:
        with self._one_statement() as conn:
            deferrals.reopen(conn, task_id, generation, now=self._now())

    @translated
    def finish(self, task_id: str, generation: int) -> None:
        with self._one_statement() as conn:
            deferrals.finish(conn, task_id, generation, now=self._now())

    @translated
    def delete_ended(self, older_than: datetime, limit: int) -> int:
        cutoff = aware_utc(older_than, "older_than")
        with self._one_statement() as conn:
            return deferrals.delete_ended(conn, cutoff, limit)

    @translated
    def get_deferral(self, task_id: str) -> DeferralInfo | None:
        with self._begin() as conn:
            return deferrals.get(conn, task_id)

    @translated
    def cancel_deferrals(self, task_ids: Sequence[str]) -> Cancelled:
        if not task_ids:
            return Cancelled(task_ids=[], trigger_ids=[])
        with self._begin() as conn:
            return deferrals.cancel(conn, task_ids)

    # -- triggerers -------------------------------------------------------

    @translated
    def register_triggerer(self, triggerer_id: str, host: str, pid: int, capacity: int) -> None:
        with self._begin() as conn:
            triggerers.register(conn, triggerer_id, host, pid, capacity, now=self._now())

    @translated
    def heartbeat(self, triggerer_id: str) -> bool:
        with self._begin() as conn:
            return triggerers.heartbeat(conn, triggerer_id, now=self._now())

    @translated
    def unregister_triggerer(self, triggerer_id: str) -> int:
        with self._begin() as conn:
            return triggerers.unregister(conn, triggerer_id)

    @translated
    def release_triggers(self, triggerer_id: str, trigger_ids: Sequence[int]) -> None:
        if not trigger_ids:
            return
        with self._begin() as conn:
            triggerers.release(conn, triggerer_id, trigger_ids)

    @translated
    def claim_triggers(
        self, triggerer_id: str, limit: int, health_timeout: float, horizon: float | None = None
    ) -> list[ClaimedTrigger]:
        if limit <= 0:
            return []
        with self._begin() as conn:
            return triggerers.claim(
                conn, triggerer_id, limit, health_timeout, now=self._now(), horizon=horizon
            )

    @translated
    def held_trigger_ids(self, triggerer_id: str) -> set[int]:
        with self._begin() as conn:
            return triggerers.held_ids(conn, triggerer_id)

    # -- firing and resuming ----------------------------------------------

    @translated
    def fire(self, outcomes: Sequence[TriggerOutcome]) -> list[ResumeOrder]:
        if not outcomes:
            return []
        with self._begin() as conn:
            return firing.fire(conn, outcomes, now=self._now())

    @translated
    def mark_resumed(self, orders: Sequence[ResumeOrder]) -> None:
        if not orders:
            return
        with self._begin() as conn:
            firing.mark_resumed(conn, orders, now=self._now())

    # -- sweeping ---------------------------------------------------------

    @translated
    def claim_timed_out(self, now: datetime, outcome: str, limit: int) -> list[ResumeOrder]:
        due_before = aware_utc(now, "now")
        with self._begin() as conn:
            return recovery.claim_timed_out(conn, due_before, outcome, limit, now=self._now())

    @translated
    def stuck_firing(self, older_than: datetime, limit: int) -> list[ResumeOrder]:
        cutoff = aware_utc(older_than, "older_than")
        with self._begin() as conn:
            return recovery.left_in(conn, FIRING, cutoff, limit)

    @translated
    def unclaimed_resumes(self, older_than: datetime, limit: int) -> list[ResumeOrder]:
        cutoff = aware_utc(older_than, "older_than")
        with self._begin() as conn:
            return recovery.left_in(conn, RESUMED, cutoff, limit)

    @translated
    def delete_unused_triggers(self) -> int:
        with self._begin() as conn:
            return recovery.delete_unused_triggers(conn)

    @translated
    def release_orphaned_triggers(self) -> int:
        with self._begin() as conn:
            return recovery.release_orphaned_triggers(conn)

    # -- external events --------------------------------------------------

    @translated
    def add_event(self, key: str, payload: str) -> ExternalEvent:
        with self._begin() as conn:
            return events.add(conn, key, payload, now=self._now())

    @translated
    def latest_events(self, keys: Sequence[str], not_before: datetime) -> dict[str, ExternalEvent]:
        cutoff = aware_utc(not_before, "not_before")
        if not keys:
            return {}
        with self._begin() as conn:
            return events.latest(conn, keys, cutoff)

    @translated
    def delete_events(self, older_than: datetime, limit: int) -> int:
        cutoff = aware_utc(older_than, "older_than")
        with self._begin() as conn:
            return events.delete_older(conn, cutoff, limit)

    # -- inspection -------------------------------------------------------

    @translated
    def list_deferrals(
        self,
        states: Sequence[str] = (),
        task_name: str | None = None,
        trigger_contains: str | None = None,
        limit: int = 100,
    ) -> list[DeferralSummary]:
        with self._begin() as conn:
            return inspection.list_summaries(conn, states, task_name, trigger_contains, limit)

    @translated
    def describe_deferral(self, task_id: str) -> DeferralDetail | None:
        with self._begin() as conn:
            return inspection.describe(conn, task_id)

    @translated
    def stats(self) -> StoreStats:
        with self._begin() as conn:
            return inspection.stats(conn)

    # -- key rotation -----------------------------------------------------

    @translated
    def rewrite_user_values(
        self, rewrite: Callable[[str], str | None], batch_size: int = 500
    ) -> Rewritten:
        return rotation.rewrite_user_values(self._begin, rewrite, batch_size)

    def close(self) -> None:
        self.engine.dispose()

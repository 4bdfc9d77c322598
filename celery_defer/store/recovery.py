"""The SQL store's sweep queries: timed-out deferrals and resumes that went astray.

A mixin of :class:`~celery_defer.store.sql.SqlStore`. Celery beat runs these
(:mod:`celery_defer.sweep`) to finish what a dead process left: deferrals past
their timeout, rows stored ``firing`` whose resume was never published, resumes
published but never claimed by a worker, and triggers no deferral needs.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import bindparam, delete, exists, select, update

from celery_defer.store.engine import to_naive_utc, translated, utcnow
from celery_defer.store.orders import ORDER_COLUMNS, order_of
from celery_defer.store.records import DEFERRED, FIRING, RESUMED, ResumeOrder
from celery_defer.store.schema import deferrals, triggerers, triggers

if TYPE_CHECKING:
    from sqlalchemy import Connection

__all__ = ["RecoveryQueries"]


class RecoveryQueries:
    """Sweep operations of the :class:`~celery_defer.store.base.Store` interface."""

    if TYPE_CHECKING:

        def _begin(self) -> AbstractContextManager[Connection]: ...

    @translated
    def claim_timed_out(self, now: datetime, outcome: str, limit: int) -> list[ResumeOrder]:
        moment = to_naive_utc(now)
        with self._begin() as conn:
            due = conn.execute(
                select(*ORDER_COLUMNS)
                .where(deferrals.c.state == DEFERRED, deferrals.c.timeout_at < moment)
                .order_by(deferrals.c.timeout_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if due:
                conn.execute(
                    update(deferrals)
                    .where(
                        deferrals.c.task_id == bindparam("b_task_id"),
                        deferrals.c.state == DEFERRED,
                    )
                    .values(state=FIRING, outcome=outcome, trigger_id=None, updated_at=utcnow()),
                    [{"b_task_id": row.task_id} for row in due],
                )
        return [order_of(r, outcome) for r in due]

    @translated
    def stuck_firing(self, older_than: datetime, limit: int) -> list[ResumeOrder]:
        return self._left_in(FIRING, older_than, limit)

    @translated
    def unclaimed_resumes(self, older_than: datetime, limit: int) -> list[ResumeOrder]:
        return self._left_in(RESUMED, older_than, limit)

    def _left_in(self, state: str, older_than: datetime, limit: int) -> list[ResumeOrder]:
        """The oldest deferrals in ``state`` since before ``older_than``."""
        with self._begin() as conn:
            rows = conn.execute(
                select(*ORDER_COLUMNS)
                .where(
                    deferrals.c.state == state, deferrals.c.updated_at < to_naive_utc(older_than)
                )
                .order_by(deferrals.c.updated_at)
                .limit(limit)
            ).all()
        return [order_of(r) for r in rows]

    @translated
    def delete_unused_triggers(self) -> int:
        needed = exists().where(deferrals.c.trigger_id == triggers.c.id)
        with self._begin() as conn:
            return int(conn.execute(delete(triggers).where(~needed)).rowcount)

    @translated
    def release_orphaned_triggers(self) -> int:
        registered = exists().where(triggerers.c.id == triggers.c.triggerer_id)
        with self._begin() as conn:
            return int(
                conn.execute(
                    update(triggers)
                    .where(triggers.c.triggerer_id.is_not(None), ~registered)
                    .values(triggerer_id=None)
                ).rowcount
            )

"""The triggerers' side of the SQL store: registration, heartbeats, claims.

A mixin of :class:`~celery_defer.store.sql.SqlStore`, apart from the deferral
queries because it has its own concern: which triggerer owns which trigger,
and taking over the triggers of a triggerer that went silent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import Connection, any_, delete, func, insert, select, update

from celery_defer.store.engine import chunks, translated, utcnow
from celery_defer.store.records import ClaimedTrigger
from celery_defer.store.schema import triggerers, triggers

logger = logging.getLogger("celery_defer.store.sql")


class TriggererQueries:
    """Triggerer operations of the :class:`~celery_defer.store.base.Store` interface."""

    if TYPE_CHECKING:
        dialect: str

        def _begin(self) -> AbstractContextManager[Connection]: ...

    @translated
    def register_triggerer(self, triggerer_id: str, host: str, pid: int, capacity: int) -> None:
        now = utcnow()
        with self._begin() as conn:
            conn.execute(
                insert(triggerers).values(
                    id=triggerer_id,
                    host=host,
                    pid=pid,
                    capacity=capacity,
                    started_at=now,
                    heartbeat_at=now,
                )
            )

    @translated
    def heartbeat(self, triggerer_id: str) -> bool:
        with self._begin() as conn:
            found = conn.execute(
                update(triggerers)
                .where(triggerers.c.id == triggerer_id)
                .values(heartbeat_at=utcnow())
            ).rowcount
        return bool(found == 1)

    @translated
    def unregister_triggerer(self, triggerer_id: str) -> int:
        with self._begin() as conn:
            released = conn.execute(
                update(triggers)
                .where(triggers.c.triggerer_id == triggerer_id)
                .values(triggerer_id=None)
            ).rowcount
            conn.execute(delete(triggerers).where(triggerers.c.id == triggerer_id))
        return int(released)

    @translated
    def release_triggers(self, triggerer_id: str, trigger_ids: Sequence[int]) -> None:
        if not trigger_ids:
            return
        with self._begin() as conn:
            conn.execute(
                update(triggers)
                .where(triggers.c.triggerer_id == triggerer_id, triggers.c.id.in_(trigger_ids))
                .values(triggerer_id=None)
            )

    @translated
    def claim_triggers(
        self, triggerer_id: str, limit: int, health_timeout: float
    ) -> list[ClaimedTrigger]:
        if limit <= 0:
            return []
        cutoff = utcnow() - timedelta(seconds=health_timeout)
        with self._begin() as conn:
            # Reap silent triggerers first, so the claim itself only has to
            # look at unowned rows (an indexed IS NULL, not an anti-join).
            dead = (
                conn.execute(select(triggerers.c.id).where(triggerers.c.heartbeat_at < cutoff))
                .scalars()
                .all()
            )
            if dead:
                logger.warning(
                    "taking over the triggers of silent triggerers %s",
                    dead,
                    extra={"dead_triggerers": dead},
                )
                conn.execute(
                    update(triggers)
                    .where(triggers.c.triggerer_id.in_(dead))
                    .values(triggerer_id=None)
                )
                conn.execute(delete(triggerers).where(triggerers.c.id.in_(dead)))
            unowned = (
                select(triggers.c.id)
                .where(triggers.c.triggerer_id.is_(None))
                .order_by(triggers.c.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            claimed = (triggers.c.id, triggers.c.classpath, triggers.c.kwargs)
            if self.dialect == "postgresql":
                # PostgreSQL plans "id IN (subquery)" as a hash join over the
                # whole table; "= ANY(ARRAY(subquery))" is primary-key lookups.
                picked = triggers.c.id == any_(func.array(unowned.scalar_subquery()))
            else:
                picked = triggers.c.id.in_(unowned.scalar_subquery())
            if conn.dialect.update_returning:
                # One statement, one round trip, whatever the limit
                # (PostgreSQL; SQLite >= 3.35, where BEGIN IMMEDIATE locks).
                rows = sorted(
                    conn.execute(
                        update(triggers)
                        .where(picked)
                        .values(triggerer_id=triggerer_id)
                        .returning(*claimed)
                    ),
                    key=lambda row: row.id,
                )
            else:
                # MySQL allows no LIMIT in an IN subquery: lock, then update
                # in chunks (a driver takes at most 65,535 parameters).
                rows = list(conn.execute(unowned.with_only_columns(*claimed)))
                for ids in chunks([row.id for row in rows]):
                    conn.execute(
                        update(triggers)
                        .where(triggers.c.id.in_(ids))
                        .values(triggerer_id=triggerer_id)
                    )
        return [ClaimedTrigger(id=int(r.id), classpath=r.classpath, kwargs=r.kwargs) for r in rows]

    @translated
    def held_trigger_ids(self, triggerer_id: str) -> set[int]:
        with self._begin() as conn:
            ids = conn.execute(
                select(triggers.c.id).where(triggers.c.triggerer_id == triggerer_id)
            ).scalars()
            return {int(i) for i in ids}

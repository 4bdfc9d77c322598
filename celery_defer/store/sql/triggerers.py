"""Triggerers in the SQL store: registration, heartbeats, and who owns which trigger.

Apart from the deferral statements because it is its own concern: a trigger
is owned by one triggerer at a time, and a triggerer that goes silent for
longer than the health timeout loses its triggers to the next one that
claims. "Silent" is measured against the store's clock (``now``), never the
database's, so every process agrees with the timestamps it wrote.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, any_, delete, func, insert, or_, select, update

from celery_defer.store.records import ClaimedTrigger
from celery_defer.store.sql.engine import chunks
from celery_defer.store.sql.schema import triggerers, triggers

__all__ = ["claim", "heartbeat", "held_ids", "register", "release", "unregister"]

logger = logging.getLogger("celery_defer.store.sql")


def register(
    conn: Connection, triggerer_id: str, host: str, pid: int, capacity: int, *, now: datetime
) -> None:
    """Insert a triggerer row, started and last heard from ``now``."""
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


def heartbeat(conn: Connection, triggerer_id: str, *, now: datetime) -> bool:
    """Stamp a heartbeat; False when the row is gone (the triggerer was reaped)."""
    found = conn.execute(
        update(triggerers).where(triggerers.c.id == triggerer_id).values(heartbeat_at=now)
    ).rowcount
    return bool(found == 1)


def unregister(conn: Connection, triggerer_id: str) -> int:
    """Delete a triggerer and hand its triggers back; returns how many."""
    released = conn.execute(
        update(triggers).where(triggers.c.triggerer_id == triggerer_id).values(triggerer_id=None)
    ).rowcount
    conn.execute(delete(triggerers).where(triggerers.c.id == triggerer_id))
    return int(released)


def release(conn: Connection, triggerer_id: str, trigger_ids: Sequence[int]) -> None:
    """Hand back those of ``trigger_ids`` that ``triggerer_id`` still owns."""
    conn.execute(
        update(triggers)
        .where(triggers.c.triggerer_id == triggerer_id, triggers.c.id.in_(trigger_ids))
        .values(triggerer_id=None)
    )


def claim(
    conn: Connection,
    triggerer_id: str,
    limit: int,
    health_timeout: float,
    *,
    now: datetime,
    horizon: float | None = None,
) -> list[ClaimedTrigger]:
    """Reap triggerers silent since before ``now - health_timeout``, then take unowned triggers.

    With ``horizon`` (seconds), a timer (``wakes_at`` set) is taken only once
    its moment is within ``horizon`` of ``now``, soonest first, and before any
    other trigger; without, every unowned trigger is taken in id order.
    """
    cutoff = now - timedelta(seconds=health_timeout)
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
            update(triggers).where(triggers.c.triggerer_id.in_(dead)).values(triggerer_id=None)
        )
        conn.execute(delete(triggerers).where(triggerers.c.id.in_(dead)))
    if horizon is None:
        return _take(conn, triggerer_id, limit, triggers.c.triggerer_id.is_(None), triggers.c.id)
    unowned = triggers.c.triggerer_id.is_(None)
    near_timer = triggers.c.wakes_at < now + timedelta(seconds=horizon)
    limit = _fair_limit(conn, triggerer_id, limit, and_(unowned, or_(near_timer, no_moment)))
    if limit <= 0:
        return []
    near = _take(conn, triggerer_id, limit, and_(unowned, near_timer), triggers.c.wakes_at)
    if len(near) == limit:
        return near
    others = _take(
        conn,
        triggerer_id,
        limit - len(near),
        and_(unowned, no_moment),
        triggers.c.id,
    )
    return near + others


no_moment = triggers.c.wakes_at.is_(None)


def _fair_limit(conn: Connection, triggerer_id: str, limit: int, waiting: Any) -> int:
    """``limit``, cut to this triggerer's fair share when several triggerers run.

    The share is what all triggerers own plus what waits to be claimed, split
    evenly between the live triggerers, minus what this one owns already; but
    never below an even split of what waits, so triggers never wait for
    triggerers that are full or slow to scan.
    """
    live = conn.execute(select(func.count()).select_from(triggerers)).scalar_one()
    if live <= 1:
        return limit
    count = func.count()
    waiting_n = conn.execute(select(count).select_from(triggers).where(waiting)).scalar_one()
    if not waiting_n:
        return 0
    owned = conn.execute(
        select(count).select_from(triggers).where(triggers.c.triggerer_id.is_not(None))
    ).scalar_one()
    mine = conn.execute(
        select(count).select_from(triggers).where(triggers.c.triggerer_id == triggerer_id)
    ).scalar_one()
    fair = -(-(owned + waiting_n) // live) - mine
    return min(limit, max(fair, -(-waiting_n // live)))


def _take(
    conn: Connection, triggerer_id: str, limit: int, where: Any, order: Any
) -> list[ClaimedTrigger]:
    """Take up to ``limit`` unowned triggers matching ``where``, in ``order``."""
    unowned = (
        select(triggers.c.id)
        .where(where)
        .order_by(order)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    claimed = (triggers.c.id, triggers.c.classpath, triggers.c.kwargs)
    if conn.dialect.name == "postgresql":
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
                update(triggers).where(picked).values(triggerer_id=triggerer_id).returning(*claimed)
            ),
            key=lambda row: row.id,
        )
    else:
        # MySQL allows no LIMIT in an IN subquery: lock, then update
        # in chunks (a driver takes at most 65,535 parameters).
        rows = list(conn.execute(unowned.with_only_columns(*claimed)))
        for ids in chunks([row.id for row in rows]):
            conn.execute(
                update(triggers).where(triggers.c.id.in_(ids)).values(triggerer_id=triggerer_id)
            )
    return [ClaimedTrigger(id=int(r.id), classpath=r.classpath, kwargs=r.kwargs) for r in rows]


def held_ids(conn: Connection, triggerer_id: str) -> set[int]:
    """The ids of the triggers ``triggerer_id`` owns."""
    ids = conn.execute(
        select(triggers.c.id).where(triggers.c.triggerer_id == triggerer_id)
    ).scalars()
    return {int(i) for i in ids}

"""The sweep's queries in the SQL store: timed-out deferrals and resumes that went astray.

Celery beat runs these (:mod:`celery_defer.sweep`) to finish what a dead
process left: deferrals past their timeout, rows stored ``firing`` whose
resume was never published, resumes published but never claimed by a worker,
and triggers no deferral needs or no live triggerer owns.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, bindparam, delete, exists, select, update

from celery_defer.store.records import DEFERRED, FIRING, DeferralState, ResumeOrder
from celery_defer.store.sql.engine import chunks
from celery_defer.store.sql.orders import ORDER_COLUMNS, order_of
from celery_defer.store.sql.schema import deferrals, triggerers, triggers

__all__ = [
    "claim_timed_out",
    "delete_unused_triggers",
    "left_in",
    "release_orphaned_triggers",
]


def claim_timed_out(
    conn: Connection, due_before: datetime, outcome: str, limit: int, *, now: datetime
) -> list[ResumeOrder]:
    """Move up to ``limit`` deferrals whose timeout is before ``due_before`` to ``firing``.

    ``due_before`` is the sweep's idea of now (a test may pass a later one);
    ``now`` is the store's clock, stamped on the rows it moves. Their triggers
    that no other deferral waits on are deleted here, as a cancel deletes
    them: the sweep then never has to look for unused triggers.
    """
    due = conn.execute(
        select(*ORDER_COLUMNS, deferrals.c.trigger_id.label("waited_on"))
        .where(deferrals.c.state == DEFERRED, deferrals.c.timeout_at < due_before)
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
            .values(state=FIRING, outcome=outcome, trigger_id=None, updated_at=now),
            [{"b_task_id": row.task_id} for row in due],
        )
        waited_on = sorted({row.waited_on for row in due if row.waited_on is not None})
        for ids in chunks(waited_on):
            conn.execute(
                delete(triggers).where(
                    triggers.c.id.in_(ids),
                    ~exists().where(deferrals.c.trigger_id == triggers.c.id),
                )
            )
    return [order_of(r, outcome) for r in due]


def left_in(
    conn: Connection, state: DeferralState, older_than: datetime, limit: int
) -> list[ResumeOrder]:
    """The oldest deferrals in ``state`` since before ``older_than`` (reported, not claimed)."""
    rows = conn.execute(
        select(*ORDER_COLUMNS)
        .where(deferrals.c.state == state, deferrals.c.updated_at < older_than)
        .order_by(deferrals.c.updated_at)
        .limit(limit)
    ).all()
    return [order_of(r) for r in rows]


def delete_unused_triggers(conn: Connection) -> int:
    """Delete triggers no deferral waits on; returns how many."""
    needed = exists().where(deferrals.c.trigger_id == triggers.c.id)
    return int(conn.execute(delete(triggers).where(~needed)).rowcount)


def release_orphaned_triggers(conn: Connection) -> int:
    """Hand back triggers owned by a triggerer no longer registered; returns how many."""
    registered = exists().where(triggerers.c.id == triggers.c.triggerer_id)
    return int(
        conn.execute(
            update(triggers)
            .where(triggers.c.triggerer_id.is_not(None), ~registered)
            .values(triggerer_id=None)
        ).rowcount
    )

"""Firing in the SQL store: a trigger's outcome moves its waiters to ``firing``, then ``resumed``.

This is the triggerer's hot path, so it is written per dialect: on PostgreSQL
one statement fires a whole batch (lock, update, delete the triggers, return
the resume orders); elsewhere the same steps run as a few batched statements.
Only deferrals still in ``deferred`` move, which is what makes a trigger that
ran in two places resume its tasks once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Select,
    Text,
    any_,
    bindparam,
    column,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from celery_defer.store.records import DEFERRED, FIRING, RESUMED, ResumeOrder, TriggerOutcome
from celery_defer.store.sql.columns import UtcDateTime
from celery_defer.store.sql.engine import chunks
from celery_defer.store.sql.orders import ORDER_COLUMNS, order_of
from celery_defer.store.sql.schema import deferrals, triggers

__all__ = ["fire", "mark_resumed"]


def _postgresql_fire() -> Select[Any]:
    """fire() on PostgreSQL: one statement, one round trip, whatever the batch.

    Locks the waiting deferrals in (trigger, task) order (so two triggerers
    firing overlapping batches cannot deadlock), moves them to ``firing``
    with their trigger's outcome, deletes the triggers, and returns the
    resume orders. Parameters: ``ids`` and ``outcomes`` (parallel arrays) and ``now``.
    """
    ids = bindparam("ids", type_=ARRAY(BigInteger))
    outcomes = bindparam("outcomes", type_=ARRAY(Text))
    locked = (
        select(deferrals.c.task_id)
        .where(deferrals.c.trigger_id == any_(ids), deferrals.c.state == DEFERRED)
        .order_by(deferrals.c.trigger_id, deferrals.c.task_id)
        .with_for_update()
        .cte("locked")
    )
    pairs = (
        func.unnest(ids, outcomes)
        .table_valued(column("trigger_id", BigInteger), column("outcome", Text))
        .render_derived(name="pairs")
    )
    fired = (
        update(deferrals)
        .where(
            deferrals.c.task_id == locked.c.task_id, deferrals.c.trigger_id == pairs.c.trigger_id
        )
        .values(
            state=FIRING,
            outcome=pairs.c.outcome,
            trigger_id=None,
            updated_at=bindparam("now", type_=UtcDateTime()),
        )
        .returning(*ORDER_COLUMNS)
        .cte("fired")
    )
    gone = delete(triggers).where(triggers.c.id == any_(ids)).cte("gone")
    return select(fired).add_cte(gone)


_POSTGRESQL_FIRE = _postgresql_fire()


def fire(
    conn: Connection, outcomes: Sequence[TriggerOutcome], *, now: datetime
) -> list[ResumeOrder]:
    """Store each outcome on its trigger's waiting deferrals; delete the triggers."""
    by_trigger = {o.trigger_id: o.outcome for o in outcomes}
    trigger_ids = sorted(by_trigger)
    if conn.dialect.name == "postgresql":
        rows = conn.execute(
            _POSTGRESQL_FIRE,
            {"ids": trigger_ids, "outcomes": [by_trigger[i] for i in trigger_ids], "now": now},
        )
        return [order_of(row) for row in rows]
    orders: list[ResumeOrder] = []
    # Locked in (trigger, task) order across chunks, so two triggerers
    # firing overlapping batches cannot deadlock.
    for ids in chunks(trigger_ids):
        waiting = conn.execute(
            select(
                *(c for c in ORDER_COLUMNS if c is not deferrals.c.outcome),
                deferrals.c.trigger_id,
            )
            .where(deferrals.c.trigger_id.in_(ids), deferrals.c.state == DEFERRED)
            .order_by(deferrals.c.trigger_id, deferrals.c.task_id)
            .with_for_update()
        ).all()
        orders.extend(order_of(r, by_trigger[r.trigger_id]) for r in waiting)
    if orders:
        # One executemany (pipelined by psycopg), not one round trip per deferral.
        conn.execute(
            update(deferrals)
            .where(
                deferrals.c.task_id == bindparam("b_task_id"),
                deferrals.c.state == DEFERRED,
            )
            .values(state=FIRING, outcome=bindparam("b_outcome"), trigger_id=None, updated_at=now),
            [{"b_task_id": o.task_id, "b_outcome": o.outcome} for o in orders],
        )
    for ids in chunks(trigger_ids):
        conn.execute(delete(triggers).where(triggers.c.id.in_(ids)))
    return orders


def mark_resumed(conn: Connection, orders: Sequence[ResumeOrder], *, now: datetime) -> None:
    """Record these resumes as published (again: that restarts their unclaimed clock)."""
    conn.execute(
        update(deferrals)
        .where(
            deferrals.c.task_id == bindparam("b_task_id"),
            deferrals.c.generation == bindparam("b_generation"),
            # Not IN (...): expanding parameters cannot take an executemany.
            or_(deferrals.c.state == FIRING, deferrals.c.state == RESUMED),
        )
        .values(state=RESUMED, updated_at=now),
        [{"b_task_id": o.task_id, "b_generation": o.generation} for o in orders],
    )

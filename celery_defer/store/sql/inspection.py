"""The SQL store's read-only queries for operators: ``celery defer list/show/stats``.

Apart from the queries the triggerer and the sweep run in their loops: these
run when a person asks, so they may join and aggregate, but they never lock a
row and never write.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Select, func, select

from celery_defer.store.records import (
    ENDED,
    DeferralDetail,
    DeferralState,
    DeferralSummary,
    StoreStats,
    TriggererStatus,
)
from celery_defer.store.sql.schema import deferrals, triggerers, triggers

__all__ = ["describe", "list_summaries", "stats"]

_SUMMARY_COLUMNS = (
    deferrals.c.task_id,
    deferrals.c.task_name,
    deferrals.c.state,
    deferrals.c.generation,
    deferrals.c.method,
    deferrals.c.trigger_id,
    triggers.c.classpath.label("trigger_classpath"),
    triggers.c.triggerer_id,
    deferrals.c.timeout_at,
    deferrals.c.created_at,
    deferrals.c.updated_at,
)


def _summaries(*extra: Any) -> Select[Any]:
    # An outer join: a deferral past 'deferred' has no trigger any more.
    return select(*_SUMMARY_COLUMNS, *extra).select_from(
        deferrals.outerjoin(triggers, deferrals.c.trigger_id == triggers.c.id)
    )


def _summary(row: Any) -> DeferralSummary:
    return DeferralSummary(
        task_id=row.task_id,
        task_name=row.task_name,
        state=row.state,
        generation=row.generation,
        method=row.method,
        trigger_id=None if row.trigger_id is None else int(row.trigger_id),
        trigger_classpath=row.trigger_classpath,
        triggerer_id=row.triggerer_id,
        timeout_at=row.timeout_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def list_summaries(
    conn: Connection,
    states: Sequence[str] = (),
    task_name: str | None = None,
    trigger_contains: str | None = None,
    limit: int = 100,
) -> list[DeferralSummary]:
    """Deferrals, oldest first (by when the task first deferred); ended ones only if asked."""
    query = _summaries()
    if states:
        query = query.where(deferrals.c.state.in_(list(states)))
    else:
        query = query.where(deferrals.c.state != ENDED)
    if task_name:
        query = query.where(deferrals.c.task_name == task_name)
    if trigger_contains:
        query = query.where(triggers.c.classpath.contains(trigger_contains, autoescape=True))
    query = query.order_by(deferrals.c.created_at, deferrals.c.task_id).limit(limit)
    return [_summary(row) for row in conn.execute(query)]


def describe(conn: Connection, task_id: str) -> DeferralDetail | None:
    """One deferral, with the user values it stores (typed-JSON text)."""
    query = _summaries(
        deferrals.c.kwargs,
        triggers.c.kwargs.label("trigger_kwargs"),
        deferrals.c.outcome,
    ).where(deferrals.c.task_id == task_id)
    row = conn.execute(query).first()
    if row is None:
        return None
    summary = _summary(row)
    return DeferralDetail(
        **summary.__dict__,
        kwargs=row.kwargs,
        trigger_kwargs=row.trigger_kwargs,
        outcome=row.outcome,
    )


def stats(conn: Connection) -> StoreStats:
    """Triggerers with the triggers each owns, deferrals by state, the oldest deferral."""
    owned = (
        select(triggers.c.triggerer_id, func.count().label("running"))
        .where(triggers.c.triggerer_id.is_not(None))
        .group_by(triggers.c.triggerer_id)
        .subquery()
    )
    rows = conn.execute(
        select(triggerers, func.coalesce(owned.c.running, 0).label("running"))
        .select_from(triggerers.outerjoin(owned, owned.c.triggerer_id == triggerers.c.id))
        .order_by(triggerers.c.started_at, triggerers.c.id)
    ).all()
    counts = conn.execute(select(deferrals.c.state, func.count()).group_by(deferrals.c.state)).all()
    oldest = conn.execute(
        _summaries()
        .where(deferrals.c.state != ENDED)
        .order_by(deferrals.c.created_at, deferrals.c.task_id)
        .limit(1)
    ).first()
    unowned = conn.execute(
        select(func.count()).select_from(triggers).where(triggers.c.triggerer_id.is_(None))
    ).scalar_one()
    by_state = dict.fromkeys(DeferralState, 0)
    by_state.update({DeferralState(state): int(count) for state, count in counts})
    return StoreStats(
        triggerers=[
            TriggererStatus(
                id=r.id,
                host=r.host,
                pid=int(r.pid),
                capacity=int(r.capacity),
                running=int(r.running),
                started_at=r.started_at,
                heartbeat_at=r.heartbeat_at,
            )
            for r in rows
        ],
        by_state=by_state,
        oldest=None if oldest is None else _summary(oldest),
        unowned_triggers=int(unowned),
    )

"""A deferral's own life in the SQL store: saved, claimed for resuming, finished, cancelled.

These are the statements the task side runs (and the CLI's ``cancel``): each
function takes an open :class:`~sqlalchemy.Connection` inside the caller's
transaction and returns plain records, so
:class:`~celery_defer.store.sql.SqlStore` only chooses the transaction and
the clock. A resume is claimed by generation, so a stale or duplicate message
for a task that deferred again finds nothing to claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Connection,
    Integer,
    String,
    Text,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.dialects import postgresql

from celery_defer.store.records import (
    DEFERRED,
    ENDED,
    FIRING,
    RESUMED,
    RUNNING,
    Cancelled,
    DeferralInfo,
    NewDeferral,
    StoredDeferral,
    claimable_states,
)
from celery_defer.store.sql.columns import StateColumn, UtcDateTime, aware_utc
from celery_defer.store.sql.notify import CHANNEL
from celery_defer.store.sql.schema import deferrals, triggers

__all__ = ["begin_resume", "cancel", "delete_ended", "finish", "get", "reopen", "save"]


def _postgresql_save() -> Any:
    """save() on PostgreSQL: one statement instead of three, and the triggerers' wake-up.

    Inserts the trigger and the deferral; a task deferring again under the
    same id updates its row to the next generation (``ON CONFLICT``, which
    also settles two saves of one task id racing each other). It notifies
    :data:`~celery_defer.store.sql.notify.CHANNEL` in the same statement.
    """
    now = bindparam("now", type_=UtcDateTime())
    trigger = (
        insert(triggers)
        .values(
            classpath=bindparam("classpath"),
            kwargs=bindparam("trigger_kwargs"),
            wakes_at=bindparam("wakes_at", type_=UtcDateTime()),
            created_at=now,
        )
        .returning(triggers.c.id)
        .cte("new_trigger")
    )
    values = {
        "task_id": bindparam("task_id", type_=String),
        "task_name": bindparam("task_name", type_=String),
        "trigger_id": trigger.c.id,
        "method": bindparam("method", type_=String),
        "kwargs": bindparam("kwargs", type_=Text),
        "request": bindparam("request", type_=Text),
        "state": literal(DEFERRED, type_=StateColumn()),
        "outcome": null(),
        "generation": bindparam("first_generation", type_=Integer),
        "timeout_at": bindparam("timeout_at", type_=UtcDateTime()),
        "created_at": now,
        "updated_at": now,
    }
    statement = postgresql.insert(deferrals).from_select(list(values), select(*values.values()))
    replaced = {
        name: statement.excluded[name]
        for name in values
        if name not in ("task_id", "generation", "created_at")
    }
    return statement.on_conflict_do_update(
        index_elements=[deferrals.c.task_id],
        set_={**replaced, "generation": deferrals.c.generation + 1},
    ).returning(
        deferrals.c.trigger_id,
        deferrals.c.generation,
        # Delivered when this statement commits: the save itself wakes the triggerers
        # (not for a timer beyond the horizon: the periodic scan claims it in time).
        case((bindparam("announce", type_=Boolean), func.pg_notify(CHANNEL, "")), else_=None).label(
            "notified"
        ),
    )


_POSTGRESQL_SAVE = _postgresql_save()


def save(conn: Connection, deferral: NewDeferral, *, now: datetime) -> StoredDeferral:
    """Store a new trigger and the deferral waiting on it (the next generation if it exists)."""
    timeout_at = (
        None if deferral.timeout_at is None else aware_utc(deferral.timeout_at, "timeout_at")
    )
    wakes_at = None if deferral.wakes_at is None else aware_utc(deferral.wakes_at, "wakes_at")
    if conn.dialect.name == "postgresql":
        row = conn.execute(
            _POSTGRESQL_SAVE,
            {
                "task_id": deferral.task_id,
                "task_name": deferral.task_name,
                "method": deferral.method,
                "kwargs": deferral.kwargs,
                "request": deferral.request,
                "classpath": deferral.trigger_classpath,
                "trigger_kwargs": deferral.trigger_kwargs,
                "timeout_at": timeout_at,
                "first_generation": deferral.after_generation + 1,
                "wakes_at": wakes_at,
                "announce": deferral.announce,
                "now": now,
            },
        ).one()
        return StoredDeferral(trigger_id=int(row.trigger_id), generation=row.generation)
    inserted = conn.execute(
        insert(triggers).values(
            classpath=deferral.trigger_classpath,
            kwargs=deferral.trigger_kwargs,
            wakes_at=wakes_at,
            created_at=now,
        )
    ).inserted_primary_key
    assert inserted is not None
    trigger_id = inserted[0]
    previous = conn.execute(
        select(deferrals.c.generation)
        .where(deferrals.c.task_id == deferral.task_id)
        .with_for_update()
    ).scalar()
    values = dict(
        task_name=deferral.task_name,
        trigger_id=trigger_id,
        method=deferral.method,
        kwargs=deferral.kwargs,
        request=deferral.request,
        state=DEFERRED,
        outcome=None,
        timeout_at=timeout_at,
        updated_at=now,
    )
    if previous is None:
        generation = deferral.after_generation + 1
        conn.execute(
            insert(deferrals).values(
                task_id=deferral.task_id, generation=generation, created_at=now, **values
            )
        )
    else:
        generation = previous + 1
        conn.execute(
            update(deferrals)
            .where(deferrals.c.task_id == deferral.task_id)
            .values(generation=generation, **values)
        )
    return StoredDeferral(trigger_id=int(trigger_id), generation=generation)


def _claim_statement(*, reclaim: bool, settle: bool) -> Any:
    """The claim of a resume, built once per kind: it runs once for every resume."""
    return (
        update(deferrals)
        .where(
            deferrals.c.task_id == bindparam("b_task_id", type_=String),
            deferrals.c.generation == bindparam("b_generation", type_=Integer),
            deferrals.c.state.in_(claimable_states(reclaim=reclaim, settle=settle)),
        )
        .values(
            state=ENDED if settle else RUNNING, updated_at=bindparam("b_now", type_=UtcDateTime())
        )
    )


_CLAIMS = {
    (reclaim, settle): _claim_statement(reclaim=reclaim, settle=settle)
    for reclaim in (False, True)
    for settle in (False, True)
}


def begin_resume(
    conn: Connection, task_id: str, generation: int, *, reclaim: bool, settle: bool, now: datetime
) -> bool:
    """Move a published resume to ``running``, or with ``settle`` straight to ``ended``."""
    claimed = conn.execute(
        _CLAIMS[reclaim, settle], {"b_task_id": task_id, "b_generation": generation, "b_now": now}
    ).rowcount
    return bool(claimed == 1)


def reopen(conn: Connection, task_id: str, generation: int, *, now: datetime) -> None:
    """Put a running (or settled) resume back to ``resumed`` (its method asked to retry)."""
    conn.execute(
        update(deferrals)
        .where(
            deferrals.c.task_id == task_id,
            deferrals.c.generation == generation,
            deferrals.c.state.in_((RUNNING, ENDED)),
        )
        .values(state=RESUMED, updated_at=now)
    )


def finish(conn: Connection, task_id: str, generation: int, *, now: datetime) -> None:
    """Record the end of this generation's run, if it is the one running."""
    conn.execute(
        update(deferrals)
        .where(
            deferrals.c.task_id == task_id,
            deferrals.c.generation == generation,
            deferrals.c.state == RUNNING,
        )
        .values(state=ENDED, updated_at=now)
    )


def delete_ended(conn: Connection, older_than: datetime, limit: int) -> int:
    """Delete up to ``limit`` ended deferrals last updated before ``older_than``."""
    oldest = (
        select(deferrals.c.task_id)
        .where(deferrals.c.state == ENDED, deferrals.c.updated_at < older_than)
        .order_by(deferrals.c.updated_at)
        .limit(limit)
    )
    return int(
        conn.execute(
            delete(deferrals).where(
                deferrals.c.task_id.in_(oldest.scalar_subquery()),
                deferrals.c.state == ENDED,
            )
        ).rowcount
    )


def get(conn: Connection, task_id: str) -> DeferralInfo | None:
    """One deferral, or None (an ended row is no deferral any more)."""
    row = conn.execute(
        select(deferrals).where(deferrals.c.task_id == task_id, deferrals.c.state != ENDED)
    ).first()
    if row is None:
        return None
    return DeferralInfo.of(row)


def cancel(conn: Connection, task_ids: Sequence[str]) -> Cancelled:
    """Delete these deferrals unless running, and the triggers no one else waits on."""
    rows = conn.execute(
        select(deferrals.c.task_id, deferrals.c.trigger_id)
        .where(
            deferrals.c.task_id.in_(list(task_ids)),
            deferrals.c.state.in_((DEFERRED, FIRING, RESUMED)),
        )
        .with_for_update()
    ).all()
    if not rows:
        return Cancelled(task_ids=[], trigger_ids=[])
    cancelled = [r.task_id for r in rows]
    conn.execute(delete(deferrals).where(deferrals.c.task_id.in_(cancelled)))
    candidates = {int(r.trigger_id) for r in rows if r.trigger_id is not None}
    still_needed = conn.execute(
        select(deferrals.c.trigger_id).where(deferrals.c.trigger_id.in_(candidates))
    ).scalars()
    unneeded = sorted(candidates - {int(i) for i in still_needed})
    if unneeded:
        conn.execute(delete(triggers).where(triggers.c.id.in_(unneeded)))
    return Cancelled(task_ids=cancelled, trigger_ids=unneeded)

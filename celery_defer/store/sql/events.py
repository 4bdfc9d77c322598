"""External events in the SQL store (``defer_events``): sent, looked up by key, expired.

A concept apart from deferrals: events are written by any process
(:func:`celery_defer.send_event`), read in batches by triggerers and eager
tasks, and deleted by age by the sweep. An event is stamped with the store's
clock, the same clock its readers' cutoffs come from.

Reads are one statement per thousand keys whatever the number of events per
key: the newest event of each key is picked by the database (``MAX(id)``
grouped by key, on the ``(key, created_at)`` index), not in Python.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select

from celery_defer.store.records import ExternalEvent
from celery_defer.store.sql.engine import chunks
from celery_defer.store.sql.schema import external_events

__all__ = ["add", "delete_older", "latest"]


def _event(row: Any) -> ExternalEvent:
    return ExternalEvent(
        id=int(row.id), key=row.key, payload=row.payload, created_at=row.created_at
    )


def add(conn: Connection, key: str, payload: str, *, now: datetime) -> ExternalEvent:
    """Insert an event stamped ``now``."""
    inserted = conn.execute(
        insert(external_events).values(key=key, payload=payload, created_at=now)
    ).inserted_primary_key
    assert inserted is not None
    return ExternalEvent(id=int(inserted[0]), key=key, payload=payload, created_at=now)


def latest(conn: Connection, keys: Sequence[str], not_before: datetime) -> dict[str, ExternalEvent]:
    """The newest event of each key created at or after ``not_before``."""
    found: dict[str, ExternalEvent] = {}
    for chunk in chunks(sorted(set(keys))):
        newest = (
            select(func.max(external_events.c.id).label("id"))
            .where(external_events.c.key.in_(chunk), external_events.c.created_at >= not_before)
            .group_by(external_events.c.key)
            .subquery()
        )
        rows = conn.execute(
            select(external_events).join(newest, external_events.c.id == newest.c.id)
        )
        found.update((row.key, _event(row)) for row in rows)
    return found


def delete_older(conn: Connection, older_than: datetime, limit: int) -> int:
    """Delete up to ``limit`` of the oldest events created before ``older_than``."""
    # Ids first, then delete by id: MySQL takes no LIMIT in an IN
    # subquery, and a bounded delete keeps the sweep's locks short.
    ids = (
        conn.execute(
            select(external_events.c.id)
            .where(external_events.c.created_at < older_than)
            .order_by(external_events.c.created_at)
            .limit(limit)
        )
        .scalars()
        .all()
    )
    if not ids:
        return 0
    return int(conn.execute(delete(external_events).where(external_events.c.id.in_(ids))).rowcount)

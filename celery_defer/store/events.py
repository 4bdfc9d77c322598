"""The SQL store's queries on external events (``defer_events``).

A mixin of :class:`~celery_defer.store.sql.SqlStore`, kept in a module of its
own because events are a concept apart from deferrals: they are written by
any process (:func:`celery_defer.send_event`), read in batches by triggerers
and eager tasks, and deleted by age by the sweep.

Reads are one statement per thousand keys whatever the number of events per
key: the newest event of each key is picked by the database (``MAX(id)``
grouped by key, on the ``(key, created_at)`` index), not in Python.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, func, insert, select

from celery_defer.store.engine import to_naive_utc, translated, utcnow
from celery_defer.store.records import ExternalEvent
from celery_defer.store.schema import external_events

if TYPE_CHECKING:
    from sqlalchemy import Connection

__all__ = ["EventQueries"]

#: Most keys in one ``IN (...)`` list (drivers cap the number of parameters).
_KEYS_PER_QUERY = 1000


def _chunked(keys: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(keys), _KEYS_PER_QUERY):
        yield keys[start : start + _KEYS_PER_QUERY]


def _event(row: object) -> ExternalEvent:
    return ExternalEvent(
        id=int(row.id),  # type: ignore[attr-defined]
        key=row.key,  # type: ignore[attr-defined]
        payload=row.payload,  # type: ignore[attr-defined]
        created_at=row.created_at,  # type: ignore[attr-defined]
    )


class EventQueries:
    """External-event operations of the :class:`~celery_defer.store.base.Store` interface."""

    if TYPE_CHECKING:

        def _begin(self) -> AbstractContextManager[Connection]: ...

    @translated
    def add_event(self, key: str, payload: str) -> ExternalEvent:
        """Store an event stamped with this process's clock (naive UTC)."""
        now = utcnow()
        with self._begin() as conn:
            inserted = conn.execute(
                insert(external_events).values(key=key, payload=payload, created_at=now)
            ).inserted_primary_key
        assert inserted is not None
        return ExternalEvent(id=int(inserted[0]), key=key, payload=payload, created_at=now)

    @translated
    def latest_events(self, keys: Sequence[str], not_before: datetime) -> dict[str, ExternalEvent]:
        """The newest event of each key created at or after ``not_before``."""
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        cutoff = to_naive_utc(not_before)
        found: dict[str, ExternalEvent] = {}
        with self._begin() as conn:
            for chunk in _chunked(wanted):
                newest = (
                    select(func.max(external_events.c.id).label("id"))
                    .where(external_events.c.key.in_(chunk), external_events.c.created_at >= cutoff)
                    .group_by(external_events.c.key)
                    .subquery()
                )
                rows = conn.execute(
                    select(external_events).join(newest, external_events.c.id == newest.c.id)
                )
                found.update((row.key, _event(row)) for row in rows)
        return found

    @translated
    def delete_events(self, older_than: datetime, limit: int) -> int:
        """Delete up to ``limit`` of the oldest events created before ``older_than``."""
        cutoff = to_naive_utc(older_than)
        with self._begin() as conn:
            # Ids first, then delete by id: MySQL takes no LIMIT in an IN
            # subquery, and a bounded delete keeps the sweep's locks short.
            ids = (
                conn.execute(
                    select(external_events.c.id)
                    .where(external_events.c.created_at < cutoff)
                    .order_by(external_events.c.created_at)
                    .limit(limit)
                )
                .scalars()
                .all()
            )
            if not ids:
                return 0
            return int(
                conn.execute(delete(external_events).where(external_events.c.id.in_(ids))).rowcount
            )

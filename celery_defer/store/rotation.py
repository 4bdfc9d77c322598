"""The SQL store's bulk rewrite of stored user values: ``celery defer rotate-keys``.

A mixin of :class:`~celery_defer.store.sql.SqlStore`. The store never interprets
kwargs (it holds text, sealed or clear); the caller's ``rewrite`` function does
the re-encryption, so the store stays free of keys and of ``cryptography``.

It runs while workers and triggerers run, over stores of any size, so it walks
each table in primary-key order, a bounded batch at a time: one short
transaction reads a batch, ``rewrite`` runs outside any transaction, and one
more writes the changed rows back, each only if it is still the row that was
read (same task generation; a trigger's kwargs never change once stored). A
row that changed meanwhile was written by a process with the current keys.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Table, select, update

from celery_defer.store.engine import translated
from celery_defer.store.records import Rewritten
from celery_defer.store.schema import deferrals, triggers

if TYPE_CHECKING:
    from sqlalchemy import Column, Connection

__all__ = ["RotationQueries"]


class RotationQueries:
    """Key rotation operations of the :class:`~celery_defer.store.base.Store` interface."""

    if TYPE_CHECKING:

        def _begin(self) -> AbstractContextManager[Connection]: ...

    @translated
    def rewrite_user_values(
        self, rewrite: Callable[[str], str | None], batch_size: int = 500
    ) -> Rewritten:
        """Store ``rewrite(text)`` for each deferral's and trigger's kwargs it changes."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return Rewritten(
            deferrals=self._rewrite_table(
                deferrals, deferrals.c.task_id, deferrals.c.generation, rewrite, batch_size
            ),
            triggers=self._rewrite_table(triggers, triggers.c.id, None, rewrite, batch_size),
        )

    def _rewrite_table(
        self,
        table: Table,
        key: Column[Any],
        version: Column[Any] | None,
        rewrite: Callable[[str], str | None],
        batch_size: int,
    ) -> int:
        columns = [key, table.c.kwargs] + ([] if version is None else [version])
        rewritten = 0
        last: Any = None
        while True:
            query = select(*columns).order_by(key).limit(batch_size)
            if last is not None:
                query = query.where(key > last)
            with self._begin() as conn:
                rows = conn.execute(query).all()
            if not rows:
                return rewritten
            last = rows[-1][0]
            changed = [(row, new) for row in rows if (new := rewrite(row[1])) is not None]
            if changed:
                rewritten += self._write_back(table, key, version, changed)
            if len(rows) < batch_size:
                return rewritten

    def _write_back(
        self,
        table: Table,
        key: Column[Any],
        version: Column[Any] | None,
        changed: list[tuple[Any, str]],
    ) -> int:
        """Store each new text if its row is still the one read; return how many were."""
        written = 0
        with self._begin() as conn:
            for row, new in changed:
                unchanged: list[ColumnElement[bool]] = [key == row[0]]
                if version is not None:
                    unchanged.append(version == row[2])
                result = conn.execute(update(table).where(*unchanged).values(kwargs=new))
                written += int(result.rowcount)
        return written

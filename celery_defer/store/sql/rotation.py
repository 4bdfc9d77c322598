"""The SQL store's bulk rewrite of stored user values: ``celery defer rotate-keys``.

The store never interprets kwargs (it holds text, sealed or clear); the
caller's ``rewrite`` function does the re-encryption, so the store stays free
of keys and of ``cryptography``.

It runs while workers and triggerers run, over stores of any size, so it walks
each table in primary-key order, a bounded batch at a time: one short
transaction reads a batch, ``rewrite`` runs outside any transaction, and one
more writes the changed rows back, each only if it is still the row that was
read (same task generation; a trigger's kwargs never change once stored). A
row that changed meanwhile was written by a process with the current keys.

Unlike the other query modules, :func:`rewrite_table` takes ``begin`` (the
store's transaction factory) rather than one connection: it is many
transactions by design.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Column, ColumnElement, Connection, Table, select, update

from celery_defer.store.records import Rewritten
from celery_defer.store.sql.schema import deferrals, triggers

__all__ = ["rewrite_user_values"]

Begin = Callable[[], AbstractContextManager[Connection]]


def rewrite_user_values(
    begin: Begin, rewrite: Callable[[str], str | None], batch_size: int
) -> Rewritten:
    """Store ``rewrite(text)`` for each deferral's and trigger's kwargs it changes."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return Rewritten(
        deferrals=rewrite_table(
            begin, deferrals, deferrals.c.task_id, deferrals.c.generation, rewrite, batch_size
        ),
        triggers=rewrite_table(begin, triggers, triggers.c.id, None, rewrite, batch_size),
    )


def rewrite_table(
    begin: Begin,
    table: Table,
    key: Column[Any],
    version: Column[Any] | None,
    rewrite: Callable[[str], str | None],
    batch_size: int,
) -> int:
    """Rewrite one table's ``kwargs`` column, batch by batch; returns how many rows changed."""
    columns = [key, table.c.kwargs] + ([] if version is None else [version])
    rewritten = 0
    last: Any = None
    while True:
        query = select(*columns).order_by(key).limit(batch_size)
        if last is not None:
            query = query.where(key > last)
        with begin() as conn:
            rows = conn.execute(query).all()
        if not rows:
            return rewritten
        last = rows[-1][0]
        changed = [(row, new) for row in rows if (new := rewrite(row[1])) is not None]
        if changed:
            with begin() as conn:
                rewritten += write_back(conn, table, key, version, changed)
        if len(rows) < batch_size:
            return rewritten


def write_back(
    conn: Connection,
    table: Table,
    key: Column[Any],
    version: Column[Any] | None,
    changed: list[tuple[Any, str]],
) -> int:
    """Store each new text if its row is still the one read; return how many were."""
    written = 0
    for row, new in changed:
        unchanged: list[ColumnElement[bool]] = [key == row[0]]
        if version is not None:
            unchanged.append(version == row[2])
        result = conn.execute(update(table).where(*unchanged).values(kwargs=new))
        written += int(result.rowcount)
    return written

"""Storing deferrals fast: the rows ``Store.save_deferral`` writes, with PostgreSQL's COPY.

A benchmark that holds a million timers cannot store them one deferring task
at a time, nor even with multi-row INSERTs (12 s per 100,000 here, mostly
SQLAlchemy and psycopg building statements). COPY streams the rows: the
trigger ids are taken from the table's own sequence first, so each deferral
row names its trigger without a RETURNING round trip.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

__all__ = ["store_deferrals"]

TRIGGER_COLUMNS = "id, classpath, kwargs, wakes_at, created_at"
DEFERRAL_COLUMNS = (
    "task_id, task_name, trigger_id, method, kwargs, request, state, generation, "
    "created_at, updated_at"
)


def store_deferrals(
    engine: sa.Engine,
    snapshot: str,
    task_name: str,
    method: str,
    moments: Sequence[datetime],
    chunk: int = 50_000,
    as_timers: bool = True,
) -> list[str]:
    """Store one deferral per moment, each on a ``DateTimeTrigger`` at that moment.

    ``snapshot`` is the request snapshot every row carries (``wire.snapshot_request``).
    Each chunk is one transaction; returns the task ids, in moment order. With
    ``as_timers=False`` the triggers are stored without their moment, as a trigger
    that is not a pure timer is: a triggerer claims and holds them at once.
    """
    from celery_defer import serialization
    from celery_defer.store.sql.schema import deferrals, triggers
    from celery_defer.triggers import DateTimeTrigger

    _check_columns(triggers, TRIGGER_COLUMNS)
    _check_columns(deferrals, DEFERRAL_COLUMNS)
    kwargs = serialization.dumps({})
    # Naive UTC, as the store's UtcDateTime columns hold it.
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    encoded: dict[datetime, tuple[str, str]] = {}  # one encoding per distinct moment

    def trigger(moment: datetime) -> tuple[str, str]:
        if moment not in encoded:
            classpath, trigger_kwargs = DateTimeTrigger(moment).serialize()
            encoded[moment] = (classpath, serialization.dumps(trigger_kwargs))
        return encoded[moment]

    ids: list[str] = []
    for start in range(0, len(moments), chunk):
        part = moments[start : start + chunk]
        task_ids = [str(uuid.uuid4()) for _ in part]
        with engine.begin() as conn:
            trigger_ids = (
                conn.execute(
                    sa.text(
                        "select nextval(pg_get_serial_sequence('defer_triggers', 'id')) "
                        "from generate_series(1, :n)"
                    ),
                    {"n": len(part)},
                )
                .scalars()
                .all()
            )
            cursor: Any = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            with cursor.copy(f"COPY defer_triggers ({TRIGGER_COLUMNS}) FROM STDIN") as copy:
                for trigger_id, moment in zip(trigger_ids, part, strict=True):
                    # wakes_at, as save_deferral stores a timer's moment (naive UTC)
                    wakes_at = (
                        moment.astimezone(timezone.utc).replace(tzinfo=None) if as_timers else None
                    )
                    copy.write_row((trigger_id, *trigger(moment), wakes_at, now))
            with cursor.copy(f"COPY defer_deferrals ({DEFERRAL_COLUMNS}) FROM STDIN") as copy:
                for task_id, trigger_id in zip(task_ids, trigger_ids, strict=True):
                    copy.write_row(
                        (
                            task_id,
                            task_name,
                            trigger_id,
                            method,
                            kwargs,
                            snapshot,
                            "deferred",
                            1,
                            now,
                            now,
                        )
                    )
            cursor.close()
        ids.extend(task_ids)
    return ids


def _check_columns(table: sa.Table, columns: str) -> None:
    """Fail clearly when the store's schema gained a required column this COPY does not fill."""
    listed = {name.strip() for name in columns.split(",")}
    required = {
        column.name
        for column in table.columns
        if not column.nullable and column.server_default is None and column.default is None
    }
    if missing := required - listed:
        raise RuntimeError(
            f"bulk.py does not fill {table.name} column(s) {', '.join(sorted(missing))}"
        )

"""The tables of the SQL store, and the schema version they make.

Every column a triggerer or sweep loop filters on is indexed: loops must cost
the same whether a triggerer holds ten triggers or a hundred thousand.
Timestamps are naive UTC in every dialect (SQLite has no time zones).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.dialects import mysql

#: Bumped whenever a table changes; ``create_schema`` upgrades older stores.
#: 2: ``defer_events`` (external events) added.
SCHEMA_VERSION = 2

metadata = MetaData()

# SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
_TriggerId = BigInteger().with_variant(Integer(), "sqlite")

schema_info = Table(
    "defer_schema",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)

triggerers = Table(
    "defer_triggerers",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("host", String(255), nullable=False),
    Column("pid", Integer, nullable=False),
    Column("capacity", Integer, nullable=False),
    Column("started_at", DateTime, nullable=False),
    Column("heartbeat_at", DateTime, nullable=False, index=True),
)

triggers = Table(
    "defer_triggers",
    metadata,
    Column("id", _TriggerId, primary_key=True, autoincrement=True),
    Column("classpath", String(255), nullable=False),
    Column("kwargs", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("triggerer_id", String(64), nullable=True, index=True),
    # Never reuse an id: a late outcome or notice for a deleted trigger must
    # not land on a new one (SQLite reuses the highest rowid otherwise).
    sqlite_autoincrement=True,
)

#: Claims take unowned triggers in id order. Where the dialect has partial
#: indexes, this one keeps a claim proportional to its batch however many
#: triggers are owned; it came after schema version 1 (no table changed), so
#: ``create_schema`` adds it to existing stores.
unowned_triggers = Index(
    "ix_defer_triggers_unowned",
    triggers.c.id,
    postgresql_where=triggers.c.triggerer_id.is_(None),
    sqlite_where=triggers.c.triggerer_id.is_(None),
).ddl_if(dialect=("postgresql", "sqlite"))  # type: ignore[arg-type]  # a tuple is documented

deferrals = Table(
    "defer_deferrals",
    metadata,
    Column("task_id", String(255), primary_key=True),
    Column("task_name", String(255), nullable=False),
    Column(
        "trigger_id",
        _TriggerId,
        ForeignKey("defer_triggers.id", ondelete="SET NULL"),
        nullable=True,
        index=True,
    ),
    Column("method", String(255), nullable=False),
    Column("kwargs", Text, nullable=False),
    Column("request", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("outcome", Text, nullable=True),
    Column("generation", Integer, nullable=False),
    Column("timeout_at", DateTime, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Index("ix_defer_deferrals_state_timeout", "state", "timeout_at"),
    Index("ix_defer_deferrals_state_updated", "state", "updated_at"),
)

#: External events (``celery_defer.send_event``), kept ``defer_event_retention``
#: seconds. Added in schema version 2: ``create_all(checkfirst=True)`` creates it
#: in a version 1 store. Waiters look up the newest event per key at or after a
#: cutoff, hence (key, created_at); the sweep deletes by age, hence created_at.
external_events = Table(
    "defer_events",
    metadata,
    Column("id", _TriggerId, primary_key=True, autoincrement=True),
    Column("key", String(255), nullable=False),
    Column("payload", Text, nullable=False),
    # Microseconds on MySQL too (its DATETIME rounds to the second), since
    # ``since`` compares to the instant an event was sent.
    Column(
        "created_at",
        DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb"),
        nullable=False,
    ),
    Index("ix_defer_events_key_created", "key", "created_at"),
    Index("ix_defer_events_created", "created_at"),
    sqlite_autoincrement=True,
)

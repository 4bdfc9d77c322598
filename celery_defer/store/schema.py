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

#: Bumped whenever a table changes; ``create_schema`` upgrades older stores.
SCHEMA_VERSION = 1

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

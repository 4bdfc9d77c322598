"""The tables of the SQL store, the schema version they make, and its create/upgrade.

Every column a triggerer or sweep loop filters on is indexed: loops must cost
the same whether a triggerer holds ten triggers or a hundred thousand.
Timestamps are naive UTC in every dialect (SQLite has no time zones); their
:class:`~celery_defer.store.sql.columns.UtcDateTime` type makes them aware UTC
in Python. All of the schema's life is here: a new table or index and the
upgrade that adds it to existing stores are written side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.schema import CreateColumn, CreateIndex

from celery_defer.exceptions import ConfigurationError
from celery_defer.store.sql.columns import StateColumn, UtcDateTime

#: Bumped whenever a table changes; ``create_schema`` upgrades older stores.
#: 2: ``defer_events`` (external events) added.
#: 3: ``defer_triggers.wakes_at`` (timers stay rows until near their moment) and its index.
SCHEMA_VERSION = 3

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
    Column("started_at", UtcDateTime(), nullable=False),
    Column("heartbeat_at", UtcDateTime(), nullable=False, index=True),
)

triggers = Table(
    "defer_triggers",
    metadata,
    Column("id", _TriggerId, primary_key=True, autoincrement=True),
    Column("classpath", String(255), nullable=False),
    Column("kwargs", Text, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("triggerer_id", String(64), nullable=True, index=True),
    # A timer's moment (BaseTrigger.wakes_at), None for any other trigger. Added in
    # schema version 3: create_schema adds the column to an older store.
    Column("wakes_at", UtcDateTime(), nullable=True),
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

#: Claims take unowned timers due within the horizon, soonest first, and then unowned
#: other triggers (no moment) by id: (owner, moment, id) finds both without reading
#: the far timers, however many (schema version 3).
unowned_timers = Index(
    "ix_defer_triggers_owner_wakes", triggers.c.triggerer_id, triggers.c.wakes_at, triggers.c.id
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
    Column("state", StateColumn(), nullable=False),
    Column("outcome", Text, nullable=True),
    Column("generation", Integer, nullable=False),
    Column("timeout_at", UtcDateTime(), nullable=True),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
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
    Column("created_at", UtcDateTime(microseconds=True), nullable=False),
    Index("ix_defer_events_key_created", "key", "created_at"),
    Index("ix_defer_events_created", "created_at"),
    sqlite_autoincrement=True,
)


def create_schema(engine: Engine, url: str) -> None:
    """Create the tables, or upgrade an older store's; safe to run twice, or at once.

    ``url`` only names the store in the error raised when its schema is newer
    than this code.
    """
    for attempt in range(3):
        try:
            metadata.create_all(engine, checkfirst=True)
            break
        except (IntegrityError, OperationalError):
            # Two processes creating the schema at once: the loser's
            # CREATE fails; the tables exist now, so check again.
            if attempt == 2:
                raise
    _add_later_indexes(engine)
    with engine.begin() as conn:
        version = conn.execute(select(schema_info.c.version)).scalar()
        if version is None:
            conn.execute(insert(schema_info).values(id=1, version=SCHEMA_VERSION))
        elif version > SCHEMA_VERSION:
            raise ConfigurationError(
                f"the store at {url!r} has schema version {version}, newer than "
                f"this celery-defer understands ({SCHEMA_VERSION}): upgrade celery-defer"
            )
        elif version < SCHEMA_VERSION:
            # create_all above added the newer tables; record the upgrade.
            conn.execute(update(schema_info).values(version=SCHEMA_VERSION))


def _add_later_indexes(engine: Engine) -> None:
    """Columns and indexes added after the tables shipped (``create_all`` skips existing tables)."""
    column = CreateColumn(triggers.c.wakes_at).compile(dialect=engine.dialect)
    _once(
        engine,
        text(f"ALTER TABLE {triggers.name} ADD COLUMN {column}"),
        lambda: "wakes_at" in {c["name"] for c in inspect(engine).get_columns(triggers.name)},
    )
    later = [unowned_timers]
    if engine.dialect.name in ("postgresql", "sqlite"):
        later.append(unowned_triggers)
    for index in later:
        _once(engine, CreateIndex(index), partial(_has_index, engine, str(index.name)))


def _has_index(engine: Engine, name: str) -> bool:
    return bool(inspect(engine).has_index(triggers.name, name))


def _once(engine: Engine, statement: Any, done: Callable[[], bool]) -> None:
    """Make a schema change unless ``done()``: another process may be making it at once."""
    for attempt in range(3):
        if done():
            return
        try:
            with engine.begin() as conn:
                conn.execute(statement)
            return
        except (IntegrityError, OperationalError, ProgrammingError):
            # Another process made it first: fine if it is there now.
            if attempt == 2:
                raise


def schema_version(engine: Engine) -> int | None:
    """The stored schema version, or None when the schema is absent."""
    if not inspect(engine).has_table(schema_info.name):
        return None
    with engine.connect() as conn:
        version = conn.execute(select(schema_info.c.version)).scalar()
    return None if version is None else int(version)

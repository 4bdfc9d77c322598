"""Connections for the SQL store: engines per dialect, and error translation.

Kept apart from the queries of :mod:`celery_defer.store.sql` because these are
the driver-facing details: SQLite's locking mode, PostgreSQL's pool health
checks, and turning every driver error into a
:class:`~celery_defer.exceptions.StoreError` at the store's edge.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DisconnectionError, SQLAlchemyError

from celery_defer.exceptions import ConfigurationError, SchemaMissing, StoreError

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


def create_store_engine(url: str) -> Engine:
    """An engine for ``url``, tuned for the store's short transactions."""
    try:
        if make_url(url).get_backend_name() == "sqlite":
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _configure_sqlite)
            event.listen(engine, "begin", _begin_immediate)
            return engine
        engine = create_engine(url, pool_recycle=1800)
        event.listen(engine, "checkin", _mark_returned)
        event.listen(engine, "checkout", _pinging_if_idle(engine))
        return engine
    except (ArgumentError, ImportError) as exc:
        raise ConfigurationError(f"cannot use defer_database_url {url!r}: {exc}") from exc


#: A pooled connection idle longer than this (seconds) is pinged before use.
IDLE_PING = 1.0


def _mark_returned(_dbapi_connection: Any, record: Any) -> None:
    record.info["returned_at"] = time.monotonic()


def _pinging_if_idle(engine: Engine) -> Callable[[Any, Any, Any], None]:
    """The checkout hook of ``engine``: ping a connection that sat in the pool.

    A database restart must cost one reconnect, not one error per pooled
    connection; ``pool_pre_ping`` would buy that with a round trip before
    every transaction, on the hot path. A connection back in the pool within
    the last :data:`IDLE_PING` seconds is used as is (a restart in that
    window costs one error, which the store's callers retry); an older one is
    pinged with the dialect's own ping (which leaves no transaction open), and
    a dead one replaced (``DisconnectionError`` makes the pool reconnect).
    """

    def ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned_at = record.info.get("returned_at")
        if returned_at is None or time.monotonic() - returned_at < IDLE_PING:
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"stale pooled connection: {exc}") from exc
        if not alive:
            raise DisconnectionError("stale pooled connection")

    return ping_if_idle


def translated(method: Callable[P, R]) -> Callable[P, R]:
    """Turn driver errors into StoreError at the store's edge."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except SQLAlchemyError as exc:
            if is_missing_table(exc):
                raise SchemaMissing() from exc
            # Name the store: a driver's message alone ("unable to open database
            # file") does not say which database, nor that it is celery-defer's.
            where = _store_name(args[0] if args else None)
            raise StoreError(f"{method.__name__} failed{where}: {exc}") from exc

    return wrapper


def _store_name(store: Any) -> str:
    url = getattr(store, "url", None)
    if not isinstance(url, str):
        return ""
    try:
        return f" on the deferral store {make_url(url).render_as_string(hide_password=True)}"
    except ArgumentError:
        return ""


# The error must name one of our tables: "does not exist" alone also covers a
# missing database, whose name may well contain "defer_".
_MISSING_TABLE = re.compile(
    r"no such table: (?:\w+\.)?defer_"  # SQLite
    r"|relation \"(?:\w+\.)?defer_\w+\" does not exist"  # PostgreSQL
    r"|table '(?:[^']*\.)?defer_\w+' doesn't exist"  # MySQL, MariaDB
)


def is_missing_table(exc: SQLAlchemyError) -> bool:
    """Whether a driver error says one of our tables does not exist (no schema yet)."""
    return _MISSING_TABLE.search(str(exc).lower()) is not None


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver level, so that ``_begin_immediate`` controls
    # when transactions start (pysqlite's implicit BEGIN is DEFERRED, which
    # lets two writers deadlock on the read-to-write lock upgrade).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _begin_immediate(conn: Connection) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


#: Most ids in one ``IN (...)`` list: drivers take at most 65,535 parameters
#: (psycopg, asyncpg) or 32,766 (SQLite), and a short list plans well.
IN_CHUNK = 1000


def chunks(values: Sequence[T]) -> Iterator[Sequence[T]]:
    """``values`` in slices short enough for one ``IN (...)`` list."""
    for start in range(0, len(values), IN_CHUNK):
        yield values[start : start + IN_CHUNK]

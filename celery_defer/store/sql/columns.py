"""Column types that keep the SQL store's records free of database quirks.

Records carry aware UTC datetimes and :class:`~celery_defer.store.records.DeferralState`
members, whatever the dialect: SQLite has no time zones and MySQL's DATETIME
none either, so every timestamp column holds naive UTC, and these types are
the one place where a value is converted on its way in and out. Nothing above
``store/sql/`` ever sees (or makes) a naive datetime.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import DateTime, Dialect, String
from sqlalchemy.dialects import mysql
from sqlalchemy.types import TypeDecorator, TypeEngine

from celery_defer.store.records import DeferralState

__all__ = ["StateColumn", "UtcDateTime", "aware_utc"]


def aware_utc(moment: datetime, name: str = "datetime") -> datetime:
    """``moment`` in UTC; a naive one is refused.

    Store methods check the datetimes they are given before any SQL runs, so
    a caller's bug is a ``ValueError`` naming the argument, not a
    :class:`~celery_defer.exceptions.StoreError` that looks like an outage.
    """
    if moment.utcoffset() is None:
        raise ValueError(f"the store takes aware UTC datetimes; {name} is naive: {moment!r}")
    return moment.astimezone(timezone.utc)


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime in Python, naive UTC in the column.

    ``microseconds`` asks MySQL and MariaDB for ``DATETIME(6)`` (their DATETIME
    rounds to the second); other dialects keep microseconds anyway.
    """

    impl = DateTime
    cache_ok = True

    def __init__(self, microseconds: bool = False) -> None:
        super().__init__()
        self.microseconds = microseconds

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if self.microseconds and dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return aware_utc(value).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.utcoffset() is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class StateColumn(TypeDecorator[DeferralState]):
    """A deferral state: its string value in the column, the enum member in Python.

    Binds always send the plain string, so no driver has to guess how to
    adapt an enum (psycopg would send a member's name).
    """

    impl = String(16)
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if isinstance(value, DeferralState):
            return value.value
        return value

    def process_result_value(self, value: str | None, dialect: Dialect) -> DeferralState | None:
        return None if value is None else DeferralState(value)

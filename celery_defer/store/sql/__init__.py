"""The SQL store: :class:`SqlStore` and the statements it runs, one module per concern.

========================  ===========================================================
``store``                 :class:`SqlStore`: engine, transactions, clock; delegates
``schema``                tables, schema version, create and upgrade
``columns``               aware-UTC timestamps and state enum at the column boundary
``engine``                engines per dialect; driver errors become ``StoreError``
``deferrals``             save, claim for resuming, reopen, finish, get, cancel
``firing``                a trigger's outcome to its waiters; published resumes
``triggerers``            registration, heartbeats, claiming and releasing triggers
``recovery``              the sweep: timeouts, stranded resumes, unused triggers
``events``                external events: add, newest per key, expire
``inspection``            read-only listings for ``celery defer list/show/stats``
``rotation``              batched rewrite of stored kwargs (``rotate-keys``)
``orders``                the columns a resume order is read from
========================  ===========================================================

Nothing outside this package imports SQLAlchemy for the store, and nothing
outside it sees a naive datetime.
"""

from __future__ import annotations

from celery_defer.store.sql.schema import SCHEMA_VERSION
from celery_defer.store.sql.store import SqlStore

__all__ = ["SCHEMA_VERSION", "SqlStore"]

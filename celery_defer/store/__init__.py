"""Where deferrals and triggers live.

:func:`store_for` gives each process one store per app, built from the
``defer_database_url`` setting: a :class:`SqlStore`, or with ``memory://`` an
:class:`InMemoryStore`. Connection pools must never cross a fork (prefork
workers fork after the app is imported), so the cache is keyed by process id
as well as by app; an in-memory store is per process by nature, and a forked
child starts with an empty one rather than a copy it would diverge from.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING

from celery_defer.settings import Settings
from celery_defer.store.base import Clock, Store, system_clock
from celery_defer.store.memory import InMemoryStore
from celery_defer.store.memory_tables import MEMORY_URL, is_memory_url
from celery_defer.store.records import (
    DEFERRED,
    ENDED,
    FIRING,
    RESUMED,
    RUNNING,
    Cancelled,
    ClaimedTrigger,
    DeferralInfo,
    DeferralState,
    ExternalEvent,
    NewDeferral,
    ResumeOrder,
    StoredDeferral,
    TriggerOutcome,
)
from celery_defer.store.sql import SqlStore

if TYPE_CHECKING:
    from celery import Celery

__all__ = [
    "DEFERRED",
    "ENDED",
    "FIRING",
    "MEMORY_URL",
    "RESUMED",
    "RUNNING",
    "Cancelled",
    "ClaimedTrigger",
    "Clock",
    "DeferralInfo",
    "DeferralState",
    "ExternalEvent",
    "InMemoryStore",
    "NewDeferral",
    "ResumeOrder",
    "SqlStore",
    "Store",
    "StoredDeferral",
    "TriggerOutcome",
    "store_for",
    "system_clock",
]

_stores: weakref.WeakKeyDictionary[Celery, tuple[int, Store]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def store_for(app: Celery) -> Store:
    """The store of ``app`` for this process, created on first use."""
    pid = os.getpid()
    with _lock:
        cached = _stores.get(app)
        if cached is not None and cached[0] == pid:
            return cached[1]
        url = Settings.from_app(app).database_url
        store: Store = InMemoryStore() if is_memory_url(url) else SqlStore(url)
        _stores[app] = (pid, store)
        return store

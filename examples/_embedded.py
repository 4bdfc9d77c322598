"""The no-server setup shared by the trigger examples.

Each example runs a Celery worker (a thread: ``celery.contrib.testing.worker.start_worker``)
and a ``celery_defer.Triggerer`` in its own process, on embedded defaults: kombu's
``filesystem://`` broker, a ``file://`` result backend and a SQLite store, all in a fresh
temporary directory. In production these are ``celery -A proj worker`` and
``celery -A proj triggerer`` processes on a real broker; the task code is the same.
"""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from celery import Celery
from celery.contrib.testing.worker import start_worker
from celery.result import AsyncResult

import celery_defer
from celery_defer import Triggerer


def embedded_app(name: str) -> Celery:
    """A Celery app whose broker, results and deferral store are files in a temp dir."""
    data = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    atexit.register(shutil.rmtree, data, ignore_errors=True)
    for folder in ("broker", "control", "results"):
        (data / folder).mkdir()
    app = Celery(
        name,
        broker="defer-filesystem://",
        backend=f"file://{data / 'results'}",
        set_as_current=False,
    )
    app.conf.update(
        broker_transport_options={
            "data_folder_in": str(data / "broker"),
            "data_folder_out": str(data / "broker"),
            "control_folder": str(data / "control"),
            "polling_interval": 0.05,
        },
        defer_database_url=f"sqlite:///{data / 'store.sqlite3'}",
        defer_triggerer_heartbeat=1.0,
        defer_triggerer_health_timeout=10.0,
    )
    celery_defer.install(app)
    return app


@contextmanager
def worker_and_triggerer(app: Celery, concurrency: int = 2) -> Iterator[None]:
    """A worker thread and a triggerer for ``app``, for the duration of the block."""
    logging.getLogger("celery").setLevel(logging.CRITICAL)  # keep the example's output clean
    with (
        start_worker(
            app,
            pool="threads",
            concurrency=concurrency,
            perform_ping_check=False,
            loglevel="CRITICAL",
        ),
        Triggerer(app),
    ):
        yield


def until_deferred(result: AsyncResult, timeout: float = 10.0) -> str:
    """Wait until ``result`` leaves PENDING (it should read DEFERRED); return its state."""
    deadline = time.monotonic() + timeout
    while result.state == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.02)
    return str(result.state)

"""In-process apps for tests: the memory transport, a SQLite store, a real worker (threads
pool) and a real triggerer running in the test's own process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from celery import Celery
from celery.contrib.testing.worker import start_worker

import celery_defer


def make_app(store_url: str, **conf: object) -> Celery:
    """A Celery app isolated from every other test's app.

    The memory transport is global to the process, so each app gets queue names of its own:
    a message left over by one test can never reach another test's worker.
    """
    suffix = uuid.uuid4().hex[:8]
    app = Celery(f"t{suffix}", broker="memory://", backend="cache+memory://",
                 set_as_current=False)
    app.conf.update(
        defer_database_url=store_url,
        defer_triggerer_heartbeat=0.2,
        defer_triggerer_health_timeout=2.0,
        defer_sweep_interval=0.5,
        defer_trigger_queue=f"celery_defer.triggers.{suffix}",
        task_default_queue=f"celery.{suffix}",
        broker_transport_options={"polling_interval": 0.01},
        result_extended=True,
    )
    app.conf.update(conf)
    celery_defer.install(app)
    return app


@contextmanager
def running(app: Celery, concurrency: int = 1,
            capacity: int | None = None) -> Iterator[celery_defer.Triggerer]:
    """A real worker (threads pool) and a real triggerer, both in this process."""
    with (
        start_worker(app, pool="threads", concurrency=concurrency, perform_ping_check=False,
                     shutdown_timeout=10.0),
        celery_defer.Triggerer(app, capacity=capacity) as triggerer,
    ):
        yield triggerer

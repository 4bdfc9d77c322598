"""The Celery app every benchmark runs as real processes (``celery -A benchapp ...``).

Everything that differs per run comes from ``BENCH_*`` environment variables
set by :mod:`harness`: broker, result backend, store (a PostgreSQL schema of the
run's own), queue names and a Redis key prefix, so that runs never share
queues, keys or tables with each other or with the test suite.

The tasks do trivial work and leave a mark in Redis (a counter, or a list of
delays) that the benchmark reads to know when everything has finished.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Celery, signals

import celery_defer
from celery_defer import DeferrableTask
from celery_defer.triggers import DateTimeTrigger, TimeDeltaTrigger

BROKER_URL = "BENCH_BROKER_URL"
RESULT_BACKEND = "BENCH_RESULT_BACKEND"
DATABASE_URL = "BENCH_DATABASE_URL"
MARKER_URL = "BENCH_MARKER_URL"  # Redis, for the marks tasks leave
PREFIX = "BENCH_PREFIX"  # the run's Redis key prefix, also its queue-name stem


def create_app(env: Mapping[str, str]) -> Celery:
    """The benchmark app configured from ``env`` (harmless defaults when unset)."""
    prefix = env.get(PREFIX, "bench:none:")
    stem = prefix.replace(":", ".").strip(".")
    app = Celery(
        "benchapp",
        broker=env.get(BROKER_URL, "memory://"),
        backend=env.get(RESULT_BACKEND, "cache+memory://"),
        set_as_current=False,
    )
    # Prefixing every Redis key (broker and results) keeps a run's keys apart
    # from everyone else's on a shared server, and easy to delete afterwards.
    redis_options = {"global_keyprefix": prefix}
    app.conf.update(
        defer_database_url=env.get(DATABASE_URL, "sqlite:///bench.sqlite3"),
        defer_trigger_queue=f"{stem}.triggers",
        task_default_queue=stem,
        control_exchange=f"{stem}.control",
        event_exchange=f"{stem}.events",
        result_expires=3600,
        broker_connection_retry_on_startup=True,
    )
    if app.conf.broker_url.startswith("redis"):
        app.conf.broker_transport_options = redis_options
    if str(app.conf.result_backend).startswith("redis"):
        app.conf.result_backend_transport_options = redis_options
    celery_defer.install(app)
    return app


app = create_app(os.environ)
_redis: Any = None


def marks() -> Any:
    """This process's Redis client for marks (redis-py reconnects after a fork)."""
    global _redis
    if _redis is None:
        import redis

        _redis = redis.Redis.from_url(os.environ[MARKER_URL])
    return _redis


def key(name: str) -> str:
    return f"{os.environ[PREFIX]}{name}"


def done() -> None:
    marks().incr(key("done"))


@app.task(name="bench.plain")
def plain(i: int) -> int:
    """The trivial work, as a plain Celery task."""
    done()
    return i


@app.task(name="bench.stamp")
def stamp(sent: float) -> None:
    """Records how long after ``sent`` (epoch seconds) it started."""
    marks().rpush(key("delays"), f"{time.time() - sent:.6f}")


@app.task(name="bench.cycle", base=DeferrableTask, bind=True)
def cycle(self: DeferrableTask, i: int, event: Any = None) -> int:
    """The same work after one defer + resume on a trigger due at once."""
    if event is None:
        self.defer(trigger=DateTimeTrigger(datetime.now(timezone.utc)), kwargs={"i": i})
    done()
    return i


@app.task(name="bench.wait", base=DeferrableTask, bind=True)
def wait(self: DeferrableTask, i: int, seconds: float, event: Any = None) -> int:
    """Waits ``seconds`` without holding a worker slot."""
    marks().incr(key("executions"))
    if event is None:
        self.defer(
            trigger=TimeDeltaTrigger(timedelta(seconds=seconds)),
            kwargs={"i": i, "seconds": seconds},
        )
    done()
    return i


@app.task(name="bench.poll", bind=True, max_retries=None)
def poll(self: Any, i: int, until: float, countdown: float) -> int:
    """Waits until ``until`` (epoch seconds) with Celery's retry(countdown=...) pattern."""
    marks().incr(key("executions"))
    if time.time() < until:
        raise self.retry(countdown=countdown)
    done()
    return i


#: How far ahead ``bench.park`` defers: nothing it parks fires during a benchmark.
PARK_FOR = timedelta(days=1)


@app.task(name="bench.park", base=DeferrableTask, bind=True)
def park(self: DeferrableTask, i: int, event: Any = None) -> int:
    """Defers at once on a ``DateTimeTrigger`` a day ahead; counted done once deferred."""
    if event is None:
        self.defer(trigger=DateTimeTrigger(datetime.now(timezone.utc) + PARK_FOR), kwargs={"i": i})
    return i


@signals.task_postrun.connect
def parked(sender: Any = None, **_: Any) -> None:
    # Counted once the whole deferring execution is over (DEFERRED written, the
    # deferral stored, Celery's Ignore handled), so the last one counted is done.
    if getattr(sender, "name", None) == "bench.park":
        done()


class Probe(DeferrableTask):
    """Only ever resumed (the benchmark stores its deferrals): records how late it starts."""

    name = "bench.probe"

    def run(self) -> None:  # pragma: no cover - never sent directly
        raise RuntimeError("bench.probe is only resumed")

    def arrive(self, event: Any = None) -> None:
        started = time.time()
        due: datetime = event.payload
        marks().rpush(key("delays"), f"{started - due.timestamp():.6f} {due.timestamp():.6f}")


probe = app.register_task(Probe())

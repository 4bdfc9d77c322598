"""Deferred tasks in Celery's canvas: chain, group, chord, callbacks and revoke.

    pip install -e . && python examples/canvas.py

Everything runs in this one process, to keep the example short: a Celery
worker thread (``celery.contrib.testing.worker.start_worker``) and an embedded
``celery_defer.Triggerer`` on the in-memory broker, with a SQLite store in a
temporary directory. In production these are ``celery -A proj worker`` and
``celery -A proj triggerer`` processes; the task code is the same.
"""

from __future__ import annotations

import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from celery import Celery, chain, chord, group
from celery.contrib.testing.worker import start_worker

import celery_defer
from celery_defer import DeferrableTask, Triggerer
from celery_defer.triggers import TimeDeltaTrigger

app = Celery("canvas", broker="memory://", backend="cache+memory://", set_as_current=False)
app.conf.update(
    defer_database_url=f"sqlite:///{Path(tempfile.mkdtemp()) / 'store.sqlite3'}",
    broker_transport_options={"polling_interval": 0.01},
)
celery_defer.install(app)


@app.task(name="canvas.add")
def add(x: int, y: int = 1) -> int:
    return x + y


@app.task(name="canvas.total")
def total(values: list[int]) -> int:
    return sum(values)


CALLBACKS: list[str] = []


@app.task(name="canvas.report")
def report(value: Any, label: str) -> None:
    CALLBACKS.append(f"  callback {label!r} got {value!r}")


@app.task(base=DeferrableTask, bind=True, name="canvas.slow_double")
def slow_double(self: DeferrableTask, x: int, event: Any = None) -> int:
    """Waits half a second off the worker, then doubles ``x``."""
    if event is None:
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=0.5)), kwargs={"x": x})
    return x * 2


@app.task(base=DeferrableTask, bind=True, name="canvas.wait_an_hour")
def wait_an_hour(self: DeferrableTask) -> None:
    self.defer(trigger=TimeDeltaTrigger(timedelta(hours=1)))


def main() -> None:
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False), Triggerer(app):
        # The deferring task sits in the middle of a chain: add(1) -> 2, doubled -> 4, +1 -> 5.
        print("chain :", chain(add.s(1), slow_double.s(), add.s()).apply_async().get(timeout=10))

        # Ten deferring tasks at once: they wait together, not one after the other.
        started = time.monotonic()
        doubled = group(slow_double.s(i) for i in range(10)).apply_async().get(timeout=10)
        print(f"group : {doubled} in {time.monotonic() - started:.1f}s")

        # The chord's callback runs once, after the last member resumed and finished.
        print(
            "chord :",
            chord((slow_double.s(i) for i in range(10)), total.s()).apply_async().get(timeout=10),
        )

        # link fires at the real end, not when the task deferred.
        result = slow_double.apply_async((21,), link=report.s(label="link"))
        print("link  : state while waiting =", _state_soon(result), "-> result", result.get(10))
        deadline = time.monotonic() + 5
        while not CALLBACKS and time.monotonic() < deadline:
            time.sleep(0.02)
        print("\n".join(CALLBACKS))

        # revoke() cancels the deferral: the trigger stops and the task ends REVOKED.
        waiting = wait_an_hour.delay()
        _state_soon(waiting)
        waiting.revoke()
        deadline = time.monotonic() + 10
        while waiting.state != "REVOKED" and time.monotonic() < deadline:
            time.sleep(0.05)
        print("revoke:", waiting.state)


def _state_soon(result: Any) -> str:
    deadline = time.monotonic() + 5
    while result.state == "PENDING" and time.monotonic() < deadline:
        time.sleep(0.02)
    return str(result.state)


if __name__ == "__main__":
    main()

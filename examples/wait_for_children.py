"""A parent task fans out children and waits for them without holding a worker slot.

    pip install -e . && python examples/wait_for_children.py

``result.get()`` inside a task blocks its worker slot for as long as the child runs (and
deadlocks a pool full of waiting parents; Celery refuses it by default). Here the parent
defers on one ``TaskResultTrigger`` per child, in turn: while it waits it is ``DEFERRED`` and
its slot runs the children. A child that is already done when the parent gets to it fires at
once, so the total wait is the slowest child's, not the sum. A failed child does not fail the
parent: its payload carries the state and the error, and the parent decides.

No server needed: see ``_embedded.py`` (filesystem broker, ``file://`` results, SQLite store).
"""

from __future__ import annotations

import time
from typing import Any

from _embedded import embedded_app, until_deferred, worker_and_triggerer

from celery_defer import DeferrableTask, TriggerEvent
from celery_defer.triggers import TaskResultTrigger

app = embedded_app("wait_for_children")


@app.task(name="wait_for_children.square")
def square(n: int) -> int:
    """A child: takes a moment, and child 3 fails."""
    time.sleep(0.3 + 0.1 * n)
    if n == 3:
        raise ValueError(f"child {n} refuses")
    return n * n


class FanOut(DeferrableTask):
    """Starts ``count`` children, then collects their outcomes one deferral at a time."""

    name = "wait_for_children.fan_out"

    def run(self, count: int) -> None:
        children = [square.delay(n).id for n in range(count)]
        self._wait_for(children, collected=[])

    def collect(self, pending: list[str], collected: list[str], event: TriggerEvent) -> Any:
        collected.append(describe(event.payload))
        if pending:
            self._wait_for(pending, collected)
        return collected

    def _wait_for(self, pending: list[str], collected: list[str]) -> None:
        self.defer(
            trigger=TaskResultTrigger(pending[0], poll_interval=0.2),
            method_name="collect",
            kwargs={"pending": pending[1:], "collected": collected},
            timeout=60,
        )


fan_out = app.register_task(FanOut())


def describe(payload: dict[str, Any]) -> str:
    """One line per child: its state and result, or its error."""
    if payload["state"] == "SUCCESS":
        return f"{payload['state']} -> {payload['result']}"
    error = payload["error"]
    return f"{payload['state']} -> {error['type']}: {error['message']}"


def main() -> None:
    with worker_and_triggerer(app):
        started = time.monotonic()
        parent = fan_out.delay(5)
        print(f"parent is {until_deferred(parent)} while its 5 children run")
        for number, line in enumerate(parent.get(timeout=30)):
            print(f"child {number}: {line}")
        print(f"parent {parent.state} in {time.monotonic() - started:.1f}s")


if __name__ == "__main__":
    main()

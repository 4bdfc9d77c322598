"""FileTrigger: fires once the path exists, not before, and never stats on the event loop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from celery_defer import DeferrableTask, Triggerer
from celery_defer.triggers import FileTrigger
from tests.support.inprocess import make_app

pytestmark = pytest.mark.timeout(30)


# -- through a real worker and triggerer ---------------------------------------------------------


@pytest.fixture
def live(app: Celery) -> Iterator[Celery]:
    @app.task(base=DeferrableTask, bind=True, shared=False, name="t.await_file")
    def await_file(self: DeferrableTask, path: str, event: Any = None) -> Any:
        if event is None:
            self.defer(trigger=FileTrigger(path, poll_interval=0.05), kwargs={"path": path})
        return event.payload

    with (
        start_worker(app, pool="threads", concurrency=1, perform_ping_check=False),
        Triggerer(app),
    ):
        yield app


def test_a_task_resumes_once_its_file_lands(live: Celery, tmp_path: Path) -> None:
    target = tmp_path / "landing" / "done.flag"
    waiting = live.tasks["t.await_file"].delay(str(target))
    deadline = time.monotonic() + 10
    while waiting.state != "DEFERRED":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.3)
    assert waiting.state == "DEFERRED"
    target.parent.mkdir()
    # As a producer should: write beside it, then rename into place. A file written in
    # place can be seen (and fire the trigger) after it is created and before it is written.
    partial = target.with_name(".done.flag.partial")
    partial.write_text("ok")
    partial.replace(target)
    payload = waiting.get(timeout=10)
    assert (payload["path"], payload["size"]) == (str(target), 2)


def test_eager_mode_fires_at_once_for_an_existing_file(store_url: str, tmp_path: Path) -> None:
    app = make_app(store_url, task_always_eager=True)
    present = tmp_path / "present.txt"
    present.write_text("hello")

    @app.task(base=DeferrableTask, bind=True, shared=False, name="t.eager_file")
    def eager_file(self: DeferrableTask, event: Any = None) -> Any:
        if event is None:
            self.defer(trigger=FileTrigger(str(present)))
        return event.payload["size"]

    assert eager_file.delay().get() == 5

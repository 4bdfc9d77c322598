"""A deferral end to end on ``defer_database_url = "memory://"``, worker and triggerer in-process.

The in-memory store is for exactly this: a real worker (threads pool) and an embedded
triggerer sharing the process's one store per app, with no database at all.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

from celery_defer import DEFERRED, DeferrableTask
from celery_defer.store import DEFERRED as ROW_DEFERRED
from celery_defer.store import InMemoryStore, store_for
from celery_defer.triggers import TimeDeltaTrigger
from tests.support.inprocess import make_app, running

pytestmark = pytest.mark.timeout(60)


def test_a_task_defers_and_resumes_to_success_on_the_memory_store() -> None:
    app = make_app("memory://")

    @app.task(base=DeferrableTask, bind=True, shared=False, name="m.wait_then_add")
    def wait_then_add(self: DeferrableTask, x: int, y: int, event: Any = None) -> Any:
        if event is None:
            self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=0.5)), kwargs={"x": x, "y": y})
        return [x + y, self.request.id]

    store = store_for(app)
    assert isinstance(store, InMemoryStore)
    with running(app):
        result = wait_then_add.delay(1, 2)
        deadline = time.monotonic() + 10
        while result.state != DEFERRED:
            assert time.monotonic() < deadline, f"state stayed {result.state}"
            time.sleep(0.01)
        # The worker's deferral is in the store the embedded triggerer reads.
        info = store.get_deferral(result.id)
        assert info is not None and info.task_name == "m.wait_then_add"
        assert info.state in (ROW_DEFERRED, "firing", "resumed", "running")
        assert result.get(timeout=10) == [3, result.id]
    assert result.state == "SUCCESS"
    assert store.get_deferral(result.id) is None  # forgotten once the resumed run ended

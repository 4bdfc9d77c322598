"""TaskResultTrigger: the arguments and result backends it refuses.

The end-to-end cases (a parent waiting for a child) are in
tests/inprocess/triggers/test_task_result_trigger.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

from celery_defer import TriggerFailed
from celery_defer.exceptions import InvalidDeferral
from celery_defer.triggers import TaskResultTrigger
from celery_defer.triggers.result_backend import fetch_ready

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("task_id", "interval", "message"),
    [
        ("", 1.0, "needs a task id"),
        (None, 1.0, "needs a task id"),
        ("a", 0, "positive and finite"),
        ("a", -1, "positive and finite"),
        ("a", float("inf"), "positive and finite"),
        ("a", True, "number of seconds"),
        ("a", "1", "number of seconds"),
    ],
)
def test_bad_arguments_are_refused(task_id: Any, interval: Any, message: str) -> None:
    with pytest.raises(InvalidDeferral, match=message):
        TaskResultTrigger(task_id, poll_interval=interval)


@pytest.mark.parametrize("backend", ["rpc://", "disabled"])
def test_a_backend_other_processes_cannot_read_is_refused(backend: str) -> None:
    app = Celery("norpc", broker="memory://", set_as_current=False)
    if backend != "disabled":
        app.conf.result_backend = backend
    with pytest.raises(TriggerFailed, match="cannot read results from the"):
        fetch_ready(app, ["x"])

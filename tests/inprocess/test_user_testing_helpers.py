"""The pytest plugin as users use it: examples/test_user_example.py, and the session fixture.

Each runs in a pytest subprocess of its own, as in a user's project: the plugin is enabled
through ``pytest_plugins``, next to Celery's classic fixtures. Both run at once.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

SESSION_TESTS = """
from datetime import timedelta

import pytest
from celery import shared_task

from celery_defer import DeferrableTask
from celery_defer.testing import fast_forward, skip_time, wait_until_deferred
from celery_defer.triggers import TimeDeltaTrigger, clock

pytest_plugins = ("celery.contrib.pytest", "celery_defer.contrib.pytest")


@shared_task(base=DeferrableTask, bind=True, name="session.in_an_hour")
def in_an_hour(self, x, event=None):
    if event is None:
        self.defer(trigger=TimeDeltaTrigger(timedelta(hours=1)), kwargs={"x": x})
    return x + 1


@pytest.fixture(scope="session")
def celery_config():
    return {"broker_url": "memory://", "result_backend": "cache+memory://",
            "broker_transport_options": {"polling_interval": 0.01}}


def test_skip(celery_session_app, celery_session_worker, celery_defer_session_triggerer):
    with skip_time():
        assert in_an_hour.delay(1).get(timeout=10) == 2


def test_fast_forward(celery_session_app, celery_session_worker, celery_defer_session_triggerer):
    result = in_an_hour.delay(2)
    wait_until_deferred(result)
    fast_forward(celery_session_app, timedelta(hours=2))
    assert result.get(timeout=10) == 3


def test_the_clock_was_put_back_after_the_previous_test():
    assert clock.offset() == timedelta(0)
"""


def pytest_run(path: Path, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        # pytest-celery imports celery.contrib.pytest early: pytest then warns that it cannot
        # rewrite its asserts, which is harmless.
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "error",
            "-W",
            "ignore::pytest.PytestAssertRewriteWarning",
            str(path),
        ],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_user_example_and_the_session_fixture_pass(tmp_path: Path) -> None:
    session_tests = tmp_path / "test_session_fixture.py"
    session_tests.write_text(SESSION_TESTS)
    runs = {
        "example": pytest_run(EXAMPLES / "test_user_example.py", EXAMPLES.parent),
        "session": pytest_run(session_tests, tmp_path),
    }
    outputs = {name: run.communicate(timeout=110)[0] for name, run in runs.items()}
    for name, run in runs.items():
        assert run.returncode == 0, f"{name}:\n{outputs[name]}"
    assert "3 passed" in outputs["example"]
    assert "3 passed" in outputs["session"]

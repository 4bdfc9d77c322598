"""The ``celery triggerer`` and ``celery defer`` commands, run as a user runs them."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

APP_MODULE = """
from celery import Celery
import celery_defer

app = Celery("cliapp", broker="defer-filesystem://localhost//", backend="file://{data}/results")
app.conf.update(
    broker_transport_options={{"data_folder_in": "{data}/broker",
                               "data_folder_out": "{data}/broker",
                               "control_folder": "{data}/control"}},
    defer_database_url="sqlite:///{data}/store.sqlite3",
)
celery_defer.install(app)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for folder in ("broker", "control", "results"):
        (tmp_path / folder).mkdir()
    (tmp_path / "cliapp.py").write_text(APP_MODULE.format(data=tmp_path))
    return tmp_path


def celery(project: Path, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "cliapp", *argv],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_init_db_is_safe_to_run_twice(project: Path) -> None:
    for _ in range(2):
        done = celery(project, "defer", "init-db")
        assert done.returncode == 0, done.stderr
        assert "schema version 3 is ready" in done.stdout
    assert (project / "store.sqlite3").exists()


@pytest.mark.parametrize("capacity", ["0", "-3", "many"])
def test_a_bad_capacity_exits_non_zero_naming_it(project: Path, capacity: str) -> None:
    done = celery(project, "triggerer", "--capacity", capacity)
    assert done.returncode != 0
    assert "--capacity" in done.stderr


def test_the_triggerer_stops_cleanly_on_sigterm(project: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "cliapp", "triggerer", "--capacity", "5"],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        seen = ""
        while "running, capacity 5" not in seen:
            assert time.monotonic() < deadline, seen
            line = process.stdout.readline()
            assert line, f"the triggerer exited early:\n{seen}"
            seen += line
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, seen + out
    assert "stopped; handed back 0 triggers" in seen + out

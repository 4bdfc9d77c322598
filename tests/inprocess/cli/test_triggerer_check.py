"""``celery -A proj triggerer --check``: a liveness probe for systemd and Kubernetes (#15.2).

Real processes: the probe is a `celery` command, the triggerer it checks a `celery
triggerer` process, killed with SIGKILL to see the probe turn unhealthy.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.waiting import wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

APP_MODULE = """
from celery import Celery
import celery_defer

app = Celery("probeapp", broker="defer-filesystem://localhost//", backend="file://{data}/results")
app.conf.update(
    broker_transport_options={{"data_folder_in": "{data}/broker",
                               "data_folder_out": "{data}/broker",
                               "control_folder": "{data}/control"}},
    defer_database_url="sqlite:///{data}/store.sqlite3",
    defer_triggerer_heartbeat=0.5,
    defer_triggerer_health_timeout=2.0,
)
celery_defer.install(app)
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for folder in ("broker", "control", "results"):
        (tmp_path / folder).mkdir()
    (tmp_path / "probeapp.py").write_text(APP_MODULE.format(data=tmp_path))
    return tmp_path


def probe(project: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "probeapp", "triggerer", "--check", *options],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_probe_follows_a_real_triggerer_from_start_to_kill(project: Path) -> None:
    done = probe(project)
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"unhealthy: no triggerer of this app is registered on host {socket.gethostname()}"
    )
    triggerer = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "probeapp", "triggerer"],
        cwd=project,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:

        def healthy_probe() -> subprocess.CompletedProcess[str] | None:
            done = probe(project)
            return done if done.returncode == 0 else None

        healthy = wait_until(healthy_probe, timeout=60, what="the probe to see the triggerer")
        assert healthy is not None
        assert healthy.stdout.startswith("healthy: triggerer ")
        assert f"on {socket.gethostname()} heart-beat" in healthy.stdout
        assert probe(project, "--any-host").returncode == 0
    finally:
        os.killpg(triggerer.pid, signal.SIGKILL)  # no clean stop: its row stays behind
        triggerer.wait(10)
    time.sleep(2.5)  # past defer_triggerer_health_timeout
    done = probe(project)
    assert done.returncode == 1
    assert "unhealthy: triggerer " in done.stderr
    assert "(defer_triggerer_health_timeout 2s)" in done.stderr

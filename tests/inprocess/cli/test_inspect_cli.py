"""``celery defer list/show/cancel/stats``, run as a user runs them, on a store the test fills.

The store is filled through the store API (what a deferring worker and a claiming triggerer
write), so each command is checked against rows whose every field is known.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_defer import serialization
from celery_defer.store import NewDeferral, SqlStore

pytestmark = pytest.mark.timeout(60)

APP_MODULE = """
from celery import Celery
import celery_defer

app = Celery("inspectapp", broker="defer-filesystem://localhost//", backend="file://{data}/results")
app.conf.update(
    broker_transport_options={{"data_folder_in": "{data}/broker",
                               "data_folder_out": "{data}/broker",
                               "control_folder": "{data}/control"}},
    defer_database_url="sqlite:///{data}/store.sqlite3",
)
celery_defer.install(app)
"""

SECRET = "hunter2-do-not-print"
TIMER = "celery_defer.triggers.DateTimeTrigger"


def deferral(
    task_id: str,
    task_name: str,
    classpath: str = TIMER,
    **trigger_kwargs: Any,
) -> NewDeferral:
    return NewDeferral(
        task_id=task_id,
        task_name=task_name,
        method="finish",
        kwargs=serialization.dumps({"password": SECRET, "n": 1}),
        request=json.dumps({}),
        trigger_classpath=classpath,
        trigger_kwargs=serialization.dumps(trigger_kwargs),
        timeout_at=datetime.now(timezone.utc) + timedelta(hours=1),
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An app module and a store holding three deferrals, one owned by a live triggerer."""
    data = tmp_path_factory.mktemp("inspect")
    for folder in ("broker", "control", "results"):
        (data / folder).mkdir()
    (data / "inspectapp.py").write_text(APP_MODULE.format(data=data))
    store = SqlStore(f"sqlite:///{data}/store.sqlite3")
    moment = datetime(2030, 1, 1, tzinfo=timezone.utc)
    store.save_deferral(deferral("task-a", "proj.report", moment=moment))
    store.save_deferral(deferral("task-b", "proj.report", moment=moment))
    store.save_deferral(
        deferral("task-c", "proj.wait_file", "celery_defer.triggers.FileTrigger", path="/tmp/x")
    )
    store.register_triggerer("host-1:42:abcd", "host-1", 42, 10)
    store.claim_triggers("host-1:42:abcd", 2, 30.0)  # the two oldest: task-a and task-b
    store.close()
    return data


def celery(project: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "inspectapp", "defer", *argv],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )


def celery_json(project: Path, *argv: str) -> Any:
    done = celery(project, *argv, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_list_shows_every_deferral_oldest_first_without_kwargs(project: Path) -> None:
    rows = celery_json(project, "list")
    assert [r["task_id"] for r in rows] == ["task-a", "task-b", "task-c"]
    first = rows[0]
    assert first["task_name"] == "proj.report"
    assert first["state"] == "deferred"
    assert first["method"] == "finish"
    assert first["trigger"] == TIMER
    assert first["triggerer_id"] == "host-1:42:abcd"
    assert first["age_seconds"] >= 0
    assert rows[2]["triggerer_id"] is None  # not claimed: waiting for a triggerer
    assert "kwargs" not in first and "trigger_kwargs" not in first

    table = celery(project, "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == [
        "TASK",
        "ID",
        "TASK",
        "STATE",
        "GEN",
        "METHOD",
        "TRIGGER",
        "TRIGGER",
        "ID",
        "TRIGGERER",
        "AGE",
        "TIMEOUT",
        "IN",
    ]
    # Aligned: every row's STATE column starts where the header's does.
    column = lines[0].index("STATE")
    assert all(line[column:].startswith("deferred") for line in lines[1:4])
    assert SECRET not in table.stdout + json.dumps(rows)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["--task-name", "proj.wait_file"], ["task-c"]),
        (["--trigger", "FileTrig"], ["task-c"]),
        (["--trigger", "DateTime", "--limit", "1"], ["task-a"]),
        (["--state", "running"], []),
        (["--state", "deferred", "--task-name", "proj.report"], ["task-a", "task-b"]),
    ],
)
def test_list_filters(project: Path, filters: list[str], expected: list[str]) -> None:
    assert [r["task_id"] for r in celery_json(project, "list", *filters)] == expected


def test_show_prints_the_stored_values(project: Path) -> None:
    shown = celery_json(project, "show", "task-c")
    assert shown["task_id"] == "task-c"
    assert shown["trigger"] == "celery_defer.triggers.FileTrigger"
    assert serialization.decode(shown["kwargs"]) == {"password": SECRET, "n": 1}
    assert serialization.decode(shown["trigger_kwargs"]) == {"path": "/tmp/x"}
    assert shown["outcome"] is None

    text = celery(project, "show", "task-a")
    assert text.returncode == 0, text.stderr
    assert f"'password': '{SECRET}'" in text.stdout
    assert "datetime.datetime(2030, 1, 1, 0, 0, tzinfo=datetime.timezone.utc)" in text.stdout


@pytest.mark.parametrize("command", ["show", "cancel"])
def test_an_unknown_task_id_exits_non_zero_naming_it(project: Path, command: str) -> None:
    done = celery(project, command, "no-such-task")
    assert done.returncode != 0
    assert "no deferral for task no-such-task" in done.stderr


def test_stats(project: Path) -> None:
    stats = celery_json(project, "stats")
    [triggerer] = stats["triggerers"]
    assert triggerer["id"] == "host-1:42:abcd"
    assert (triggerer["host"], triggerer["pid"]) == ("host-1", 42)
    assert (triggerer["running"], triggerer["capacity"]) == (2, 10)
    assert 0 <= triggerer["heartbeat_age_seconds"] < 60
    assert triggerer["alive"] is True
    deferrals = stats["deferrals"]
    assert deferrals["by_state"] == {
        "deferred": 3,
        "firing": 0,
        "resumed": 0,
        "running": 0,
        "ended": 0,
    }
    assert deferrals["total"] == 3
    assert deferrals["oldest"]["task_id"] == "task-a"
    assert stats["triggers_waiting_for_a_triggerer"] == 1

    text = celery(project, "stats")
    assert text.returncode == 0, text.stderr
    assert "RUNNING / CAPACITY" in text.stdout
    assert "2 / 10" in text.stdout
    assert "oldest deferral: task task-a" in text.stdout


def test_cancel_revokes_the_task_and_drops_its_trigger(tmp_path: Path) -> None:
    for folder in ("broker", "control", "results"):
        (tmp_path / folder).mkdir()
    (tmp_path / "inspectapp.py").write_text(APP_MODULE.format(data=tmp_path))
    store = SqlStore(f"sqlite:///{tmp_path}/store.sqlite3")
    stored = store.save_deferral(deferral("task-x", "proj.report", moment=datetime(2030, 1, 1)))
    store.save_deferral(deferral("task-y", "proj.report", moment=datetime(2030, 1, 1)))

    done = celery_json(tmp_path, "cancel", "task-x")
    assert done["cancelled"] is True
    assert done["deleted_trigger_ids"] == [stored.trigger_id]
    assert "reconciliation" in done["note"]
    assert store.get_deferral("task-x") is None
    assert store.get_deferral("task-y") is not None
    backend = Celery(backend=f"file://{tmp_path}/results", set_as_current=False)
    assert backend.AsyncResult("task-x").state == "REVOKED"

    text = celery(tmp_path, "cancel", "task-y")
    assert text.returncode == 0, text.stderr
    assert "cancelled deferred task task-y" in text.stdout
    assert "stops it (cleanup() runs) at its next reconciliation" in text.stdout
    again = celery(tmp_path, "cancel", "task-y")
    assert again.returncode != 0 and "no deferral for task task-y" in again.stderr
    store.close()

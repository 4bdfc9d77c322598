"""``celery defer show`` and ``rotate-keys`` with values encrypted at rest, run as a user runs them.

The app module takes its keys from ``ENC_KEYS`` (a comma-separated string, one of the forms
``defer_encryption_keys`` accepts), so one project runs with the keys each case needs. The
store is filled through the store API with what a deferring worker writes: one deferral
sealed under key A, one written in clear before encryption was turned on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet

from celery_defer import serialization
from celery_defer.encryption import is_sealed, keyring_from_setting, unseal
from celery_defer.exceptions import EncryptionError
from celery_defer.store import NewDeferral, SqlStore
from celery_defer.store.sql.schema import deferrals, triggers

pytestmark = pytest.mark.timeout(120)

APP_MODULE = """
import os
from celery import Celery
import celery_defer

app = Celery("encapp", broker="defer-filesystem://localhost//", backend="file://{data}/results")
app.conf.update(
    broker_transport_options={{"data_folder_in": "{data}/broker",
                               "data_folder_out": "{data}/broker",
                               "control_folder": "{data}/control"}},
    defer_database_url="sqlite:///{data}/store.sqlite3",
    defer_encryption_keys=os.environ.get("ENC_KEYS") or None,
)
celery_defer.install(app)
"""

SECRET = "hunter2-sealed-password"
TOKEN = "api-token-of-the-trigger"
KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
KEY_C = Fernet.generate_key().decode()


def deferral(task_id: str, keys: list[str] | None) -> NewDeferral:
    keyring = keyring_from_setting(keys)

    def stored(value: Any) -> str:
        text = serialization.dumps(value)
        return text if keyring is None else keyring.seal(text)

    return NewDeferral(
        task_id=task_id,
        task_name="proj.report",
        method="finish",
        kwargs=stored({"password": SECRET, "n": 1}),
        request=json.dumps({}),
        trigger_classpath="celery_defer.triggers.DateTimeTrigger",
        trigger_kwargs=stored({"moment": datetime(2030, 1, 1, tzinfo=timezone.utc), "t": TOKEN}),
        timeout_at=datetime.now(timezone.utc) + timedelta(hours=1),
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for folder in ("broker", "control", "results"):
        (tmp_path / folder).mkdir()
    (tmp_path / "encapp.py").write_text(APP_MODULE.format(data=tmp_path))
    store = SqlStore(f"sqlite:///{tmp_path}/store.sqlite3")
    store.save_deferral(deferral("task-sealed", [KEY_A]))
    store.save_deferral(deferral("task-clear", None))
    store.close()
    return tmp_path


def celery(project: Path, keys: str | None, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if name != "ENC_KEYS"}
    if keys is not None:
        env["ENC_KEYS"] = keys
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "encapp", "defer", *argv],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def stored_values(project: Path) -> dict[str, str]:
    """kwargs and trigger kwargs of each deferral, read straight from the tables."""
    engine = sa.create_engine(f"sqlite:///{project}/store.sqlite3")
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(deferrals.c.task_id, deferrals.c.kwargs, triggers.c.kwargs).join(
                    triggers, deferrals.c.trigger_id == triggers.c.id
                )
            ).all()
    finally:
        engine.dispose()
    values = {}
    for task_id, kwargs, trigger_kwargs in rows:
        values[f"{task_id}:kwargs"] = kwargs
        values[f"{task_id}:trigger"] = trigger_kwargs
    return values


@pytest.mark.parametrize("keys", [KEY_A, None], ids=["with-the-key", "without-keys"])
def test_show_never_prints_a_sealed_value(project: Path, keys: str | None) -> None:
    text = celery(project, keys, "show", "task-sealed")
    assert text.returncode == 0, text.stderr
    assert SECRET not in text.stdout and TOKEN not in text.stdout
    lines = dict(line.split(None, 1) for line in text.stdout.splitlines() if line[:1] != " ")
    assert lines["kwargs"].strip() == "<encrypted>"
    assert "trigger kwargs  <encrypted>" in text.stdout

    shown = celery(project, keys, "show", "task-sealed", "--json")
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["kwargs"] == "<encrypted>"
    assert document["trigger_kwargs"] == "<encrypted>"
    assert SECRET not in shown.stdout and TOKEN not in shown.stdout


def test_show_prints_a_value_stored_in_clear_as_before(project: Path) -> None:
    shown = celery(project, KEY_A, "show", "task-clear", "--json")
    assert shown.returncode == 0, shown.stderr
    assert serialization.decode(json.loads(shown.stdout)["kwargs"]) == {"password": SECRET, "n": 1}


def test_rotate_keys_moves_sealed_values_to_the_first_key(project: Path) -> None:
    before = stored_values(project)
    done = celery(project, f"{KEY_B},{KEY_A}", "rotate-keys")
    assert done.returncode == 0, done.stderr
    assert "rewrote 1 deferral kwargs and 1 trigger kwargs" in done.stdout
    assert SECRET not in done.stdout + done.stderr
    after = stored_values(project)
    only_b, only_a = keyring_from_setting([KEY_B]), keyring_from_setting([KEY_A])
    for name in ("task-sealed:kwargs", "task-sealed:trigger"):
        assert after[name] != before[name]
        assert unseal(only_b, after[name]) == unseal(only_a, before[name])
        with pytest.raises(EncryptionError):
            unseal(only_a, after[name])
    assert after["task-clear:kwargs"] == before["task-clear:kwargs"]  # clear stays clear

    again = celery(project, f"{KEY_B},{KEY_A}", "rotate-keys")
    assert "rewrote 0 deferral kwargs and 0 trigger kwargs" in again.stdout

    sealing = celery(project, KEY_B, "rotate-keys", "--seal-clear", "--batch-size", "1")
    assert sealing.returncode == 0, sealing.stderr
    assert "rewrote 1 deferral kwargs and 1 trigger kwargs" in sealing.stdout
    assert all(is_sealed(text) for text in stored_values(project).values())
    assert SECRET not in celery(project, KEY_B, "show", "task-clear").stdout


def test_rotate_keys_reports_values_no_key_opens(project: Path) -> None:
    done = celery(project, KEY_C, "rotate-keys")
    assert done.returncode != 0
    assert "rewrote 0 deferral kwargs" in done.stdout
    assert "2 stored values are encrypted with a key not in defer_encryption_keys" in done.stderr


def test_rotate_keys_without_keys_exits_non_zero(project: Path) -> None:
    done = celery(project, None, "rotate-keys")
    assert done.returncode != 0
    assert "defer_encryption_keys is not set" in done.stderr


def test_a_bad_key_exits_non_zero_naming_the_entry_not_the_key(project: Path) -> None:
    for command in (["rotate-keys"], ["show", "task-clear"]):
        done = celery(project, f"{KEY_A},not-a-real-key", *command)
        assert done.returncode != 0
        assert "defer_encryption_keys: entry 2 of 2 is not a valid Fernet key" in done.stderr
        assert "not-a-real-key" not in done.stderr + done.stdout

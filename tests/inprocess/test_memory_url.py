"""``defer_database_url``: other URLs still give a SQL store, and ``celery defer init-db`` on
``memory://`` (a real ``celery`` process) creates nothing. The memory store itself:
tests/unit/test_memory_store.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from celery import Celery

from celery_defer.store import (
    SqlStore,
    store_for,
)

pytestmark = pytest.mark.timeout(60)

HEALTH = 60.0


def test_other_urls_still_give_a_sql_store(tmp_path: Path) -> None:
    app = Celery(set_as_current=False)
    app.conf.defer_database_url = f"sqlite:///{tmp_path / 'memory.db'}"
    store = store_for(app)
    try:
        assert isinstance(store, SqlStore)
    finally:
        store.close()


APP_MODULE = """
from celery import Celery
import celery_defer

app = Celery("memapp", broker="memory://")
app.conf.defer_database_url = "memory://"
celery_defer.install(app)
"""


def test_init_db_on_memory_says_there_is_nothing_to_create(tmp_path: Path) -> None:
    (tmp_path / "memapp.py").write_text(APP_MODULE)
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "memapp", "defer", "init-db"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "memory://" in done.stdout and "needs no schema" in done.stdout
    # Not the default SQLite file: the command used the memory store.
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".sqlite3", ".db")]

"""pytest fixtures for testing your deferrable tasks end to end, in one process.

Enable them next to Celery's classic fixtures, in your ``conftest.py``::

    pytest_plugins = ("celery.contrib.pytest", "celery_defer.contrib.pytest")

``celery_defer_triggerer`` runs a real :class:`~celery_defer.Triggerer` in the
test's process for ``celery_app``, next to ``celery_worker``; with
``celery_session_app``/``celery_session_worker``, use
``celery_defer_session_triggerer``. Both use a SQLite store in a temporary
directory unless the app's configuration names one (``defer_database_url``). Their
triggerer goes by the process's default clock, the one
:func:`~celery_defer.testing.fast_forward` and ``skip_time`` move; after every test
that clock is put back on the wall clock, so a test's ``fast_forward`` never leaks
into the next one.
Together with :func:`~celery_defer.testing.skip_time`, a task that waits a
day is tested in milliseconds::

    def test_reminder(celery_app, celery_worker, celery_defer_triggerer):
        with skip_time():
            assert remind_tomorrow.delay("Ada").get(timeout=10) == "good morning, Ada"
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from celery_defer.store import store_for
from celery_defer.testing import reset_clock
from celery_defer.triggerer import Triggerer

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["celery_defer_session_triggerer", "celery_defer_triggerer", "celery_defer_wall_clock"]


def _run_triggerer(app: Celery, directory: Path) -> Iterator[Triggerer]:
    conf = app.conf
    if not (conf.get("defer_database_url") or conf.get("CELERY_DEFER_DATABASE_URL")):
        conf.defer_database_url = f"sqlite:///{directory / 'celery-defer.sqlite3'}"
    try:
        with Triggerer(app) as triggerer:
            yield triggerer
    finally:
        reset_clock()
        # Left to the garbage collector, the store's pooled connections warn (sqlite3 on
        # Python 3.13+), which fails a suite that turns warnings into errors.
        store_for(app).close()


@pytest.fixture(autouse=True)
def celery_defer_wall_clock() -> Iterator[None]:
    """After each test, undo its fast_forward() calls (cheap: nothing to undo mostly)."""
    yield
    reset_clock()


@pytest.fixture
def celery_defer_triggerer(celery_app: Celery, tmp_path: Path) -> Iterator[Triggerer]:
    """A triggerer running in this process for ``celery_app`` during one test."""
    yield from _run_triggerer(celery_app, tmp_path)


@pytest.fixture(scope="session")
def celery_defer_session_triggerer(
    celery_session_app: Celery, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Triggerer]:
    """A triggerer running in this process for ``celery_session_app``, for the session."""
    yield from _run_triggerer(celery_session_app, tmp_path_factory.mktemp("celery-defer"))

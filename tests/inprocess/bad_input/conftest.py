"""The bad-input matrix shares one app and one real worker (threads pool) across its modules;
triggerers are started by the tests, since some cases damage rows before any triggerer runs.

Package-scoped, so the worker stops before other test modules start theirs: Celery's
in-process test workers share global state (``celery.worker.state.should_terminate``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery.contrib.testing.worker import start_worker

from tests.inprocess.bad_input.kit import Live
from tests.support.inprocess import make_app


@pytest.fixture(scope="package")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    app = make_app(f"sqlite:///{tmp_path_factory.mktemp('store') / 'store.sqlite3'}")
    kit = Live(app)
    kit.store.create_schema()
    with start_worker(app, pool="threads", concurrency=2, perform_ping_check=False):
        yield kit

"""Shared pytest configuration for the celery-defer test suite.

The classic Celery fixtures (``celery_app``, ``celery_worker``, ``celery_config`` ...) come
from ``celery.contrib.pytest``. pytest-celery 1.x, which is installed for its helpers,
replaces them with Docker-based fixtures; naming the Celery plugin here makes the classic ones
take precedence, and our machines run no Docker engine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NoReturn

import pytest

pytest_plugins = ("celery.contrib.pytest",)


# ---------------------------------------------------------------------------------------------
# Real-service fixtures (PostgreSQL, Redis, RabbitMQ)
#
# Each fixture reads the URL of a running server from an environment variable and checks it
# with a real connection, once per session. When the variable is unset or the server does not
# answer, the tests that need it are skipped: a laptop without the services still runs the rest
# of the suite. CI sets CELERY_DEFER_REQUIRE_SERVICES=1, which turns every such skip into a
# failure, so a missing service can never make a CI run green by skipping tests. Tests marked
# `integration` get that guarantee by requesting these fixtures.
# ---------------------------------------------------------------------------------------------

REQUIRE_SERVICES_ENV = "CELERY_DEFER_REQUIRE_SERVICES"
POSTGRES_URL_ENV = "CELERY_DEFER_TEST_POSTGRES_URL"
REDIS_URL_ENV = "CELERY_DEFER_TEST_REDIS_URL"
AMQP_URL_ENV = "CELERY_DEFER_TEST_AMQP_URL"

# Short enough that a dead service costs seconds, not minutes, per session.
_CONNECT_TIMEOUT = 3


def _services_required() -> bool:
    return os.environ.get(REQUIRE_SERVICES_ENV, "").strip().lower() in {"1", "true", "yes"}


def _unavailable(reason: str) -> NoReturn:
    """Skip the requesting test, or fail it when CI requires the services."""
    if _services_required():
        pytest.fail(f"{reason} ({REQUIRE_SERVICES_ENV} is set)", pytrace=False)
    pytest.skip(reason)


def _service_url(env_var: str, example: str, check: Callable[[str], None]) -> str:
    """Return the URL in ``env_var`` once ``check`` has connected to it."""
    url = os.environ.get(env_var, "").strip()
    if not url:
        _unavailable(f"{env_var} is not set (e.g. {example})")
    try:
        check(url)
    except Exception as exc:  # any driver/network error means "not reachable"
        first_line = (str(exc).strip().splitlines() or [""])[0]
        error = f"{type(exc).__name__}: {first_line}"
    else:
        return url
    # Outside the `except` block so a failure does not print a chained driver traceback.
    _unavailable(f"{env_var}={url} is not reachable: {error}")


def _check_postgres(url: str) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(url, connect_args={"connect_timeout": _CONNECT_TIMEOUT})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1")).scalar_one()
    finally:
        engine.dispose()


def _check_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=_CONNECT_TIMEOUT)
    try:
        client.ping()
    finally:
        client.close()


def _check_amqp(url: str) -> None:
    from kombu import Connection

    with Connection(url, connect_timeout=_CONNECT_TIMEOUT) as conn:
        conn.ensure_connection(max_retries=1)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """SQLAlchemy URL of a reachable PostgreSQL database (``CELERY_DEFER_TEST_POSTGRES_URL``)."""
    return _service_url(
        POSTGRES_URL_ENV, "postgresql+psycopg://postgres@127.0.0.1:5432/test", _check_postgres
    )


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of a reachable Redis server (``CELERY_DEFER_TEST_REDIS_URL``)."""
    return _service_url(REDIS_URL_ENV, "redis://127.0.0.1:6379", _check_redis)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """URL of a reachable RabbitMQ broker (``CELERY_DEFER_TEST_AMQP_URL``)."""
    return _service_url(AMQP_URL_ENV, "amqp://guest:guest@127.0.0.1:5672//", _check_amqp)


# ---------------------------------------------------------------------------------------------
# End of real-service fixtures.
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# In-process apps (see tests/inprocess.py)
# ---------------------------------------------------------------------------------------------

from pathlib import Path  # noqa: E402

from celery import Celery  # noqa: E402
from inprocess import make_app  # noqa: E402


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """A SQLite store in the test's own directory."""
    return f"sqlite:///{tmp_path / 'store.sqlite3'}"


@pytest.fixture
def app(store_url: str) -> Celery:
    """A fresh app on the memory transport and a SQLite store (tasks are added by the test)."""
    return make_app(store_url)

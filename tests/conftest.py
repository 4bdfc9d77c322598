"""Shared pytest configuration for the celery-defer test suite.

The classic Celery fixtures (``celery_app``, ``celery_worker``, ``celery_config`` ...) come
from ``celery.contrib.pytest``. pytest-celery 1.x, which is installed for its helpers,
replaces them with Docker-based fixtures; naming the Celery plugin here makes the classic ones
take precedence, and our machines run no Docker engine.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from celery import Celery

from tests.support import inprocess
from tests.support.inprocess import fresh_store_url, make_app

# tests.support.blocking: the watchdog tests' `records` fixture (unit and in-process).
pytest_plugins = ("celery.contrib.pytest", "tests.support.blocking")


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
POSTGRES_RESTART_ENV = "CELERY_DEFER_TEST_POSTGRES_RESTART"

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
# In-process apps (see tests/support/inprocess.py)
#
# CELERY_DEFER_TEST_STORE (sqlite | postgres) and CELERY_DEFER_TEST_BROKER (memory | redis |
# amqp) move every in-process app to a real store and broker. A service chosen that way is
# required: when it does not answer, the session stops at once with an error (a skip would let
# the run pass on the defaults it was meant to replace).
# ---------------------------------------------------------------------------------------------


_CHECKS: dict[str, Callable[[str], None]] = {
    "postgres": _check_postgres,
    "redis": _check_redis,
    "amqp": _check_amqp,
}


def pytest_configure(config: pytest.Config) -> None:
    """Validate the in-process store and broker choice and reach its services, once."""
    store, broker = inprocess.selected_store(), inprocess.selected_broker()
    if store not in inprocess.STORES:
        raise pytest.UsageError(f"{inprocess.STORE_ENV}={store!r}: use one of {inprocess.STORES}")
    if broker not in inprocess.BROKERS:
        raise pytest.UsageError(
            f"{inprocess.BROKER_ENV}={broker!r}: use one of {inprocess.BROKERS}"
        )
    if broker != "memory":
        # Celery does not close a dropped app's broker connections; each socket the garbage
        # collector finds open warns, which fails whichever test it lands in.
        config.addinivalue_line("filterwarnings", "ignore:unclosed <socket:ResourceWarning")
    needed = {store, broker} - {"sqlite", "memory"}
    for service in sorted(needed):
        env_var = inprocess.SERVICE_ENV[service]
        url = os.environ.get(env_var, "").strip()
        if not url:
            raise pytest.UsageError(
                f"{inprocess.STORE_ENV}={store} {inprocess.BROKER_ENV}={broker} need {env_var}"
            )
        try:
            _CHECKS[service](url)
        except Exception as exc:
            raise pytest.UsageError(f"{env_var}={url} is not reachable: {exc}") from None


def pytest_report_header() -> str:
    store, broker = inprocess.selected_store(), inprocess.selected_broker()
    return f"in-process apps: store {store}, broker {broker}"


@pytest.fixture(scope="session", autouse=True)
def _inprocess_cleanup() -> Iterator[None]:
    """Drop the schemas and queues the in-process apps made on shared servers."""
    yield
    inprocess.cleanup()


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    """An empty store of the selected kind: by default a SQLite file in the test's directory."""
    return fresh_store_url(tmp_path)


@pytest.fixture
def app(store_url: str) -> Celery:
    """A fresh app on the selected store and broker (tasks are added by the test)."""
    return make_app(store_url)


@pytest.fixture(scope="session")
def postgres_restart(postgres_url: str) -> Callable[[], None]:
    """Restart the PostgreSQL server of ``CELERY_DEFER_TEST_POSTGRES_URL`` (fault tests).

    ``CELERY_DEFER_TEST_POSTGRES_RESTART`` holds the shell command that does it (CI sets it
    to ``pg_ctlcluster ... restart``); unset, the tests that need it are skipped, so no test
    run restarts a developer's database unasked.
    """
    import subprocess

    command = os.environ.get(POSTGRES_RESTART_ENV, "").strip()
    if not command:
        _unavailable(f"{POSTGRES_RESTART_ENV} is not set (a shell command restarting PostgreSQL)")

    def restart() -> None:
        subprocess.run(command, shell=True, check=True, timeout=120, capture_output=True)
        _check_postgres(postgres_url)

    return restart

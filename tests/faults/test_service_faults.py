"""Fault tests: PostgreSQL, a Redis broker and a RabbitMQ broker restarted mid-run, and a
worker killed while it runs resumed methods; 1,000 tasks each, every one must resume
exactly once.

The brokers that restart are servers of the test's own (tests/faults/servers.py): the
redis-server keeps nothing on disk, so its restart loses every queued message; the
RabbitMQ node keeps durable queues and persistent messages. PostgreSQL is the machine's,
restarted by the command in ``CELERY_DEFER_TEST_POSTGRES_RESTART`` (CI sets it; unset,
that test skips).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest

from tests.faults.faultkit import FaultRun, fault_run
from tests.faults.servers import PrivateRabbitMQ, PrivateRedis
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

TASKS = 1000


def assert_exactly_once(run: FaultRun, note: str = "") -> int:
    tally = run.tally(note=note)
    assert (tally.lost, tally.duplicated) == (0, 0), f"{tally.summary()}\n{run.tails()}"
    return tally.restarted


def done_count(run: FaultRun) -> int:
    return len(run.runs())


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not on PATH")
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_rabbitmq(tmp_path: Path) -> Iterator[PrivateRabbitMQ]:
    if not PrivateRabbitMQ.available():
        pytest.skip("RabbitMQ's node script is not in /usr/lib/rabbitmq/bin (Debian's package)")
    server = PrivateRabbitMQ(tmp_path / "rabbitmq")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.timeout(300)
def test_postgres_restarted_mid_run(
    postgres_url: str, redis_url: str, postgres_restart: Callable[[], None], tmp_path: Path
) -> None:
    with fault_run(
        "postgres_restarted_mid_run",
        postgres_url=postgres_url,
        redis_url=redis_url,
        broker_url=None,
        logdir=tmp_path,
    ) as run:
        run.start_worker()
        run.start_beat()
        run.start_triggerer()
        run.send(TASKS, after=15, spread=10)
        run.wait_deferred()
        wait_until(lambda: done_count(run) >= 100, 60, "the first resumes")
        postgres_restart()  # while triggers fire and methods resume
        assert done_count(run) < TASKS, "the restart came too late to test anything"
        run.wait_all_done(timeout=150)
        assert_exactly_once(run)


class RestartableBroker(Protocol):
    url: str

    def restart(self, down_for: float = 2.0) -> None: ...


def restart_broker_mid_run(
    scenario: str,
    broker: RestartableBroker,
    worker_options: tuple[str, ...],
    *,
    postgres_url: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """Restart ``broker`` while triggers fire and methods resume; all must resume once."""
    with fault_run(
        scenario,
        postgres_url=postgres_url,
        redis_url=redis_url,
        broker_url=broker.url,
        logdir=tmp_path,
        # A resume whose message the restart lost is sent again by the sweep after 5 s.
        FAULT_REPUBLISH_AFTER="5",
    ) as run:
        run.start_worker("worker", *worker_options)
        worker_restarts = run.supervise_worker("worker", *worker_options)
        run.start_beat()
        run.start_triggerer()
        run.send(TASKS, after=15, spread=10)
        run.wait_deferred()
        wait_until(lambda: done_count(run) >= 100, 60, "the first resumes")
        broker.restart(down_for=2.0)
        assert done_count(run) < TASKS, "the restart came too late to test anything"
        run.wait_all_done(timeout=150)
        assert "triggerer" in run.processes and run.processes["triggerer"].poll() is None
        assert_exactly_once(run, note=f"worker restarted by its supervisor {worker_restarts()}x")


@pytest.mark.timeout(300)
def test_redis_broker_restarted_mid_run(
    postgres_url: str, redis_url: str, private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """The restart loses every queued message (no persistence)."""
    restart_broker_mid_run(
        "redis_broker_restarted_mid_run",
        private_redis,
        ("--pool", "threads", "--concurrency", "8"),
        postgres_url=postgres_url,
        redis_url=redis_url,
        tmp_path=tmp_path,
    )


@pytest.mark.timeout(300)
def test_rabbitmq_broker_restarted_mid_run(
    postgres_url: str, redis_url: str, private_rabbitmq: PrivateRabbitMQ, tmp_path: Path
) -> None:
    """Durable queues and persistent messages outlive the restart.

    Prefork, Celery's default pool: with the threads pool, py-amqp's connection can lose
    frame sync on a reconnect and the worker stops consuming (celery #1779).
    """
    restart_broker_mid_run(
        "rabbitmq_broker_restarted_mid_run",
        private_rabbitmq,
        ("--pool", "prefork", "--concurrency", "4"),
        postgres_url=postgres_url,
        redis_url=redis_url,
        tmp_path=tmp_path,
    )


@pytest.mark.timeout(300)
def test_worker_killed_during_resumed_methods_with_acks_late(
    postgres_url: str, redis_url: str, amqp_url: str, tmp_path: Path
) -> None:
    """``acks_late``: RabbitMQ redelivers what the dead worker ran; each method runs again."""
    with fault_run(
        "worker_killed_during_resumed_methods_acks_late",
        postgres_url=postgres_url,
        redis_url=redis_url,
        broker_url=amqp_url,
        logdir=tmp_path,
        FAULT_ACKS_LATE="1",
    ) as run:
        prefork = ("--pool", "prefork", "--concurrency", "4")
        run.start_worker("worker-1", *prefork)
        run.start_beat()
        run.start_triggerer()
        run.send(TASKS, after=8)
        run.wait_deferred()
        wait_until(lambda: done_count(run) >= 300, 90, "300 completed resumes")
        hold = f"{run.prefix}:hold"
        run.markers.set(hold, "1")  # methods now stop midway, as a slow method would
        held = f"{run.prefix}:held"
        wait_until(lambda: run.markers.scard(held) >= 4, 30, "4 methods held mid-run")
        time.sleep(0.5)
        cut_off = run.markers.scard(held)
        run.kill("worker-1")
        run.markers.delete(hold)
        run.start_worker("worker-2", *prefork)
        run.wait_all_done(timeout=150)
        restarted = assert_exactly_once(run)
        assert restarted >= cut_off, (restarted, cut_off)

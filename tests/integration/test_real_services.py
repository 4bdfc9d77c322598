"""celery-defer against real services, with real processes.

A class-scoped fixture starts ``celery -A proj worker`` (threads pool,
concurrency 1), ``celery -A proj triggerer`` and ``celery -A proj beat`` as
subprocesses (app: ``tests/integration/proj.py``) in two configurations:

* ``redis``: broker Redis, result backend Redis, store PostgreSQL;
* ``amqp``: broker RabbitMQ, result backend PostgreSQL (``db+postgresql``), store PostgreSQL.

Each run gets its own PostgreSQL schema, its own queue names and a random
Redis database number, so leftovers of earlier (or concurrent) runs cannot
interfere. When a test fails, the tail of every process log is printed.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from sqlalchemy.engine import make_url

from celery_defer import DEFERRED, InvalidDeferral, TriggerFailed, TriggerTimeout

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import proj  # noqa: E402 - the app module the subprocesses run, found next to this file

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T = TypeVar("T")

# How long a process may take to start, and to stop after SIGTERM.
START_TIMEOUT = 40.0
STOP_TIMEOUT = 15.0


def wait_until(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def redis_db_url(base: str, db: int) -> str:
    """redis://[user:pass@]host:port[/db][?query] -> the same server, database ``db``."""
    scheme, rest = base.split("://", 1)
    hostpart = rest.split("?", 1)[0].split("/", 1)[0]
    return f"{scheme}://{hostpart}/{db}"


@dataclass
class Cluster:
    """The processes of one configuration, and a client app to talk to them."""

    name: str
    env: dict[str, str]
    logdir: Path
    app: Celery
    store_engine: sa.Engine
    marker_redis: Any
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: list[Path] = field(default_factory=list)
    _starts: int = 0

    # -- processes ---------------------------------------------------------

    def start(self, role: str, *argv: str) -> subprocess.Popen[bytes]:
        self._starts += 1
        log_path = self.logdir / f"{self._starts:02d}-{role}.log"
        self.logs.append(log_path)
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "proj", *argv],
                cwd=HERE,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes[role] = process
        return process

    def start_triggerer(self) -> subprocess.Popen[bytes]:
        process = self.start("triggerer", "triggerer", "-l", "INFO")
        log = self.logs[-1]
        self.wait_for_log(log, "running, capacity", START_TIMEOUT, process)
        return process

    def wait_for_log(
        self, log: Path, text: str, timeout: float, process: subprocess.Popen[bytes]
    ) -> None:
        def seen() -> bool:
            if process.poll() is not None:
                raise AssertionError(
                    f"{log.name} exited with {process.returncode}\n{self.log_tails()}"
                )
            return text in log.read_text(errors="replace")

        try:
            wait_until(seen, timeout, f"{text!r} in {log.name}", interval=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tails()}") from None

    def stop(self, role: str, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        process = self.processes.pop(role, None)
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        return process.returncode

    def stop_all(self) -> dict[str, int | None]:
        # Producers first, so nothing is sent to a worker that is gone.
        order = sorted(self.processes, key=("beat", "triggerer", "worker").index)
        return {role: self.stop(role) for role in order}

    def log_tails(self, lines: int = 40) -> str:
        parts = []
        for log in self.logs:
            text = log.read_text(errors="replace") if log.exists() else ""
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(f"----- {self.name}: {log.name} (last {lines} lines) -----\n{tail}")
        return "\n".join(parts)

    # -- helpers for tests ---------------------------------------------------

    def send(self, name: str, *args: Any, **options: Any) -> AsyncResult:
        kwargs = options.pop("kwargs", None)
        return self.app.send_task(name, args=args, kwargs=kwargs, **options)

    def get(self, result: AsyncResult, timeout: float = 20.0) -> Any:
        try:
            return result.get(timeout=timeout, interval=0.05)
        except (TimeoutError, CeleryTimeoutError) as exc:
            raise AssertionError(
                f"task {result.id} still {result.state} after {timeout}s: {exc}\n{self.log_tails()}"
            ) from None

    def wait_failed(self, result: AsyncResult, timeout: float = 20.0) -> BaseException:
        try:
            value = result.get(timeout=timeout, interval=0.05, propagate=False)
        except (TimeoutError, CeleryTimeoutError):
            raise AssertionError(
                f"task {result.id} still {result.state} after {timeout}s\n{self.log_tails()}"
            ) from None
        assert result.state == "FAILURE", f"expected FAILURE, got {result.state}: {value!r}"
        assert isinstance(value, BaseException), repr(value)
        return value

    def wait_state(self, result: AsyncResult, state: str, timeout: float = 10.0) -> None:
        seen: list[str] = []

        def reached() -> bool:
            current = result.state
            if not seen or seen[-1] != current:
                seen.append(current)
            return current == state

        try:
            wait_until(reached, timeout, f"{result.id} to be {state}", interval=0.02)
        except AssertionError:
            raise AssertionError(
                f"task {result.id} went through {seen}, never {state}\n{self.log_tails()}"
            ) from None

    def trigger_owner(self, task_id: str) -> tuple[bool, str | None]:
        """(deferral has a trigger row, id of the triggerer holding it) from the store."""
        with self.store_engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "select t.triggerer_id from defer_deferrals d "
                    "join defer_triggers t on t.id = d.trigger_id where d.task_id = :id"
                ),
                {"id": task_id},
            ).first()
        return (row is not None, row[0] if row is not None else None)


# -- the fixture ---------------------------------------------------------------

CONFIGS = {
    "redis": "broker Redis, results Redis, store PostgreSQL",
    "amqp": "broker RabbitMQ, results PostgreSQL, store PostgreSQL",
}


@pytest.fixture(scope="class", params=list(CONFIGS), ids=list(CONFIGS))
def cluster(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
    redis_url: str,
) -> Iterator[Cluster]:
    config = request.param
    # Check (or skip for) every service before creating anything.
    amqp_url = request.getfixturevalue("amqp_url") if config == "amqp" else None
    suffix = uuid.uuid4().hex[:10]
    schema = f"cdit_{suffix}"
    logdir = tmp_path_factory.mktemp(f"celery-{config}")

    # A fresh schema in the given database: no rows of an earlier run can exist.
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    store_url = (
        make_url(postgres_url)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )

    redis_url_db = redis_db_url(redis_url, random.randrange(1, 16))
    if config == "redis":
        broker, backend = redis_url_db, redis_url_db
    else:
        assert amqp_url is not None
        broker, backend = amqp_url, f"db+{store_url}"

    env = dict(os.environ)
    env.update(
        {
            proj.BROKER_URL: broker,
            proj.RESULT_BACKEND: backend,
            proj.DATABASE_URL: store_url,
            proj.QUEUE: f"cdit.tasks.{suffix}",
            proj.TRIGGER_QUEUE: f"cdit.triggers.{suffix}",
            proj.MARKER_REDIS_URL: redis_url_db,
            "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p),
            "PYTHONUNBUFFERED": "1",
        }
    )
    app = proj.create_app(env)
    import redis

    cluster = Cluster(
        name=config,
        env=env,
        logdir=logdir,
        app=app,
        store_engine=sa.create_engine(store_url),
        marker_redis=redis.Redis.from_url(redis_url_db),
    )
    try:
        subprocess.run(
            [sys.executable, "-m", "celery", "-A", "proj", "defer", "init-db"],
            cwd=HERE,
            env=env,
            check=True,
            timeout=60,
            capture_output=True,
        )
        if backend.startswith("db+"):
            # Let the client create celery's result tables before the worker
            # races it to do the same.
            app.AsyncResult("warm-up").state  # noqa: B018
        worker = cluster.start(
            "worker",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            "1",
            "-l",
            "INFO",
            "-n",
            f"cdit-{suffix}@%h",
            "--without-mingle",
            "--without-gossip",
        )
        cluster.start_triggerer()
        beat = cluster.start(
            "beat", "beat", "-l", "INFO", "--schedule", str(logdir / "celerybeat-schedule")
        )
        try:
            assert cluster.send("proj.ping").get(timeout=START_TIMEOUT) == "pong"
        except Exception as exc:
            raise AssertionError(
                f"the worker did not answer ({exc!r}, worker exit code {worker.poll()})\n"
                f"{cluster.log_tails()}"
            ) from None
        cluster.wait_for_log(cluster.logs[-1], "beat: Starting", START_TIMEOUT, beat)
        yield cluster
    finally:
        codes = cluster.stop_all()
        print(f"[{config}] exit codes after SIGTERM: {codes}")
        _drop_queues(cluster)
        _close_backend(app)
        app.close()
        cluster.store_engine.dispose()
        cluster.marker_redis.close()
        with admin.connect() as conn:
            conn.execute(sa.text(f'drop schema if exists "{schema}" cascade'))
        admin.dispose()


def _close_backend(app: Celery) -> None:
    """Close the client's result-backend connections (a Redis pub/sub left by a timeout)."""
    backend = app.backend
    try:
        consumer = getattr(backend, "result_consumer", None)
        if consumer is not None:
            consumer.stop()
        client = getattr(backend, "client", None)
        if client is not None and hasattr(client, "connection_pool"):
            client.connection_pool.disconnect()
        session_manager = getattr(backend, "session_manager", None)
        if session_manager is not None:
            for engine in getattr(session_manager, "_engines", {}).values():
                engine.dispose()
    except Exception:
        pass


def _drop_queues(cluster: Cluster) -> None:
    """Do not leave this run's queues behind on a shared broker."""
    try:
        with cluster.app.connection_for_write() as conn:
            channel = conn.default_channel
            for queue in (cluster.env[proj.QUEUE], cluster.env[proj.TRIGGER_QUEUE]):
                with contextlib.suppress(Exception):
                    channel.queue_delete(queue)
    except Exception:
        pass


@pytest.fixture(autouse=True)
def _log_tails_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    if "cluster" not in request.fixturenames:
        yield
        return
    cluster = request.getfixturevalue("cluster")
    failed_before = request.session.testsfailed
    yield
    # The call phase's report is counted before teardown runs.
    if request.session.testsfailed > failed_before:
        print(cluster.log_tails(lines=60))


# -- the tests -----------------------------------------------------------------


@pytest.mark.timeout(150)
class TestRealServices:
    def test_deferred_tasks_free_the_single_worker_slot(self, cluster: Cluster) -> None:
        started = time.monotonic()
        first = cluster.send("proj.wait_then_add", 1, 2, 2.0)
        second = cluster.send("proj.wait_then_add", 10, 20, 2.0)
        assert cluster.get(first)["total"] == 3
        assert cluster.get(second)["total"] == 30
        elapsed = time.monotonic() - started
        # Holding the only slot, the second would finish after ~4 s.
        assert elapsed < 3.5, f"both took {elapsed:.2f}s: the worker slot was not freed"

    def test_deferred_state_then_result_under_the_original_id(self, cluster: Cluster) -> None:
        result = cluster.send("proj.wait_then_add", 2, 3, 2.0)
        cluster.wait_state(result, DEFERRED)
        info = AsyncResult(result.id, app=cluster.app).info
        assert isinstance(info, dict), repr(info)
        # TimeDeltaTrigger serializes as a DateTimeTrigger at its absolute moment.
        assert info["trigger"] == "celery_defer.triggers.DateTimeTrigger"
        assert info["method"] == "finish"
        value = cluster.get(result)
        assert value["total"] == 5
        assert value["task_id"] == result.id  # the resumed execution ran under the same id
        final = AsyncResult(result.id, app=cluster.app)
        assert final.state == "SUCCESS"
        assert final.result == value

    def test_three_successive_deferrals(self, cluster: Cluster) -> None:
        assert cluster.get(cluster.send("proj.count_deferrals", 3)) == 3

    def test_defer_from_a_nested_helper(self, cluster: Cluster) -> None:
        result = cluster.send("proj.nested_defer", "deep")
        assert cluster.get(result) == {"label": "deep", "task_id": result.id}

    def test_failing_trigger_fails_the_task(self, cluster: Cluster) -> None:
        exc = cluster.wait_failed(cluster.send("proj.fail_fast"))
        assert isinstance(exc, TriggerFailed), repr(exc)
        assert "FailureTrigger" in str(exc)

    def test_timeout_through_the_beat_sweep_runs_the_errback(self, cluster: Cluster) -> None:
        marker = f"cdit:{uuid.uuid4().hex}"
        started = time.monotonic()
        result = cluster.send(
            "proj.too_slow",
            link_error=cluster.app.signature("proj.record_errback", kwargs={"marker": marker}),
        )
        exc = cluster.wait_failed(result, timeout=15)
        elapsed = time.monotonic() - started
        assert isinstance(exc, TriggerTimeout), repr(exc)
        assert elapsed < 10, f"the sweep took {elapsed:.1f}s to time the task out"
        errback = wait_until(
            lambda: cluster.marker_redis.get(f"{marker}:errback"), 10, "the errback's marker"
        )
        assert errback.decode() == result.id

    def test_unserializable_kwargs_are_refused(self, cluster: Cluster) -> None:
        result = cluster.send("proj.bad_kwargs")
        exc = cluster.wait_failed(result)
        assert isinstance(exc, InvalidDeferral), repr(exc)  # SerializationError is one too
        assert "kwargs" in str(exc)
        assert cluster.trigger_owner(result.id) == (False, None)  # nothing was stored

    @pytest.mark.timeout(90)
    def test_sigterm_hands_triggers_back_and_runs_cleanup(self, cluster: Cluster) -> None:
        marker = f"cdit:{uuid.uuid4().hex}"
        waiting = cluster.send("proj.wait_then_add", 4, 5, 2.0)
        forever = cluster.send("proj.sleep_forever", marker)
        cluster.wait_state(waiting, DEFERRED)
        cluster.wait_state(forever, DEFERRED)
        wait_until(
            lambda: cluster.marker_redis.get(f"{marker}:started"),
            10,
            "the SleepForeverTrigger to start",
        )
        owner = wait_until(
            lambda: cluster.trigger_owner(waiting.id)[1],
            10,
            "the triggerer to claim the timer trigger",
        )

        stopping = time.monotonic()
        code = cluster.stop("triggerer", timeout=STOP_TIMEOUT)
        took = time.monotonic() - stopping
        assert code == 0, f"triggerer exited with {code}\n{cluster.log_tails()}"
        assert took < 5, f"the triggerer took {took:.1f}s to stop"
        assert cluster.marker_redis.get(f"{marker}:cleanup") == b"1", "cleanup() did not run"
        # Handed back: the trigger row is still there, owned by nobody.
        assert cluster.trigger_owner(waiting.id) == (True, None), owner
        assert cluster.trigger_owner(forever.id) == (True, None)
        time.sleep(2.5)  # the timer is due now: only a triggerer can fire it
        assert waiting.state == DEFERRED

        restarted = time.monotonic()
        cluster.start_triggerer()
        assert cluster.get(waiting)["total"] == 9
        took = time.monotonic() - restarted
        # A trigger that was not handed back would wait out defer_triggerer_health_timeout (10 s).
        assert took < 8, f"the new triggerer took {took:.1f}s to finish the handed-back task"
        wait_until(
            lambda: cluster.marker_redis.get(f"{marker}:started") == b"2",
            10,
            "the new triggerer to run the handed-back SleepForeverTrigger",
        )

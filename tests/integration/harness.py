"""Machinery shared by the real-process integration tests.

:func:`running_cluster` starts ``celery -A proj worker``, ``celery -A proj
triggerer`` and ``celery -A proj beat`` as subprocesses (app:
``tests/integration/proj.py``) against real services and yields a
:class:`Cluster`: the processes, their logs and a client app on the same
configuration.

Each run gets its own PostgreSQL schema, its own queue names and a random
Redis database number, so leftovers of earlier (or concurrent) runs cannot
interfere. Everything is torn down (processes stopped, queues deleted, schema
dropped) when the context exits.
"""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from celery import Celery
from celery.backends.database.models import ResultModelBase
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from sqlalchemy.engine import make_url

from tests.integration import proj
from tests.support.processes import STOP_TIMEOUT, Processes
from tests.support.waiting import wait_until

# The subprocesses run ``celery -A proj``: the app module next to this file, on their path.
HERE = Path(__file__).resolve().parent

#: How long a process may take to start.
START_TIMEOUT = 40.0

#: The worker options the first integration tests use: one thread, one slot.
THREADS_WORKER = ("--pool", "threads", "--concurrency", "1")


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
    processes: Processes
    #: Queue label -> this run's queue name ("default" is the app's default queue).
    queues: dict[str, str] = field(default_factory=dict)
    _stores: list[Any] = field(default_factory=list)

    # -- processes (tests/support/processes.py) ----------------------------------

    def start(self, role: str, *argv: str) -> subprocess.Popen[bytes]:
        return self.processes.start(role, *argv)

    def start_triggerer(self) -> subprocess.Popen[bytes]:
        process = self.start("triggerer", "triggerer", "-l", "INFO")
        self.wait_for_log("triggerer", "running, capacity")
        return process

    def wait_for_log(self, role: str, text: str, timeout: float = START_TIMEOUT) -> None:
        self.processes.wait_for_log(role, text, timeout, interval=0.1)

    def stop(self, role: str, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        return self.processes.stop(role, timeout)

    def stop_all(self) -> dict[str, int | None]:
        # Producers first, so nothing is sent to a worker that is gone.
        return self.processes.stop_all(first=("beat", "triggerer", "worker"))

    def log_tails(self, lines: int = 40) -> str:
        return self.processes.log_tails(lines)

    # -- client apps -----------------------------------------------------------

    @contextlib.contextmanager
    def client_app(self, **conf: Any) -> Iterator[Celery]:
        """Another client app on this run's configuration, with ``conf`` on top.

        Registering a class-based task binds its *class* to the app
        (``Task.bind`` is a classmethod), so the new app takes over the
        backend and the sending of ``proj``'s class-based tasks in this
        process; on exit they are bound back to :attr:`app`.
        """
        app = proj.create_app(self.env)
        app.conf.update(conf)
        try:
            yield app
        finally:
            for task in self.app.tasks.values():
                type(task).bind(self.app)
            self.app.set_current()
            _close_backend(app)
            app.close()

    def defer_store(self, app: Celery | None = None) -> Any:
        """``celery_defer.store.store_for(app)`` (closed with the cluster)."""
        from celery_defer.store import store_for

        store = store_for(app or self.app)
        if store not in self._stores:
            self._stores.append(store)
        return store

    # -- helpers for tests ---------------------------------------------------

    def send(self, name: str, *args: Any, **options: Any) -> AsyncResult:
        kwargs = options.pop("kwargs", None)
        return self.app.send_task(name, args=args, kwargs=kwargs, **options)

    def get(self, result: Any, timeout: float = 20.0) -> Any:
        """``result.get()`` (an AsyncResult or a GroupResult), with the logs on a timeout."""
        try:
            return result.get(timeout=timeout, interval=0.05)
        except (TimeoutError, CeleryTimeoutError) as exc:
            state = getattr(result, "state", None)
            if state is None:  # a GroupResult: the state of each member
                state = [child.state for child in getattr(result, "results", [])]
            raise AssertionError(
                f"task {result.id} still {state} after {timeout}s: {exc}\n{self.log_tails()}"
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
            current: str = result.state
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


@contextlib.contextmanager
def running_cluster(
    config: str,
    *,
    broker: str,
    backend: str,
    postgres_url: str,
    redis_url: str,
    logdir: Path,
    amqp_url: str | None = None,
    worker_options: Sequence[str] = THREADS_WORKER,
    extra_queues: Sequence[str] = (),
) -> Iterator[Cluster]:
    """Start worker, triggerer and beat for one configuration; stop and clean up after.

    ``broker`` is ``"redis"`` or ``"amqp"``; ``backend`` is ``"redis"`` or
    ``"db"`` (``db+postgresql``, in this run's schema). The store is always
    PostgreSQL. ``worker_options`` are passed to ``celery worker`` (pool,
    concurrency, ``-E`` ...). Each label in ``extra_queues`` names one more
    queue the worker consumes besides the default one (``cluster.queues``).
    """
    suffix = uuid.uuid4().hex[:10]
    schema = f"cdit_{suffix}"

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
    if broker == "redis":
        broker_url = redis_url_db
    elif broker == "amqp":
        assert amqp_url is not None, "an amqp broker needs amqp_url"
        broker_url = amqp_url
    else:
        raise ValueError(f"unknown broker {broker!r}")
    if backend == "redis":
        backend_url = redis_url_db
    elif backend == "db":
        backend_url = f"db+{store_url}"
    else:
        raise ValueError(f"unknown backend {backend!r}")

    queues = {"default": f"cdit.tasks.{suffix}"}
    for label in extra_queues:
        queues[label] = f"cdit.{label}.{suffix}"

    env = dict(os.environ)
    env.update(
        {
            proj.BROKER_URL: broker_url,
            proj.RESULT_BACKEND: backend_url,
            proj.DATABASE_URL: store_url,
            proj.QUEUE: queues["default"],
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
        processes=Processes(config, "proj", HERE, env, logdir),
        queues=queues,
    )
    try:
        cluster.processes.run("defer", "init-db")
        if backend_url.startswith("db+"):
            # Create celery's result tables before the worker races to. Explicitly: before
            # Celery 5.5 a read creates them only for the first database the process used.
            results_engine = sa.create_engine(backend_url[len("db+") :])
            try:
                ResultModelBase.metadata.create_all(results_engine)
            finally:
                results_engine.dispose()
        queue_options = ("-Q", ",".join(queues.values())) if extra_queues else ()
        worker = cluster.start(
            "worker",
            "worker",
            *worker_options,
            *queue_options,
            "-l",
            "INFO",
            "-n",
            f"cdit-{suffix}@%h",
            "--without-mingle",
            "--without-gossip",
        )
        cluster.start_triggerer()
        cluster.start(
            "beat", "beat", "-l", "INFO", "--schedule", str(logdir / "celerybeat-schedule")
        )
        try:
            assert cluster.send("proj.ping").get(timeout=START_TIMEOUT) == "pong"
        except Exception as exc:
            raise AssertionError(
                f"the worker did not answer ({exc!r}, worker exit code {worker.poll()})\n"
                f"{cluster.log_tails()}"
            ) from None
        cluster.wait_for_log("beat", "beat: Starting")
        yield cluster
    finally:
        codes = cluster.stop_all()
        print(f"[{config}] exit codes after SIGTERM: {codes}")
        _drop_queues(cluster)
        for store in cluster._stores:
            with contextlib.suppress(Exception):
                store.close()
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
            for queue in (*cluster.queues.values(), cluster.env[proj.TRIGGER_QUEUE]):
                with contextlib.suppress(Exception):
                    channel.queue_delete(queue)
    except Exception:
        pass

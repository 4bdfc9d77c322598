"""What every benchmark shares: an isolated run, real processes, /proc readings, a table.

A :class:`Run` owns one PostgreSQL schema, one Redis key prefix and one set of
queue names, all named after a random run id, and the ``celery`` processes it
started (each in a session of its own). Leaving the ``with`` block stops those
processes (SIGTERM, then SIGKILL of their process group), drops the schema and
deletes the keys, whether the benchmark finished or failed. What is read
from /proc and printed lives in :mod:`readings`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
# The repository root, for the process harness the tests use too (tests/support/processes.py):
# the benchmarks run as plain scripts, from a checkout.
sys.path.insert(1, str(BENCH_DIR.parent))

import benchapp  # noqa: E402
import bulk  # noqa: E402
from readings import CpuWindow  # noqa: E402

from tests.support.processes import Processes  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

__all__ = ["Run", "arguments", "wait_until"]

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS = "redis://127.0.0.1:6379"
DEFAULT_AMQP = "amqp://guest:guest@127.0.0.1:5672//"


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through Run.__exit__: processes stopped, data gone


def arguments(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes; a script adds its own.

    Also makes SIGTERM clean up like Ctrl-C does.
    """
    signal.signal(signal.SIGTERM, _terminate)
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, under a minute (CI smoke)"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get("CELERY_DEFER_TEST_POSTGRES_URL", DEFAULT_POSTGRES),
        help="store database (a schema of its own is created and dropped)",
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get("CELERY_DEFER_TEST_REDIS_URL", DEFAULT_REDIS),
        help="Redis for results and marks",
    )
    parser.add_argument("--broker", choices=("redis", "amqp"), default="redis")
    parser.add_argument(
        "--amqp", default=os.environ.get("CELERY_DEFER_TEST_AMQP_URL", DEFAULT_AMQP)
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the processes' logs")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        metavar="SECONDS",
        help="wait up to this long for the machine to be idle before each "
        "measurement (default 120; 5 with --quick)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="record py-spy profiles (collapsed stacks) of the measured phase "
        "into DIR (needs py-spy)",
    )
    return parser


class Run:
    """One isolated benchmark run (see the module docstring)."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name = name
        self.args = args
        self.id = uuid.uuid4().hex[:8]
        self.prefix = f"bench:{name}:{self.id}:"
        self.queue = self.prefix.replace(":", ".").strip(".")
        #: The node name of the run's worker (``-n``), for remote control.
        self.node = f"bench-{self.id}@localhost"
        self.schema = f"bench_{name}_{self.id}"
        self.store_url = (
            make_url(args.postgres)
            .update_query_dict({"options": f"-csearch_path={self.schema}"})
            .render_as_string(hide_password=False)
        )
        self.engine = sa.create_engine(self.store_url)
        redis_url = args.redis.rstrip("/")
        broker = args.amqp if args.broker == "amqp" else f"{redis_url}/0"
        self.env = dict(os.environ)
        self.env.update(
            {
                benchapp.BROKER_URL: broker,
                benchapp.RESULT_BACKEND: f"{redis_url}/0",
                benchapp.DATABASE_URL: self.store_url,
                benchapp.MARKER_URL: f"{redis_url}/0",
                benchapp.PREFIX: self.prefix,
                "PYTHONPATH": os.pathsep.join(
                    p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH", "")) if p
                ),
            }
        )
        import redis

        self.marks = redis.Redis.from_url(f"{redis_url}/0")
        self.logdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        self.processes = Processes(name, "benchapp", BENCH_DIR, self.env, self.logdir)
        self._app: Any = None
        self.failed = False
        self.admin = sa.create_engine(args.postgres)
        with self.admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{self.schema}"'))
        try:
            # The store's tables, created now: the processes and the bulk inserts need them.
            from celery_defer.store import SqlStore

            store = SqlStore(self.store_url)
            store.create_schema()
            store.close()
        except BaseException:
            self.failed = True
            self.close()  # no `with` block owns this run yet
            raise

    # -- context ----------------------------------------------------------

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.failed = exc_type is not None
        if self.failed:
            print(self.log_tails(), file=sys.stderr)
        self.close()

    def close(self) -> None:
        self.processes.stop_all(timeout=60)
        if self._app is not None:
            self._app.close()
        self.engine.dispose()
        with self.admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
        self.admin.dispose()
        keys = list(self.marks.scan_iter(match=f"{self.prefix}*", count=1000))
        for i in range(0, len(keys), 1000):
            self.marks.delete(*keys[i : i + 1000])
        self.marks.close()
        if self.args.keep_logs or self.failed:
            print(f"logs kept in {self.logdir}", file=sys.stderr)
        else:
            shutil.rmtree(self.logdir, ignore_errors=True)

    # -- the client side --------------------------------------------------

    @property
    def app(self) -> Any:
        """A client app configured like the processes (sends tasks, builds snapshots)."""
        if self._app is None:
            self._app = benchapp.create_app(self.env)
        return self._app

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def counter(self, name: str = "done") -> int:
        return int(self.marks.get(self.key(name)) or 0)

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as conn:
            return conn.execute(sa.text(sql), params).scalar()

    # -- processes --------------------------------------------------------

    def start(self, role: str, *argv: str) -> subprocess.Popen[bytes]:
        return self.processes.start(role, *argv)

    def start_worker(
        self, concurrency: int, pool: str = "prefork", timeout: float = 60
    ) -> subprocess.Popen[bytes]:
        """A worker (:attr:`node`) on the run's queue; returns once it answers a ping."""
        process = self.start(
            "worker",
            "worker",
            "-P",
            pool,
            "-c",
            str(concurrency),
            "-n",
            self.node,
            "-Q",
            self.queue,
            "--without-gossip",
            "--without-mingle",
        )

        def answers() -> bool:
            self.processes.check_alive("worker")
            return bool(self.app.control.ping(destination=[self.node], timeout=0.5))

        wait_until(answers, timeout, "the worker to answer a ping", interval=0.2)
        return process

    def start_triggerer(
        self, capacity: int, timeout: float = 60, role: str = "triggerer"
    ) -> subprocess.Popen[bytes]:
        """A triggerer; returns once it registered with the store."""
        process = self.start(role, "triggerer", "--capacity", str(capacity))
        self._wait_registered([role], timeout)
        return process

    def start_triggerers(self, count: int, capacity: int, timeout: float = 120) -> list[str]:
        """``count`` triggerers started together, as roles ``triggerer-1`` .. ``triggerer-N``.

        Returns their roles once every one registered with the store. All are
        started before any is waited for: none gets a head start of a whole
        process start-up.
        """
        roles = [f"triggerer-{i}" for i in range(1, count + 1)]
        for role in roles:
            self.start(role, "triggerer", "--capacity", str(capacity))
        self._wait_registered(roles, timeout)
        return roles

    def _wait_registered(self, roles: Sequence[str], timeout: float) -> None:
        def registered() -> bool:
            for role in roles:
                self.processes.check_alive(role)
            pids = {self.pid(role) for role in roles}
            with self.engine.connect() as conn:
                rows = conn.execute(sa.text("select pid from defer_triggerers")).scalars()
                return pids <= set(rows)

        wait_until(registered, timeout, f"{', '.join(roles)} to register", interval=0.05)

    def owned(self) -> dict[str, int]:
        """How many triggers each triggerer role of this run owns (by the pid it registered)."""
        with self.engine.connect() as conn:
            counts = dict(
                conn.execute(
                    sa.text(
                        "select r.pid, count(*) from defer_triggers t "
                        "join defer_triggerers r on r.id = t.triggerer_id group by r.pid"
                    )
                ).all()
            )
        return {
            role: counts.get(process.pid, 0)
            for role, process in self.processes.running.items()
            if role.startswith("triggerer")
        }

    def _check_alive(self, role: str) -> None:
        self.processes.check_alive(role)

    def stop(self, role: str, timeout: float = 60) -> float:
        """SIGTERM, then SIGKILL of its group after ``timeout``; returns the seconds taken."""
        began = time.monotonic()
        self.processes.stop(role, timeout)
        return time.monotonic() - began

    def profile(self, *roles: str, tag: str = "") -> None:
        """With --profile: start py-spy on ``roles`` (children included) until :meth:`profiled`.

        The figures of a profiled phase are not comparable: py-spy costs CPU.
        """
        if not self.args.profile:
            return
        out = Path(self.args.profile)
        out.mkdir(parents=True, exist_ok=True)
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        for role in roles:
            name = f"{self.name}{tag}-{role}"
            with open(self.logdir / f"py-spy-{name}.log", "ab") as log:
                self.processes.running[f"py-spy-{role}"] = subprocess.Popen(
                    [
                        spy,
                        "record",
                        "--nonblocking",
                        "--subprocesses",
                        "--threads",
                        "-r",
                        "250",
                        "-f",
                        "raw",
                        "-p",
                        str(self.pid(role)),
                        "-o",
                        str(out / f"{name}.txt"),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )

    def profiled(self) -> None:
        """Stop the profilers: each writes its collapsed stacks on SIGINT."""
        for role in [r for r in self.processes.running if r.startswith("py-spy-")]:
            process = self.processes.running.pop(role)
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)

    def log_tails(self, lines: int = 25) -> str:
        return self.processes.log_tails(lines)

    def pid(self, role: str) -> int:
        return self.processes.running[role].pid

    def cpu_window(self, *roles: str) -> CpuWindow:
        """Start measuring the CPU of ``roles`` (with their children) and of the machine."""
        return CpuWindow({role: self.pid(role) for role in roles})

    # -- storing deferrals fast -------------------------------------------

    def store_deferrals(
        self,
        task_name: str,
        method: str,
        moments: Sequence[datetime],
        chunk: int = 50_000,
        as_timers: bool = True,
    ) -> list[str]:
        """Store one deferral per moment, each on a ``DateTimeTrigger`` at that moment.

        The rows are the ones ``Store.save_deferral`` writes (same columns,
        same typed-JSON kwargs, a real request snapshot routed to the run's
        queue), copied in bulk (:mod:`bulk`): a million deferrals take about a
        minute, not hours. They send no new-trigger notice
        (:meth:`wake_triggerers`). Returns the task ids, in moment order.
        """
        from celery.app.task import Context

        from celery_defer import wire

        # The module's own app has the tasks registered; only their serializer
        # settings matter to the snapshot, and those are the same everywhere.
        task = benchapp.app.tasks[task_name]
        snapshot = wire.snapshot_request(
            task,
            Context(
                id="x",
                delivery_info={"exchange": "", "routing_key": self.queue},
                headers={},
                ignore_result=False,
            ),
        )
        return bulk.store_deferrals(
            self.engine, snapshot, task_name, method, moments, chunk, as_timers
        )

    def vacuum(self, *tables: str) -> None:
        """``VACUUM (ANALYZE)`` the run's tables (after a bulk load, as autovacuum would)."""
        with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for table in tables:
                conn.execute(sa.text(f"VACUUM (ANALYZE) {table}"))

    def wake_triggerers(self) -> None:
        """One new-trigger notice, as a deferring task sends (rows stored in bulk send none)."""
        from celery_defer.broker import notices

        notices.announce_trigger(self.app, 0)

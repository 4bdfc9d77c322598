"""Machinery of the fault tests: real processes on real services, and the count at the end.

:func:`fault_run` makes a fresh PostgreSQL schema for the store, queue names of its own and
a marker namespace in Redis, and yields a :class:`FaultRun` that starts ``celery -A faultapp``
workers, triggerers and beat as subprocesses (each in its own session, so a ``SIGKILL``
reaches a prefork worker's children too), sends deferred tasks and counts how often each
one's resumed method completed. Everything is stopped and dropped afterwards.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import cast

import redis
import sqlalchemy as sa
from celery import Celery
from sqlalchemy.engine import make_url

from tests.support.processes import Processes
from tests.support.waiting import wait_until

HERE = Path(__file__).resolve().parent

START_TIMEOUT = 40.0

#: Every tally made in this session, printed at the end by tests/faults/conftest.py.
TALLIES: list[Tally] = []


@dataclass
class Tally:
    """How often each task's resumed method completed."""

    scenario: str
    tasks: int
    lost: int
    duplicated: int
    took: float
    #: Runs of a resumed method that started but were cut off (and ran again).
    restarted: int = 0
    #: Other facts worth a line (e.g. how often a supervisor restarted a crashed worker).
    note: str = ""

    def summary(self) -> str:
        extra = f", re-executed after a kill {self.restarted}" if self.restarted else ""
        extra += f", {self.note}" if self.note else ""
        return (
            f"{self.scenario}: {self.tasks} tasks, lost {self.lost}, "
            f"duplicated {self.duplicated}{extra}, took {self.took:.1f}s"
        )


@dataclass
class FaultRun:
    """One scenario's processes, store and markers."""

    scenario: str
    env: dict[str, str]
    logdir: Path
    store: sa.Engine
    markers: redis.Redis
    prefix: str
    procs: Processes
    task_ids: list[str] = field(default_factory=list)
    started_at: float = field(default_factory=time.monotonic)
    _supervisors: list[threading.Event] = field(default_factory=list)

    # -- processes (tests/support/processes.py) ------------------------------------------------

    @property
    def processes(self) -> dict[str, subprocess.Popen[bytes]]:
        """The running processes, by role."""
        return self.procs.running

    def start(self, role: str, *argv: str, **extra_env: str) -> subprocess.Popen[bytes]:
        return self.procs.start(role, *argv, env=extra_env)

    def start_worker(self, role: str = "worker", *options: str, **extra_env: str) -> None:
        options = options or ("--pool", "threads", "--concurrency", "8")
        self.start(
            role,
            "worker",
            *options,
            "-l",
            "INFO",
            "-n",
            f"{role}-{self.prefix}@%h",
            "--without-mingle",
            "--without-gossip",
            **extra_env,
        )
        self.wait_for_log(role, "ready.")

    def supervise_worker(self, role: str = "worker", *options: str) -> Callable[[], int]:
        """Start a worker again whenever it exits, as systemd's ``Restart=always`` would.

        For a Redis restart: kombu's Redis transport can crash the worker while it
        restores unacked messages over the lost connection ("Unrecoverable error:
        AttributeError: 'NoneType' object has no attribute 'hostname'", kombu #582,
        celery #10205), which no celery-defer code runs in. ``options`` are the
        worker's (as given to :meth:`start_worker`). Returns a function giving the
        number of restarts so far.
        """
        restarts: list[str] = []
        stop = threading.Event()

        def watch() -> None:
            while not stop.wait(0.5):
                process = self.processes.get(role)
                if process is None or process.poll() is None:
                    continue
                restarts.append(role)
                self.start_worker(role, *options)

        thread = threading.Thread(target=watch, name=f"supervise-{role}", daemon=True)
        thread.start()
        self._supervisors.append(stop)
        return lambda: len(restarts)

    def start_triggerer(self, role: str = "triggerer", *options: str, **extra_env: str) -> None:
        self.start(role, "triggerer", "-l", "INFO", *options, **extra_env)
        self.wait_for_log(role, "running, capacity")

    def start_beat(self) -> None:
        self.start("beat", "beat", "-l", "INFO", "--schedule", str(self.logdir / "beat-schedule"))
        self.wait_for_log("beat", "beat: Starting")

    def wait_for_log(self, role: str, text: str, timeout: float = START_TIMEOUT) -> None:
        self.procs.wait_for_log(role, text, timeout)

    def kill(self, role: str) -> None:
        """``kill -9`` the process and everything in its session (prefork children too)."""
        self.procs.kill(role)

    def stop(self, role: str, timeout: float = 15.0) -> None:
        self.procs.stop(role, timeout)

    def tails(self, lines: int = 30) -> str:
        return self.procs.log_tails(lines)

    def log_count(self, role: str, text: str) -> int:
        return self.procs.log_count(role, text)

    # -- tasks -------------------------------------------------------------------------------

    def send(self, count: int, after: float, spread: float = 0.0) -> None:
        """Send ``count`` tasks that defer until ``after`` s from now (over ``spread`` s)."""
        app = Celery("faultclient", set_as_current=False)
        app.conf.update(
            broker_url=self.env["FAULT_BROKER_URL"],
            task_default_queue=self.env["FAULT_QUEUE"],
        )
        start = datetime.now(timezone.utc) + timedelta(seconds=after)
        try:
            with app.producer_or_acquire() as producer:
                for n in range(count):
                    moment = start + timedelta(seconds=spread * n / max(count, 1))
                    task_id = f"{self.prefix}-{n:05d}"
                    app.send_task(
                        "faultapp.wait_until",
                        args=(moment.isoformat(),),
                        task_id=task_id,
                        producer=producer,
                    )
                    self.task_ids.append(task_id)
        finally:
            app.close()
        self.started_at = time.monotonic()

    def states(self) -> Counter[str]:
        with self.store.connect() as conn:
            rows = conn.execute(sa.text("select state, count(*) from defer_deferrals group by 1"))
            return Counter({state: count for state, count in rows})

    def held_by(self) -> Counter[str | None]:
        with self.store.connect() as conn:
            rows = conn.execute(
                sa.text("select triggerer_id, count(*) from defer_triggers group by 1")
            )
            return Counter({owner: count for owner, count in rows})

    def wait_deferred(self, timeout: float = 90.0) -> None:
        """Until every task has deferred (its row exists, or it already resumed)."""
        total = len(self.task_ids)

        def all_deferred() -> bool:
            return sum(self.states().values()) + len(self.runs()) >= total

        try:
            wait_until(all_deferred, timeout, f"{total} deferrals")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.states()}\n{self.tails()}") from None

    def runs(self, key: str = "done") -> Counter[str]:
        raw = cast(dict[bytes, bytes], self.markers.hgetall(f"{self.prefix}:{key}"))
        return Counter({k.decode(): int(v) for k, v in raw.items()})

    def wait_all_done(self, timeout: float = 90.0) -> None:
        total = len(self.task_ids)
        try:
            wait_until(lambda: len(self.runs()) >= total, timeout, f"{total} completed tasks", 0.25)
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}: {len(self.runs())} completed, store {self.states()}\n{self.tails()}"
            ) from None

    def tally(self, settle: float = 3.0, note: str = "") -> Tally:
        """Count, after ``settle`` s more for late duplicates to show up."""
        took = time.monotonic() - self.started_at
        time.sleep(settle)
        done, started = self.runs(), self.runs("started")
        counts = [done.get(task_id, 0) for task_id in self.task_ids]
        tally = Tally(
            scenario=self.scenario,
            tasks=len(self.task_ids),
            lost=sum(1 for c in counts if c == 0),
            duplicated=sum(1 for c in counts if c > 1),
            took=took,
            restarted=sum(started.values()) - sum(done.values()),
            note=note,
        )
        print(tally.summary())
        TALLIES.append(tally)
        return tally


@contextlib.contextmanager
def fault_run(
    scenario: str,
    *,
    postgres_url: str,
    redis_url: str,
    broker_url: str | None,
    logdir: Path,
    **env: str,
) -> Iterator[FaultRun]:
    """A fresh store schema, queues and marker namespace; processes stopped and dropped after.

    ``broker_url`` defaults to ``redis_url``. ``env`` adds ``FAULT_*`` settings (see faultapp).
    """
    suffix = uuid.uuid4().hex[:10]
    schema = f"cdfault_{suffix}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    store_url = (
        make_url(postgres_url)
        .update_query_dict({"options": f"-csearch_path={schema}"})
        .render_as_string(hide_password=False)
    )
    full_env = dict(os.environ)
    full_env.update(
        {
            "FAULT_BROKER_URL": broker_url or redis_url,
            "FAULT_STORE_URL": store_url,
            "FAULT_QUEUE": f"cdfault.tasks.{suffix}",
            "FAULT_TRIGGER_QUEUE": f"cdfault.triggers.{suffix}",
            "FAULT_MARKER_URL": redis_url,
            "FAULT_PREFIX": f"cdfault-{suffix}",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(HERE), full_env.get("PYTHONPATH", "")) if p
            ),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
    )
    markers = redis.Redis.from_url(redis_url)
    run = FaultRun(
        scenario=scenario,
        env=full_env,
        logdir=logdir,
        store=sa.create_engine(store_url, pool_pre_ping=True),
        markers=markers,
        prefix=full_env["FAULT_PREFIX"],
        procs=Processes(scenario, "faultapp", HERE, full_env, logdir),
    )
    try:
        run.procs.run("defer", "init-db")
        yield run
    finally:
        for supervisor in run._supervisors:
            supervisor.set()
        run.procs.stop_all(first=[r for r in run.processes if not r.startswith("worker")])
        _drop_queues(run)
        with contextlib.suppress(Exception):
            keys = list(markers.scan_iter(match=f"{run.prefix}:*"))
            if keys:
                markers.delete(*keys)
        markers.close()
        run.store.dispose()
        with admin.connect() as conn:
            conn.execute(sa.text("set lock_timeout = '10s'"))
            conn.execute(sa.text(f'drop schema if exists "{schema}" cascade'))
        admin.dispose()


def _drop_queues(run: FaultRun) -> None:
    app = Celery("faultcleanup", broker=run.env["FAULT_BROKER_URL"], set_as_current=False)
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1)
            channel = conn.default_channel
            for queue in (run.env["FAULT_QUEUE"], run.env["FAULT_TRIGGER_QUEUE"]):
                with contextlib.suppress(Exception):
                    channel.queue_delete(queue)
    except Exception:
        pass
    finally:
        app.close()

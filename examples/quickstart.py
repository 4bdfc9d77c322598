"""celery-defer quickstart: deferrable tasks with no server at all.

    pip install -e . && python examples/quickstart.py

This one file is both the Celery app (``celery -A quickstart ...`` imports it)
and the script that starts a worker, a triggerer and beat as real processes,
submits a few deferring tasks, and prints their states until they finish.
Everything is embedded: the deferral store is a SQLite file, the broker is
``defer-filesystem://`` (kombu's ``filesystem://`` transport with atomic
writes) and results go to a ``file://`` backend, all under ``.celery-defer/``
next to this file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from celery import Celery

import celery_defer
from celery_defer import DeferrableTask
from celery_defer.testing import SuccessTrigger
from celery_defer.triggers import DateTimeTrigger, TimeDeltaTrigger

HERE = Path(__file__).resolve().parent
DATA = HERE / ".celery-defer"
BROKER_DIR = DATA / "broker"

app = Celery("quickstart", broker="defer-filesystem://", backend=f"file://{DATA / 'results'}")
app.conf.update(
    broker_transport_options={
        "data_folder_in": str(BROKER_DIR),
        "data_folder_out": str(BROKER_DIR),
        "control_folder": str(DATA / "control"),
        "polling_interval": 0.05,
    },
    defer_database_url=f"sqlite:///{DATA / 'store.sqlite3'}",
    defer_sweep_interval=1.0,
    defer_triggerer_heartbeat=1.0,
    defer_triggerer_health_timeout=10.0,
    beat_schedule_filename=str(DATA / "celerybeat-schedule"),
    worker_hijack_root_logger=False,
)
celery_defer.install(app)  # registers the sweep task and its beat entry


class WaitThenAdd(DeferrableTask):
    """Adds two numbers after a wait, without holding a worker slot meanwhile."""

    name = "quickstart.wait_then_add"

    def run(self, x: int, y: int, seconds: float = 2.0) -> None:
        self.defer(
            trigger=TimeDeltaTrigger(timedelta(seconds=seconds)),
            method_name="finish",
            kwargs={"total": x + y},
        )

    def finish(self, total: int, event: object = None) -> int:
        return total


wait_then_add = app.register_task(WaitThenAdd())


@app.task(base=DeferrableTask, bind=True, name="quickstart.at_moment")
def at_moment(self: DeferrableTask, moment: str, event: object = None) -> str:
    """Waits until an absolute moment (DateTimeTrigger), then reports it."""
    if event is None:
        self.defer(
            trigger=DateTimeTrigger(datetime.fromisoformat(moment)), kwargs={"moment": moment}
        )
    return f"woke at {moment}"


@app.task(base=DeferrableTask, bind=True, name="quickstart.right_away")
def right_away(self: DeferrableTask, event: object = None) -> str:
    """Defers on a trigger that fires at once (celery_defer.testing.SuccessTrigger)."""
    if event is None:
        self.defer(trigger=SuccessTrigger())
    return "resumed at once"


@app.task(base=DeferrableTask, bind=True, name="quickstart.too_slow")
def too_slow(self: DeferrableTask, event: object = None) -> str:
    """Waits an hour with a 2 s timeout: the sweep fails it with TriggerTimeout."""
    self.defer(trigger=TimeDeltaTrigger(timedelta(hours=1)), timeout=timedelta(seconds=2))
    return "unreachable"


def _start(*argv: str) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    )
    log = open(DATA / f"{argv[0]}.log", "wb")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "quickstart", *argv],
        cwd=HERE,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def main() -> int:
    shutil.rmtree(DATA, ignore_errors=True)
    for folder in (BROKER_DIR, DATA / "control", DATA / "results"):
        folder.mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-m", "celery", "-A", "quickstart", "defer", "init-db"],
        cwd=HERE,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(HERE)),
    )
    processes = [
        _start("worker", "--pool", "threads", "--concurrency", "2", "--loglevel", "INFO"),
        _start("triggerer", "--loglevel", "INFO"),
        _start("beat", "--loglevel", "INFO"),
    ]
    started = time.monotonic()
    try:
        moment = (datetime.now(timezone.utc) + timedelta(seconds=3)).isoformat()
        results = {
            "wait_then_add(1, 2)   TimeDeltaTrigger 2 s": wait_then_add.delay(1, 2),
            "at_moment(+3 s)       DateTimeTrigger": at_moment.delay(moment),
            "right_away()          SuccessTrigger": right_away.delay(),
            "too_slow()            timeout 2 s": too_slow.delay(),
        }
        last: dict[str, str] = {}
        while time.monotonic() - started < 25:
            for label, result in results.items():
                state = result.state
                if last.get(label) != state:
                    last[label] = state
                    print(f"{time.monotonic() - started:5.1f}s  {label}  {state}", flush=True)
            if all(r.ready() for r in results.values()):
                break
            time.sleep(0.1)
        print()
        for label, result in results.items():
            if not result.ready():
                print(f"{label}: still {result.state} (see {DATA}/*.log)")
                return 1
            outcome = result.result if result.successful() else repr(result.result)
            print(f"{label}: {result.state} -> {outcome}  (task id {result.id})")
        print(f"\nall done in {time.monotonic() - started:.1f}s")
        return 0
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    sys.exit(main())

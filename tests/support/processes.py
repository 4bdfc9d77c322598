"""Real ``celery`` processes for the tests and benchmarks that need them.

The integration tests, the fault tests and the benchmarks all start ``celery -A <app> worker``,
``triggerer`` and ``beat`` as subprocesses, wait for them to be ready, read their logs when
something goes wrong and stop them at the end. :class:`Processes` is that part, once: each
process runs in a session of its own (so a signal to its group reaches a prefork worker's
children too) and writes its output to a log file of its own in ``logdir``.

It imports nothing from pytest or from the rest of the test suite, so the benchmarks (plain
scripts) use it too: ``benchmarks/harness.py`` puts the repository root on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.support.waiting import wait_until

#: How long a process may take to stop after SIGTERM before it is killed.
STOP_TIMEOUT = 15.0


class ProcessExited(AssertionError):
    """A process the test or benchmark relies on has exited (its log tails say why)."""


class Processes:
    """The ``celery -A app`` processes of one run, by role (``"worker"``, ``"triggerer"``...).

    ``name`` labels the log tails; ``cwd`` is where ``app`` is importable from. Starting a
    role again (a restart) opens a new, numbered log file; :meth:`log_tails` shows them all,
    in the order they were started.
    """

    def __init__(
        self, name: str, app: str, cwd: Path, env: Mapping[str, str], logdir: Path
    ) -> None:
        self.name = name
        self.app = app
        self.cwd = cwd
        self.env = dict(env)
        self.logdir = logdir
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        #: Role -> the log of its latest start.
        self.logs: dict[str, Path] = {}
        #: (role, log) of every start, oldest first.
        self.history: list[tuple[str, Path]] = []

    def start(
        self, role: str, *argv: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Run ``celery -A <app> *argv`` as ``role``, its output going to a new log file."""
        log = self.logdir / f"{len(self.history) + 1:02d}-{role}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", self.app, *argv],
                cwd=self.cwd,
                env={**self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running[role] = process
        self.logs[role] = log
        self.history.append((role, log))
        return process

    def run(self, *argv: str, timeout: float = 60) -> None:
        """Run ``celery -A <app> *argv`` to completion (``defer init-db``...), or raise."""
        subprocess.run(
            [sys.executable, "-m", "celery", "-A", self.app, *argv],
            cwd=self.cwd,
            env=self.env,
            check=True,
            timeout=timeout,
            capture_output=True,
        )

    def check_alive(self, role: str) -> None:
        """Raise :class:`ProcessExited`, with the log tails, if ``role`` has exited."""
        process = self.running[role]
        if process.poll() is not None:
            raise ProcessExited(f"{role} exited with {process.returncode}\n{self.log_tails()}")

    def wait_for_log(self, role: str, text: str, timeout: float, interval: float = 0.05) -> None:
        """Wait until ``text`` is in the log of ``role``; fail early if the process exits."""
        log = self.logs[role]

        def seen() -> bool:
            self.check_alive(role)
            return text in log.read_text(errors="replace")

        try:
            wait_until(seen, timeout, f"{text!r} in the {role} log ({log.name})", interval)
        except ProcessExited:
            raise
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tails()}") from None

    def log_count(self, role: str, text: str) -> int:
        """How often ``text`` is in the latest log of ``role``."""
        return self.logs[role].read_text(errors="replace").count(text)

    def stop(self, role: str, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, then SIGKILL of the whole session after ``timeout``; the exit code.

        ``None`` when ``role`` is not running (never started, or already stopped).
        """
        process = self.running.pop(role, None)
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_session(process)
                process.wait(timeout=10)
        _kill_session(process)  # children a dead parent left behind
        return process.returncode

    def kill(self, role: str) -> None:
        """``kill -9`` the process and everything in its session (prefork children too)."""
        process = self.running.pop(role)
        _kill_session(process)
        process.wait(timeout=10)

    def stop_all(
        self, first: Iterable[str] = (), timeout: float = STOP_TIMEOUT
    ) -> dict[str, int | None]:
        """Stop every process, the roles in ``first`` before the others; their exit codes."""
        order = [role for role in first if role in self.running]
        order += [role for role in self.running if role not in order]
        return {role: self.stop(role, timeout) for role in order}

    def log_tails(self, lines: int = 40) -> str:
        """The last ``lines`` of every log, for an assertion message."""
        parts = []
        for role, log in self.history:
            text = log.read_text(errors="replace") if log.exists() else ""
            tail = "\n".join(text.splitlines()[-lines:])
            parts.append(
                f"----- {self.name}: {role}, {log.name} (last {lines} lines) -----\n{tail}"
            )
        return "\n".join(parts)


def _kill_session(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)

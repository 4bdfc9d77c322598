"""The trigger examples in examples/, each run as a user runs it (no server at all).

They are started together, each in its own process and temporary directory, and each test
checks one example's output.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NAMES = ("wait_for_children", "webhook_approval", "polling_trigger", "time_of_day")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def outputs() -> dict[str, str]:
    """Run every example at once; their stdout by name (a failure shows everything)."""
    running = {
        name: subprocess.Popen(
            [sys.executable, str(EXAMPLES / f"{name}.py")],
            cwd=EXAMPLES,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in NAMES
    }
    results: dict[str, str] = {}
    for name, process in running.items():
        try:
            out, err = process.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        assert process.returncode == 0, f"{name} exited {process.returncode}:\n{out}\n{err}"
        results[name] = out
    return results


def test_wait_for_children(outputs: dict[str, str]) -> None:
    lines = outputs["wait_for_children"].splitlines()
    assert "parent is DEFERRED while its 5 children run" in lines
    assert lines[1:6] == [
        "child 0: SUCCESS -> 0",
        "child 1: SUCCESS -> 1",
        "child 2: SUCCESS -> 4",
        "child 3: FAILURE -> ValueError: child 3 refuses",
        "child 4: SUCCESS -> 16",
    ]
    assert re.fullmatch(r"parent SUCCESS in \d+\.\ds", lines[6])


def test_webhook_approval(outputs: dict[str, str]) -> None:
    lines = outputs["webhook_approval"].splitlines()
    assert lines == [
        "article 7: DEFERRED, waiting for approval",
        "POST /approvals/7 -> 202",
        "article 7: published (approved by alice)",
        "POST /approvals/8 -> 202, before its task even started",
        "article 8: rejected by bob",
    ]


def test_polling_trigger(outputs: dict[str, str]) -> None:
    lines = outputs["polling_trigger"].splitlines()
    assert "run_report: DEFERRED (the worker slot is free)" in lines
    assert [line for line in lines if line.startswith("  api:")] == [
        "  api: poll 1 of job 42 -> running",
        "  api: poll 2 of job 42 -> running",
        "  api: poll 3 of job 42 -> running",
        "  api: poll 4 of job 42 -> done",
    ]
    assert "run_report: report ready at s3://reports/42.csv after 4 polls" in lines


def test_time_of_day(outputs: dict[str, str]) -> None:
    waiting, ran = outputs["time_of_day"].splitlines()
    target = re.fullmatch(r"daily_report: DEFERRED until (\d\d:\d\d:\d\d) Europe/Paris", waiting)
    assert target, waiting
    assert re.fullmatch(rf"daily_report: ran at {target[1]} CES?T \(Europe/Paris\)", ran), ran

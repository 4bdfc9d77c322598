"""The quickstart a new user runs first: real processes, no server at all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_quickstart_runs_every_trigger_and_the_timeout() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "DEFERRED" in out
    assert "TimeDeltaTrigger 2 s: SUCCESS -> 3" in out
    assert "DateTimeTrigger: SUCCESS -> woke at" in out
    assert "SuccessTrigger: SUCCESS -> resumed at once" in out
    assert "timeout 2 s: FAILURE -> TriggerTimeout(" in out
    seconds = float(out.rsplit("all done in ", 1)[1].split("s", 1)[0])
    assert seconds < 30

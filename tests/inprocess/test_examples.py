"""Each runnable example in examples/ (the quickstart has its own test module)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.slow
def test_canvas_example() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "canvas.py")],
        cwd=EXAMPLES,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "chain : 5" in lines
    assert any(line.startswith("group : [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]") for line in lines)
    assert "chord : 90" in lines
    assert "link  : state while waiting = DEFERRED -> result 42" in lines
    assert "  callback 'link' got 42" in lines
    assert "revoke: REVOKED" in lines

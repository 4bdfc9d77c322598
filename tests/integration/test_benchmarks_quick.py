"""Every benchmark script runs in its ``--quick`` mode, exits 0 and prints its table.

A smoke test: the figures of a quick run mean little (small sizes, a shared
machine); what is checked is that each script still starts its processes,
measures, reports and cleans up. The scripts need PostgreSQL and Redis, so
these tests take their URLs from the real-service fixtures (skipped without
them, failed on CI).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPTS = ["hold.py", "latency.py", "cycle.py", "slots.py", "ratios.py", "timers.py"]
RUN_TIMEOUT = 110  # each script's quick mode takes well under a minute

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.mark.timeout(RUN_TIMEOUT + 60)
@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_mode_prints_its_table(script: str, postgres_url: str, redis_url: str) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            str(BENCHMARKS / script),
            "--quick",
            "--quiet-wait",
            "0",
            "--postgres",
            postgres_url,
            "--redis",
            redis_url,
        ],
        cwd=BENCHMARKS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the script stop the processes it started and drop its data.
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
        pytest.fail(f"{script} --quick ran over {RUN_TIMEOUT}s\n{out}\n{err[-3000:]}")
    assert process.returncode == 0, f"{script} exited {process.returncode}\n{out}\n{err[-3000:]}"
    lines = out.splitlines()
    assert any(line.startswith("## ") for line in lines), out
    table = [line for line in lines if line.startswith("| ")]
    assert len(table) >= 3, f"no table with a row in:\n{out}"  # header, rule, a row
    assert any(line.startswith("| --- |") for line in lines), out

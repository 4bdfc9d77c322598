"""Print every fault scenario's one-line summary at the end of the run, pass or fail."""

from __future__ import annotations

import pytest

from tests.faults.faultkit import TALLIES


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TALLIES:
        return
    terminalreporter.section("fault scenarios (every task must resume exactly once)")
    for tally in TALLIES:
        terminalreporter.write_line(tally.summary())

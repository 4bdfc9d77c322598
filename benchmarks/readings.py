"""What the benchmarks read and print: CPU and memory from /proc, percentiles, tables."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- /proc readings -------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads)."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(_stat(int(entry))[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its living descendants (a prefork worker and its pool)."""
    total = 0.0
    for each in descendants(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(each)
    return total


def memory(pid: int) -> tuple[int, int]:
    """(RSS, peak RSS) of ``pid`` in bytes."""
    values = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def service_cpu_seconds(*names: str) -> float:
    """CPU seconds of every local process whose command is one of ``names``."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                if f.read().strip() not in names:
                    continue
            total += cpu_seconds(int(entry))
        except OSError:
            continue
    return total


def postgres_cpu_seconds() -> float:
    """CPU seconds of every local PostgreSQL process (0 when they cannot be read)."""
    return service_cpu_seconds("postgres", "postmaster")


def machine_cpu_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / CLK_TCK


class CpuWindow:
    """CPU used by our processes, PostgreSQL, Redis and the whole machine over a window.

    ``others`` is what the rest of the machine (anything not in this run)
    used meanwhile: a busy neighbour shows up there instead of silently in
    the figures.
    """

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.began = time.monotonic()
        self.start = self._read()

    def _read(self) -> dict[str, float]:
        values = {role: tree_cpu_seconds(pid) for role, pid in self.pids.items()}
        values["postgres"] = postgres_cpu_seconds()
        values["redis"] = service_cpu_seconds("redis-server")
        values["benchmark"] = cpu_seconds(os.getpid())
        values["machine"] = machine_cpu_seconds()
        return values

    def stop(self) -> dict[str, float]:
        """Percent of one core per component over the window, plus ``others``."""
        end = self._read()
        elapsed = time.monotonic() - self.began
        # max(0): a process that exits during the window (another client's
        # PostgreSQL backend) takes its CPU time out of the sum.
        used = {name: max(0.0, end[name] - self.start[name]) / elapsed * 100 for name in end}
        machine = used.pop("machine")
        used["others"] = max(0.0, machine - sum(used.values()))
        return used


def describe_cpu(used: dict[str, float]) -> str:
    return ", ".join(f"{name} {max(0.0, value):.0f} %" for name, value in used.items())


def wait_quiet(args: argparse.Namespace, threshold: float = 15.0) -> float:
    """Wait (up to --quiet-wait s) until the machine is idle enough to measure.

    Returns how busy it was: all cores together, in percent of one core, over 2 s.
    """
    limit = args.quiet_wait if args.quiet_wait is not None else (5.0 if args.quick else 120.0)
    if limit <= 0:
        return float("nan")
    deadline = time.monotonic() + limit
    while True:
        before, began = machine_cpu_seconds(), time.monotonic()
        time.sleep(2)
        busy = (machine_cpu_seconds() - before) / (time.monotonic() - began) * 100
        if busy <= threshold or time.monotonic() > deadline:
            return busy


# -- figures ------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def verdict(value: float, target: float) -> str:
    """Against a ceiling: met when ``value <= target`` (a NaN misses)."""
    return "met" if value <= target else "missed"


def verdict_at_least(value: float, target: float) -> str:
    """Against a floor: met when ``value >= target`` (a NaN misses)."""
    return "met" if value >= target else "missed"


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def print_report(
    title: str,
    setup: dict[str, Any],
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    notes: Sequence[str] = (),
) -> None:
    """Print the setup and a Markdown table (the form the README quotes)."""
    print(f"\n## {title}\n")
    for name, value in setup.items():
        print(f"- {name}: {value}")
    print()
    print("| " + " | ".join(headers) + " |")
    print("|" + "|".join(" --- " for _ in headers) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    for note in notes:
        print(f"\n{note}")
    sys.stdout.flush()


def machine() -> str:
    cpus = os.cpu_count()
    with open("/proc/meminfo") as f:
        total = int(f.readline().split()[1]) * 1024
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{cpus} cores ({model}), {total / 2**30:.0f} GiB, Python {sys.version.split()[0]}"


def dump_json(path: str | None, data: Any) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str))

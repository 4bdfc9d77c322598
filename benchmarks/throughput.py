"""Throughput of one worker: a batch queued with no consumer, then timed through to the end.

Queueing first and timing from the moment the consumer is added measures the
worker alone: not how fast the benchmark can publish, nor a worker catching
up with a trickle. The plain Celery task measured this way is the baseline
that *cycle*, *ratios* and ``latency --rate-of-plain`` compare against.
"""

from __future__ import annotations

import time
from typing import Any

from harness import Run, wait_until

__all__ = ["WARM_UP", "batch", "plain_throughput"]

#: Tasks of each kind run, not timed, before the measured batch: connections,
#: compiled statements, imports.
WARM_UP = 200


def batch(
    run: Run, task: str, n: int, *, measured: bool = True, interval: float = 0.05
) -> dict[str, Any]:
    """Queue ``n`` tasks with no consumer, then time the worker through all of them.

    The clock stops when the run's ``done`` counter reaches ``n``: each
    benchmark task counts itself there once its work is done. A measured
    batch (not a warm-up) is profiled with --profile.
    """
    run.marks.set(run.key("done"), 0)
    control = run.app.control
    control.cancel_consumer(run.queue, destination=[run.node], reply=True)
    with run.app.producer_or_acquire() as producer:
        for i in range(n):
            run.app.send_task(task, args=(i,), producer=producer)
    roles = [role for role in ("triggerer", "worker") if role in run.processes.running]
    if measured:
        run.profile(*roles, tag=f"-{task}")
    window = run.cpu_window(*roles)
    began = time.monotonic()
    control.add_consumer(run.queue, destination=[run.node], reply=True)
    wait_until(lambda: run.counter() >= n, timeout=600, what=f"{n} {task}", interval=interval)
    elapsed = time.monotonic() - began
    run.profiled()
    used = window.stop()  # percent of one core over the window
    others = used.pop("others")
    used.pop("benchmark")
    return {
        "n": n,
        "seconds": elapsed,
        "per_second": n / elapsed,
        "others_pct": others,
        "cpu_ms_per_task": {role: pct / 100 * elapsed / n * 1000 for role, pct in used.items()},
    }


def plain_throughput(run: Run, n: int, interval: float = 0.01) -> dict[str, Any]:
    """``bench.plain`` through the run's worker: a warm-up, then a measured batch of ``n``."""
    batch(run, "bench.plain", WARM_UP, measured=False, interval=interval)
    return batch(run, "bench.plain", n, interval=interval)

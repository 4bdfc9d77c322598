"""cycle: a defer + resume of a trivial task against a plain Celery task, same worker, same run.

Setup: PostgreSQL store, Redis broker and result backend, one real ``celery
-A benchapp worker`` (prefork, concurrency 2) and one real ``celery -A
benchapp triggerer`` (default capacity, 1000). The trivial work is one Redis
INCR (how the benchmark counts finished tasks) in both.

* batch: N messages are queued while the worker's consumer is cancelled, then
  it is added back and the clock runs until all N have finished: ``bench.plain``
  (one execution each) against ``bench.cycle`` (runs, defers on a
  ``DateTimeTrigger`` due at once, the triggerer fires it, it resumes and
  does the work: two executions, three store transactions and a trigger each).
* one at a time: M tasks sent one after another, each after the previous one
  finished: the round trip of one task, as a caller waiting for it sees it.

Both kinds run on the same worker in the same run, after a warm-up of each.
Target: a cycle costs at most 2.5x a plain round trip (batch, N = 20,000).
"""

from __future__ import annotations

import time
from typing import Any

import harness
import readings
from harness import Run, wait_until
from readings import percentile, print_report, verdict
from throughput import WARM_UP, batch

TARGET_RATIO = 2.5
KINDS = ("bench.plain", "bench.cycle")


def one_at_a_time(run: Run, task: str, m: int) -> dict[str, Any]:
    """Send ``m`` tasks one after another; each round trip ends when its work is done."""
    run.marks.set(run.key("done"), 0)
    times = []
    for i in range(m):
        began = time.perf_counter()
        run.app.send_task(task, args=(i,))
        wait_until(
            lambda i=i: run.counter() > i,
            timeout=60,
            what=f"{task} #{i}",  # type: ignore[misc]
            interval=0.0005,
        )
        times.append(time.perf_counter() - began)
    return {
        "m": m,
        "p50": percentile(times, 50),
        "p90": percentile(times, 90),
        "mean": sum(times) / m,
    }


def main() -> int:
    parser = harness.arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, help="tasks per batch (20000)")
    parser.add_argument("--m", type=int, help="tasks sent one at a time (300)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    n = args.n or (500 if args.quick else 20_000)
    m = args.m or (30 if args.quick else 300)
    results: dict[str, Any] = {}
    with Run("cycle", args) as run:
        run.start_worker(concurrency=args.concurrency)
        run.start_triggerer(capacity=1000)
        for task in KINDS:  # warm-up: connections, compiled statements, imports
            batch(run, task, WARM_UP, measured=False)
        for task in KINDS:
            results[task] = {"batch": batch(run, task, n)}
        for task in KINDS:
            results[task]["single"] = one_at_a_time(run, task, m)
    plain, cycle = results["bench.plain"], results["bench.cycle"]
    ratio = cycle["batch"]["seconds"] / plain["batch"]["seconds"]
    single_ratio = cycle["single"]["p50"] / plain["single"]["p50"]

    def total_cpu(r: dict[str, Any]) -> float:
        return sum(max(0.0, v) for v in r["batch"]["cpu_ms_per_task"].values())

    def cpu(r: dict[str, Any]) -> str:
        return ", ".join(f"{role} {value:.2f}" for role, value in r["cpu_ms_per_task"].items())

    rows = [
        [
            f"batch of {n:,}: wall time",
            f"{plain['batch']['seconds']:.1f} s ({plain['batch']['per_second']:,.0f}/s)",
            f"{cycle['batch']['seconds']:.1f} s ({cycle['batch']['per_second']:,.0f}/s)",
            f"{ratio:.2f}x",
            f"{verdict(ratio, TARGET_RATIO)} (<= {TARGET_RATIO}x)",
        ],
        [
            "batch: CPU ms per task",
            cpu(plain["batch"]),
            cpu(cycle["batch"]),
            f"{total_cpu(cycle) / total_cpu(plain):.2f}x",
            "-",
        ],
        [
            "batch: CPU used by others meanwhile",
            f"{plain['batch']['others_pct']:.0f} % of a core",
            f"{cycle['batch']['others_pct']:.0f} % of a core",
            "-",
            "-",
        ],
        [
            f"one at a time ({m}): round trip p50 / p90",
            f"{plain['single']['p50'] * 1000:.1f} / {plain['single']['p90'] * 1000:.1f} ms",
            f"{cycle['single']['p50'] * 1000:.1f} / {cycle['single']['p90'] * 1000:.1f} ms",
            f"{single_ratio:.2f}x",
            "-",
        ],
    ]
    print_report(
        "cycle: defer + resume against a plain task",
        {
            "machine": readings.machine(),
            "store": "PostgreSQL (local)",
            "broker": args.broker,
            "result backend": "Redis",
            "worker": f"`celery -A benchapp worker -P prefork -c {args.concurrency}` "
            "(--without-gossip --without-mingle)",
            "triggerer": "`celery -A benchapp triggerer --capacity 1000`",
        },
        ["measure", "plain task", "defer + resume", "ratio", "target"],
        rows,
        ["Target: defer + resume <= 2.5x a plain round trip (batch of 20,000)."],
    )
    readings.dump_json(
        args.json, {"plain": plain, "cycle": cycle, "ratio": ratio, "single_ratio": single_ratio}
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

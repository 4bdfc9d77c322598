"""ratios: how fast one worker defers, and drains due resumes, against plain Celery tasks.

Setup: PostgreSQL store, Redis broker and result backend, one real ``celery
-A benchapp worker`` (prefork, concurrency 2) and one real ``celery -A
benchapp triggerer`` holding everything stored (capacity 2N + 1,000). Three
throughputs of the same worker, in one run, each after a warm-up of its own:

* plain: N ``bench.plain`` messages queued while the worker's consumer is
  cancelled, then it is added back and the clock runs until all N have run
  (one Redis INCR each): the baseline.
* deferral: the same with ``bench.park``, which defers at once on a
  ``DateTimeTrigger`` a day ahead; the clock runs until all N deferring
  executions are over (each counted after the task, in ``task_postrun``; the
  N ``deferred`` rows are checked afterwards).
* drain: N deferrals stored in bulk on ``DateTimeTrigger``s all due at one
  moment, held by the triggerer before it; the clock runs from that moment
  until all N resumed methods (``bench.probe.arrive``) have run. Their burst
  lateness (resumed minus due) is reported too.

Targets (issue #13, 1 and 2): deferral and drain throughput each >= 0.6x plain.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import harness
import readings
from harness import Run, wait_until
from readings import percentile, print_report, verdict_at_least
from throughput import WARM_UP, batch, plain_throughput

TARGET_RATIO = 0.6
OWNED = "select count(*) from defer_triggers where triggerer_id is not null"
PARKED = (
    "select count(*) from defer_deferrals where state = 'deferred' and task_name = 'bench.park'"
)


def drain(run: Run, n: int, lead: float, measured: bool = True) -> dict[str, Any]:
    """Store ``n`` deferrals due ``lead`` s ahead, all at once; time their resumes from then."""
    delays_key = run.key("delays")
    run.marks.delete(delays_key)
    held = run.scalar(OWNED)
    due = datetime.now(timezone.utc) + timedelta(seconds=lead)
    run.store_deferrals("bench.probe", "arrive", [due] * n)
    run.wake_triggerers()
    wait_until(lambda: run.scalar(OWNED) >= held + n, timeout=lead, what=f"pick-up of {n}")
    ahead = (due - datetime.now(timezone.utc)).total_seconds()
    if ahead < 0.5:
        raise RuntimeError(f"pick-up took too long ({ahead:.1f}s ahead); raise --lead")
    if measured:
        run.profile("triggerer", "worker", tag="-drain")
    time.sleep(max(0.0, ahead - 0.1))
    window = run.cpu_window("triggerer", "worker")
    wait_until(
        lambda: run.marks.llen(delays_key) >= n,
        timeout=600,
        what=f"{n} resumed probes",
        interval=0.01,
    )
    elapsed = time.time() - due.timestamp()
    window_s = time.monotonic() - window.began
    run.profiled()
    used = window.stop()
    others = used.pop("others")
    used.pop("benchmark")
    delays = [float(mark.split()[0]) for mark in run.marks.lrange(delays_key, 0, -1)]
    return {
        "n": n,
        "seconds": elapsed,
        "per_second": n / elapsed,
        "picked_up_ahead_s": ahead,
        "late_p50": percentile(delays, 50),
        "late_p99": percentile(delays, 99),
        "late_max": max(delays),
        "others_pct": others,
        "cpu_ms_per_task": {role: pct / 100 * window_s / n * 1000 for role, pct in used.items()},
    }


def deferral(run: Run, n: int) -> dict[str, Any]:
    """``n`` tasks that each defer at once, through the worker (a warm-up first)."""
    batch(run, "bench.park", WARM_UP, measured=False, interval=0.01)
    result = batch(run, "bench.park", n, interval=0.01)
    result["stored"] = run.scalar(PARKED) - WARM_UP
    if result["stored"] != n:
        raise RuntimeError(f"{n} tasks deferred but {result['stored']} deferrals stored")
    return result


def main() -> int:
    parser = harness.arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, help="tasks per measurement (5000; 500 with --quick)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (2)")
    parser.add_argument(
        "--lead",
        type=float,
        default=10.0,
        help="drain: seconds between storing the deferrals and their due moment (10)",
    )
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    n = args.n or (500 if args.quick else 5000)
    capacity = 2 * (n + WARM_UP) + 1000
    busy: dict[str, float] = {}
    with Run("ratios", args) as run:
        run.start_worker(concurrency=args.concurrency)
        run.start_triggerer(capacity=capacity)
        # Drain before deferral: the parked deferrals stay, the drained ones are gone.
        busy["plain"] = readings.wait_quiet(args)
        plain = plain_throughput(run, n)
        drain(run, WARM_UP, min(args.lead, 3.0), measured=False)
        busy["drain"] = readings.wait_quiet(args)
        drained = drain(run, n, args.lead)
        busy["deferral"] = readings.wait_quiet(args)
        deferred = deferral(run, n)
    ratios = {
        "deferral": deferred["per_second"] / plain["per_second"],
        "drain": drained["per_second"] / plain["per_second"],
    }

    def cpu(r: dict[str, Any]) -> str:
        return ", ".join(f"{role} {value:.2f}" for role, value in r["cpu_ms_per_task"].items())

    def row(name: str, r: dict[str, Any], ratio: float | None) -> list[str]:
        return [
            name,
            f"{r['seconds']:.2f} s",
            f"{r['per_second']:,.0f}/s",
            "1.00x" if ratio is None else f"{ratio:.2f}x",
            "-" if ratio is None else f">= {TARGET_RATIO}x",
            "-" if ratio is None else verdict_at_least(ratio, TARGET_RATIO),
            cpu(r),
            f"{r['others_pct']:.0f} %",
        ]

    ms = 1000
    print_report(
        "ratios: deferral and drain throughput against plain tasks",
        {
            "machine": readings.machine(),
            "store": "PostgreSQL (local)",
            "broker": args.broker,
            "result backend": "Redis",
            "worker": f"`celery -A benchapp worker -P prefork -c {args.concurrency}` "
            "(--without-gossip --without-mingle)",
            "triggerer": f"`celery -A benchapp triggerer --capacity {capacity}` (holds them all)",
            "tasks": f"{n:,} per measurement, after {WARM_UP} of the same kind not counted",
            "drain": f"all due at one moment, stored {args.lead:g} s ahead, "
            f"held {drained['picked_up_ahead_s']:.1f} s before it",
            "machine busy before each (% of one core)": ", ".join(
                f"{name} {value:.0f} %" for name, value in busy.items()
            ),
        },
        [
            "measure",
            "wall time",
            "throughput",
            "ratio to plain",
            "target",
            "verdict",
            "CPU ms per task",
            "others (% of a core)",
        ],
        [
            row(f"plain: {n:,} `bench.plain`", plain, None),
            row(f"deferral: {n:,} `bench.park` deferred", deferred, ratios["deferral"]),
            row(f"drain: {n:,} due at once, resumed", drained, ratios["drain"]),
        ],
        [
            f"Drain burst lateness (resumed minus due, {n:,} due at one moment): "
            f"p50 {drained['late_p50'] * ms:.0f} ms, p99 {drained['late_p99'] * ms:.0f} ms, "
            f"max {drained['late_max'] * ms:.0f} ms.",
            f"Targets (issue #13, 1 and 2): deferral and drain throughput >= {TARGET_RATIO}x "
            "plain, same worker, same run. 'others' is CPU used by processes outside the "
            "benchmark meanwhile.",
        ],
    )
    readings.dump_json(
        args.json,
        {
            "n": n,
            "concurrency": args.concurrency,
            "plain": plain,
            "deferral": deferred,
            "drain": drained,
            "ratios": ratios,
            "target_ratio": TARGET_RATIO,
            "busy_before_pct": busy,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""latency: from a trigger's due moment to its resumed method starting on a worker.

Setup: PostgreSQL store, Redis broker and result backend, one real ``celery
-A benchapp worker`` (prefork, concurrency 2) and one real ``celery -A
benchapp triggerer --capacity N``. N deferrals on ``DateTimeTrigger``s due at a
steady RATE per second (1,000/s for 30 s: 30,000) are stored in bulk a few
seconds ahead and the triggerer picks them all up before the first is due.
Each resumed method (``bench.probe.arrive``) records ``time.time()`` minus
its event's due moment as its first act. Reported: p50 / p90 / p99 / max of
that delay, and the CPU each process used while the triggers fired.

With ``--rate-of-plain F`` the rate is not given but measured: first the
plain throughput of the same worker, in the same run (``bench.plain``, a batch
queued with the consumer cancelled, as *ratios* measures it), then the series
at F times that rate.

Targets: p50 <= 20 ms, p99 <= 100 ms at 1,000/s; p99 <= 50 ms at 0.3x plain
throughput (issue #13, 4).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import harness
import readings
from harness import Run, wait_until
from readings import percentile, print_report, verdict
from throughput import plain_throughput

TARGET_P50 = 0.020
TARGET_P99 = 0.100
TARGET_OF_PLAIN = 0.3  # issue #13, 4: at this fraction of plain throughput...
TARGET_OF_PLAIN_P99 = 0.050  # ...p99 at most this
WARM_UP = 1.0


def measure(args: Any, rate: int | None, seconds: float, concurrency: int) -> dict[str, Any]:
    """The series at ``rate``/s; ``None``: at --rate-of-plain times the measured plain rate."""
    with Run("latency", args) as run:
        run.start_worker(concurrency=concurrency)
        plain = None
        if rate is None:
            readings.wait_quiet(args)
            plain = plain_throughput(run, args.plain_n)
            rate = max(1, round(args.rate_of_plain * plain["per_second"]))
        n = int(rate * seconds)
        run.start_triggerer(capacity=n + int(rate * WARM_UP) + 1000)
        readings.wait_quiet(args)  # other people's work on this machine skews every figure
        first = datetime.now(timezone.utc) + timedelta(seconds=args.lead)
        # One second of the same load, 2 s before the measured series and not
        # counted: each worker process opens its store connection on its first
        # resume, and every process compiles its statements once.
        warm = first - timedelta(seconds=WARM_UP + 2)
        moments = [warm + timedelta(seconds=i / rate) for i in range(int(rate * WARM_UP))]
        moments += [first + timedelta(seconds=i / rate) for i in range(n)]
        run.store_deferrals("bench.probe", "arrive", moments)
        run.wake_triggerers()
        wait_until(
            lambda: (
                run.scalar("select count(*) from defer_triggers where triggerer_id is not null")
                == len(moments)
            ),
            timeout=args.lead,
            what="pick-up",
        )
        ahead = (warm - datetime.now(timezone.utc)).total_seconds()
        if ahead <= 0.5:
            raise RuntimeError(f"pick-up took too long ({ahead:.1f}s ahead); raise --lead")
        time.sleep(max(0.0, (first - datetime.now(timezone.utc)).total_seconds() - 0.1))
        run.profile("triggerer", *(["worker"] if args.profile_worker else []))
        window = run.cpu_window("triggerer", "worker")
        began = time.monotonic()
        delays_key = run.key("delays")
        wait_until(
            lambda: run.marks.llen(delays_key) >= len(moments),
            timeout=seconds + 120,
            what=f"{len(moments)} resumed probes",
            interval=0.2,
        )
        elapsed = time.monotonic() - began
        run.profiled()
        used = window.stop()
        marks = [d.split() for d in run.marks.lrange(delays_key, 0, -1)]
        # (seconds after the first due moment, delay), in due order: shows when delays grow
        timeline = sorted((float(due) - first.timestamp(), float(d)) for d, due in marks)
        delays = [d for at, d in timeline if at >= -0.0005]
        cold = [d for at, d in timeline if at < -0.0005]
        return {
            "n": n,
            "rate": rate,
            "plain": plain,
            "rate_of_plain": None if plain is None else args.rate_of_plain,
            "seconds": seconds,
            "elapsed": elapsed,
            "count": len(delays),
            "p50": percentile(delays, 50),
            "p90": percentile(delays, 90),
            "p99": percentile(delays, 99),
            "max": max(delays),
            "min": min(delays),
            "cold_max": max(cold),
            "cold_p50": percentile(cold, 50),
            "cpu": used,
            "timeline": timeline,
        }


def main() -> int:
    parser = harness.arguments(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rate",
        type=int,
        action="append",
        help="triggers due per second (repeatable; default 1000 and 150)",
    )
    parser.add_argument(
        "--rate-of-plain",
        type=float,
        metavar="F",
        help="instead of --rate: measure the worker's plain throughput first, in the same "
        f"run, then run the series at F times it (target at {TARGET_OF_PLAIN})",
    )
    parser.add_argument(
        "--plain-n",
        type=int,
        help="with --rate-of-plain: plain tasks in the measured batch (5000; 500 with --quick)",
    )
    parser.add_argument("--seconds", type=float, help="how long they keep coming (30)")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (2)")
    parser.add_argument(
        "--lead", type=float, default=15.0, help="seconds between storing and the first due moment"
    )
    parser.add_argument(
        "--profile-worker",
        action="store_true",
        help="with --profile, the worker too (slows it down a lot)",
    )
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if args.rate and args.rate_of_plain:
        parser.error("--rate and --rate-of-plain exclude each other")
    args.plain_n = args.plain_n or (500 if args.quick else 5000)
    rates: list[int | None] = [None]  # measured in the run
    if not args.rate_of_plain:
        rates = list(args.rate or ([200] if args.quick else [1000, 150]))
    seconds = args.seconds or (5.0 if args.quick else 30.0)
    results = [measure(args, rate, seconds, args.concurrency) for rate in rates]
    ms = 1000
    rows = []
    setup: dict[str, Any] = {}
    for r in results:
        checks = "-"
        due = f"{r['rate']:,}/s for {r['seconds']:.0f} s"
        if r["plain"] is not None:
            plain = r["plain"]
            rows.append(
                [f"plain: {plain['n']:,} `bench.plain`, one batch", "-"]
                + [f"{plain['per_second']:,.0f}/s"]
                + ["-"] * 5
                + [", ".join(f"{k} {v:.2f}" for k, v in plain["cpu_ms_per_task"].items())]
                + ["-"]
            )
            setup["plain throughput (same worker, same run)"] = (
                f"{plain['per_second']:,.0f}/s ({plain['n']:,} `bench.plain` queued with the "
                f"consumer cancelled, timed through; {plain['seconds']:.2f} s)"
            )
            setup["rate used"] = f"{r['rate_of_plain']:g} x plain = {r['rate']:,}/s"
            due = f"{r['rate']:,}/s ({r['rate_of_plain']:g}x plain) for {r['seconds']:.0f} s"
            checks = f"p99 {verdict(r['p99'], TARGET_OF_PLAIN_P99)}" + (
                "" if r["rate_of_plain"] == TARGET_OF_PLAIN else " (target at 0.3x)"
            )
        elif r["rate"] >= 1000:
            checks = f"p50 {verdict(r['p50'], TARGET_P50)}, p99 {verdict(r['p99'], TARGET_P99)}"
        rows.append(
            [
                due,
                f"{r['count']:,} / {r['n']:,}",
                f"{r['n'] / r['elapsed']:,.0f}/s",
                f"{r['p50'] * ms:.1f} ms",
                f"{r['p90'] * ms:.1f} ms",
                f"{r['p99'] * ms:.1f} ms",
                f"{r['max'] * ms:.1f} ms",
                f"{r['cold_p50'] * ms:.0f} / {r['cold_max'] * ms:.0f} ms",
                readings.describe_cpu(r["cpu"]),
                checks,
            ]
        )
    note = "Targets (1,000/s): p50 <= 20 ms, p99 <= 100 ms."
    if args.rate_of_plain:
        note = (
            f"Target (issue #13, 4): due -> resumed p99 <= {TARGET_OF_PLAIN_P99 * ms:.0f} ms at "
            f"{TARGET_OF_PLAIN}x the plain throughput of the same worker. The plain row's CPU "
            "is in ms per task."
        )
    note += " 'others' is CPU used by processes outside the benchmark meanwhile."
    print_report(
        "latency: due moment to resumed method",
        {
            "machine": readings.machine(),
            "store": "PostgreSQL (local)",
            "broker": args.broker,
            "result backend": "Redis",
            "worker": f"`celery -A benchapp worker -P prefork -c {args.concurrency}` "
            "(--without-gossip --without-mingle)",
            "triggerer": "`celery -A benchapp triggerer --capacity N+RATE+1000` (holds them all)",
            "load": "DateTimeTriggers due at a steady rate, stored ahead in bulk; "
            f"{WARM_UP:.0f} s of the same load first, not counted",
            **setup,
        },
        [
            "due",
            "resumed",
            "drained at",
            "p50",
            "p90",
            "p99",
            "max",
            "warm-up second: p50 / max",
            "CPU while firing (% of one core)",
            "targets",
        ],
        rows,
        [note],
    )
    readings.dump_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

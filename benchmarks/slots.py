"""slots: 10,000 tasks that each wait 60 s, on a worker with 4 slots.

Setup: PostgreSQL store, Redis broker and result backend, one real ``celery
-A benchapp worker`` (prefork, concurrency 4: the 4 slots) and one real
``celery -A benchapp triggerer --capacity 20000`` (the capacity must cover
every wait at once; with the default 1,000 the waits would take turns).

* deferred: ``bench.wait`` defers on a ``TimeDeltaTrigger(60 s)`` and resumes
  to finish. Wall time from the first send to the last finish.
* blocking sleep: the same tasks written with ``time.sleep(60)`` hold a slot
  each for the whole wait: N x 60 s / 4 slots. Computed, not run.
* retry polling: ``bench.poll`` checks the clock and calls
  ``self.retry(countdown=5)`` until its 60 s are up, Celery's usual way to
  wait without holding a slot. Run at a smaller N (1,000); its broker message
  count is every execution (each retry publishes one more message).

Target: the deferred 10,000 finish within 75 s.
"""

from __future__ import annotations

import time
from typing import Any

import harness
import readings
from harness import Run, wait_until
from readings import print_report, verdict

TARGET_WALL = 75.0


def run_waits(run: Run, task: str, n: int, kwargs: Any, budget: float) -> dict[str, Any]:
    run.marks.set(run.key("done"), 0)
    run.marks.set(run.key("executions"), 0)
    window = run.cpu_window("triggerer", "worker")
    began = time.monotonic()
    with run.app.producer_or_acquire() as producer:
        for i in range(n):
            run.app.send_task(task, args=(i,), kwargs=kwargs(), producer=producer)
    sent = time.monotonic() - began
    first_runs: list[float] = []  # when every task had run once (for bench.wait: deferred)

    def finished() -> bool:
        if not first_runs and run.counter("executions") >= n:
            first_runs.append(time.monotonic() - began)
        return run.counter() >= n

    wait_until(finished, timeout=budget, what=f"{n} {task}", interval=0.2)
    wall = time.monotonic() - began
    return {
        "n": n,
        "wall": wall,
        "sent_in": sent,
        "executions": run.counter("executions"),
        "all_ran_once": first_runs[0] if first_runs else None,
        "cpu": window.stop(),
    }


def main() -> int:
    parser = harness.arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, help="deferred tasks (10000)")
    parser.add_argument("--wait", type=float, help="seconds each task waits (60)")
    parser.add_argument("--retry-n", type=int, help="tasks in the retry-polling run (1000)")
    parser.add_argument("--countdown", type=float, help="retry polling interval (5)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    n = args.n or (200 if args.quick else 10_000)
    wait = args.wait or (5.0 if args.quick else 60.0)
    retry_n = args.retry_n or (50 if args.quick else 1000)
    countdown = args.countdown or (1.0 if args.quick else 5.0)
    slots = 4
    with Run("slots", args) as run:
        run.start_worker(concurrency=slots)
        run.start_triggerer(capacity=max(20_000, 2 * n))
        readings.wait_quiet(args)
        deferred = run_waits(run, "bench.wait", n, lambda: {"seconds": wait}, wait * 10 + 600)
        readings.wait_quiet(args)
        polled = run_waits(
            run,
            "bench.poll",
            retry_n,
            lambda: {"until": time.time() + wait, "countdown": countdown},
            wait * 10 + 600,
        )
    blocking = n * wait / slots
    rows = [
        [
            f"deferred ({n:,})",
            f"{deferred['wall']:.1f} s",
            # The store is PostgreSQL: its saving statement NOTIFYs, no notice is sent.
            f"{deferred['executions']:,} task (notices: none, NOTIFY)",
            f"{deferred['sent_in']:.1f} s",
            f"{deferred['all_ran_once']:.1f} s (all deferred)",
            f"{verdict(deferred['wall'], TARGET_WALL)} (<= {TARGET_WALL:.0f} s)"
            if (n, wait) == (10_000, 60.0)
            else "-",
        ],
        [
            f"blocking sleep ({n:,}, computed)",
            f"{blocking:,.0f} s ({blocking / 3600:.1f} h)",
            f"{n:,}",
            "-",
            "-",
            "-",
        ],
        [
            f"retry(countdown={countdown:g}) polling ({retry_n:,})",
            f"{polled['wall']:.1f} s",
            f"{polled['executions']:,} ({polled['executions'] / retry_n:.1f} per task)",
            f"{polled['sent_in']:.1f} s",
            "-",
            "-",
        ],
    ]
    print_report(
        f"slots: N tasks each waiting {wait:g} s on {slots} worker slots",
        {
            "machine": readings.machine(),
            "store": "PostgreSQL (local)",
            "broker": args.broker,
            "result backend": "Redis",
            "worker": f"`celery -A benchapp worker -P prefork -c {slots}` "
            "(--without-gossip --without-mingle)",
            "triggerer": f"`celery -A benchapp triggerer --capacity {max(20_000, 2 * n)}`",
            "CPU, deferred run (% of one core)": readings.describe_cpu(deferred["cpu"]),
            "CPU, retry run (% of one core)": readings.describe_cpu(polled["cpu"]),
        },
        [
            "pattern",
            "wall time, first send to last finish",
            "broker messages",
            "sending took",
            "all had run once",
            "target",
        ],
        rows,
        [f"Target (N = 10,000, 60 s waits): the deferred run within {TARGET_WALL:.0f} s."],
    )
    readings.dump_json(args.json, {"deferred": deferred, "retry": polled, "blocking": blocking})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""hold: what one triggerer costs while it holds N triggers (a coroutine each) for a day.

Timers are data: a far ``DateTimeTrigger`` stays a row in the store and costs
a triggerer nothing (``timers.py`` measures that). Here the N are stored as a
trigger that is not a pure timer is, so the triggerer claims and runs them all.

Setup: PostgreSQL store; Redis broker (its notices and revoke listeners are
connected); no worker (nothing fires). N deferrals on ``DateTimeTrigger``s due
a day from now are stored in bulk, then one real ``celery -A benchapp
triggerer --capacity N`` starts. Measured: the pick-up time (process start to
all N rows owned by it), then, from 2 s later, its CPU over a window (30 s;
user + system time of the process from /proc/<pid>/stat, as a percentage of
one core), its RSS and peak RSS, and how long a clean stop (SIGTERM: every
trigger cancelled and handed back) takes.

Targets at N = 100,000: idle CPU <= 2 % of a core, RSS <= 600 MiB, pick-up <= 60 s.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import harness
import readings
from harness import Run, wait_until
from readings import mib, print_report, verdict

TARGET_CPU = 2.0  # % of one core
TARGET_RSS = 600 * 2**20
TARGET_PICKUP = 60.0
SETTLE = 2.0


def measure(args: Any, n: int, window: float) -> dict[str, Any]:
    with Run("hold", args) as run:
        due = datetime.now(timezone.utc) + timedelta(days=1)
        began = time.monotonic()
        # Held, not left as rows: stored as triggers that are not pure timers are (a far
        # DateTimeTrigger stays a row in the store; timers.py measures that).
        run.store_deferrals("bench.probe", "arrive", [due] * n, as_timers=False)
        inserted = time.monotonic() - began

        began = time.monotonic()
        run.start_triggerer(capacity=n)
        pid = run.pid("triggerer")

        def owned() -> bool:
            run._check_alive("triggerer")
            held = run.scalar("select count(*) from defer_triggers where triggerer_id is not null")
            return bool(held == n)

        wait_until(owned, timeout=600, what=f"the triggerer to own {n} triggers", interval=0.1)
        pickup = time.monotonic() - began
        pickup_cpu = readings.cpu_seconds(pid)
        time.sleep(SETTLE)
        cpu_before = readings.cpu_seconds(pid)
        time.sleep(window)
        idle = (readings.cpu_seconds(pid) - cpu_before) / window * 100
        rss, peak = readings.memory(pid)
        stopping = run.stop("triggerer", timeout=120)
        handed_back = run.scalar("select count(*) from defer_triggers where triggerer_id is null")
        return {
            "n": n,
            "insert_s": inserted,
            "pickup_s": pickup,
            "pickup_cpu_s": pickup_cpu,
            "idle_cpu_pct": idle,
            "rss": rss,
            "peak_rss": peak,
            "stop_s": stopping,
            "handed_back": handed_back,
            "window_s": window,
        }


def main() -> int:
    parser = harness.arguments(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--n",
        type=int,
        action="append",
        help="number of triggers (repeatable; default 10000 and 100000)",
    )
    parser.add_argument("--window", type=float, help="seconds of idle measurement (30)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    sizes = args.n or ([2000] if args.quick else [10_000, 100_000])
    window = args.window or (5.0 if args.quick else 30.0)
    results = [measure(args, n, window) for n in sizes]
    rows = []
    for r in results:
        checks = ""
        if r["n"] >= 100_000:
            checks = ", ".join(
                [
                    f"CPU {verdict(r['idle_cpu_pct'], TARGET_CPU)}",
                    f"RSS {verdict(r['rss'], TARGET_RSS)}",
                    f"pick-up {verdict(r['pickup_s'], TARGET_PICKUP)}",
                ]
            )
        rows.append(
            [
                f"{r['n']:,}",
                f"{r['pickup_s']:.1f} s",
                f"{r['pickup_cpu_s']:.1f} s",
                f"{r['idle_cpu_pct']:.2f} %",
                mib(r["rss"]),
                mib(r["peak_rss"]),
                f"{r['stop_s']:.1f} s ({r['handed_back']:,} handed back)",
                checks or "-",
            ]
        )
    print_report(
        "hold: one triggerer holding N timer triggers",
        {
            "machine": readings.machine(),
            "store": "PostgreSQL (local)",
            "broker": args.broker,
            "worker": "none (nothing fires)",
            "triggerer": "`celery -A benchapp triggerer --capacity N`, defaults otherwise "
            "(heartbeat 5 s, health timeout 30 s, uvloop)",
            "idle window": f"{window:.0f} s, starting {SETTLE:.0f} s after pick-up",
        },
        [
            "N",
            "pick-up",
            "CPU during pick-up",
            "idle CPU (of one core)",
            "RSS",
            "peak RSS",
            "clean stop",
            "targets (N=100k)",
        ],
        rows,
        ["Targets at N = 100,000: idle CPU <= 2 % of a core, RSS <= 600 MiB, pick-up <= 60 s."],
    )
    readings.dump_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""timers: what K triggerers cost while they hold N pending timers, and how late a due one fires.

Setup: PostgreSQL store, Redis broker and result backend, one real ``celery
-A benchapp worker`` (prefork, concurrency 2) and K real ``celery -A benchapp
triggerer`` processes (``triggerer-1`` .. ``triggerer-K``, started together,
``--capacity`` N plus the due batch each, so that today's triggerer, which
claims up to its capacity, can hold them all). N deferrals on
``DateTimeTrigger``s spread over the 24 hours that start a day from now are
stored in bulk first (the set-up time is printed); then the triggerers start
and the benchmark waits until every trigger they may claim now is owned (a
timer is claimed only within ``defer_timer_horizon`` of its moment, so the N
stay rows in the store) and one scan more. Measured:

* RSS and peak RSS of each triggerer (from /proc) after the idle window;
* idle CPU of ``triggerer-1`` (percent of one core) over a quiet window with
  nothing due, 30 s by default: one reconciliation period (a triggerer checks
  what it holds against the store once per ``defer_triggerer_health_timeout``,
  30 s), so that a window holds one, not one or none;
* with K > 1, each triggerer's share of the work it claimed: the due batch (percent of it;
  the N far timers are rows nobody owns);
* lateness: a batch of extra timers (1,000 over 10 s) due a few seconds
  ahead, fired through the worker: each resumed ``bench.probe.arrive``
  records its start minus its due moment.

With --profile, the triggerers are profiled in three phases (pick-up, idle
window, due batch), each to a file of its own; their figures then include
py-spy's cost.

The plain-Celery baseline, same run: the idle worker's RSS and CPU in the same
window, and ``bench.stamp`` tasks sent by the benchmark at the same moments as
the due batch (start minus scheduled moment: the worker's own lateness floor).

Targets (issue #13, 5): 1,000,000 timers in one triggerer: RSS <= 300 MiB,
idle CPU <= 1 % of a core, late p99 <= 50 ms; with 4 triggerers each holds 25 % +/- 5 %.
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import harness
import readings
from harness import Run, wait_until
from readings import percentile

TARGET_N = 1_000_000
TARGET_RSS_MIB = 300.0
TARGET_IDLE_CPU = 1.0  # % of one core
TARGET_LATE_P99_MS = 50.0
TARGET_SHARE_K = 4
SHARE_TOLERANCE = 5.0  # percentage points
WARM_UP = 20  # probes resumed before measuring: the pool processes' store connections
SETTLE = 2.0
OWNED = "select count(*) from defer_triggers where triggerer_id is not null"


#: Triggers a triggerer may claim now: not timers, or timers within the default horizon.
CLAIMABLE = (
    "select count(*) from defer_triggers "
    "where wakes_at is null or wakes_at < now() at time zone 'utc' + interval '60 seconds'"
)

#: The triggerers' periodic scan (defer_triggerer_heartbeat), plus a margin.
SCAN = 6.0


def wait_owned(
    run: Run, roles: list[str], n: int, began: float, timeout: float, stall: float
) -> dict[str, Any]:
    """Wait until ``n`` triggers are owned, ownership stops growing for ``stall`` s, or timeout.

    ``began`` (monotonic) is when the triggerers were started. A triggerer
    that claims only some of them (a horizon, a fair share) is not an error:
    what it owns is reported.
    """
    last, changed = -1, began
    interval = 0.2 if n <= 100_000 else 1.0  # a count over a million rows costs the store
    while True:
        for role in roles:
            run.processes.check_alive(role)
        owned = run.scalar(OWNED)
        now = time.monotonic()
        if owned != last:
            last, changed = owned, now
        reason = ""
        if owned >= n:
            reason = "all owned"
        elif now - changed > stall:
            reason = f"no new claims for {stall:g} s"
        elif now - began > timeout:
            reason = f"timeout ({timeout:g} s)"
        if reason:
            return {"owned": owned, "seconds": changed - began, "ended": reason}
        time.sleep(interval)


def resume_probes(run: Run, moments: list[datetime], lead_end: datetime) -> dict[str, Any]:
    """Store probes due at ``moments``, wake the triggerers; wait until all resumed.

    Returns the lateness (resumed minus due) of each, in seconds, and how many
    a triggerer owned before ``lead_end`` (just before the first is due).
    """
    delays_key = run.key("delays")
    run.marks.delete(delays_key)
    held = run.scalar(OWNED)
    run.store_deferrals("bench.probe", "arrive", moments)
    run.wake_triggerers()
    seconds_left = (lead_end - datetime.now(timezone.utc)).total_seconds()
    # Reported, not fatal: a triggerer may claim timers only as they come due.
    with contextlib.suppress(AssertionError):
        wait_until(
            lambda: run.scalar(OWNED) >= held + len(moments),
            timeout=max(0.0, seconds_left),
            what="pick-up",
            interval=0.02,
        )
    picked_up = run.scalar(OWNED) - held
    owned_by = run.owned()  # the share each triggerer took of the batch (nothing else is owned)
    spread = (moments[-1] - moments[0]).total_seconds()
    wait_until(
        lambda: run.marks.llen(delays_key) >= len(moments),
        timeout=spread + 120,
        what=f"{len(moments)} resumed probes",
        interval=0.05,
    )
    marks = [mark.split() for mark in run.marks.lrange(delays_key, 0, -1)]
    # (seconds after the first due moment, delay), in due order: shows a stall as a cluster
    first = moments[0].timestamp()
    timeline = sorted((float(due) - first, float(delay)) for delay, due in marks)
    return {
        "delays": [delay for _at, delay in timeline],
        "timeline": timeline,
        "picked_up_before_due": picked_up,
        "owned_by": owned_by,
    }


def plain_baseline(run: Run, moments: list[datetime]) -> list[float]:
    """``bench.stamp`` sent by the benchmark at each moment; its start minus that moment."""
    delays_key = run.key("delays")
    run.marks.delete(delays_key)
    with run.app.producer_or_acquire() as producer:
        for moment in moments:
            at = moment.timestamp()
            time.sleep(max(0.0, at - time.time()))
            run.app.send_task("bench.stamp", args=(at,), producer=producer)
    wait_until(
        lambda: run.marks.llen(delays_key) >= len(moments),
        timeout=120,
        what=f"{len(moments)} plain tasks",
        interval=0.05,
    )
    return [float(mark) for mark in run.marks.lrange(delays_key, 0, -1)]


def schedule(first: datetime, count: int, spread: float) -> list[datetime]:
    return [first + timedelta(seconds=i * spread / count) for i in range(count)]


def measure(args: Any, n: int, k: int, due_batch: int, spread: float) -> dict[str, Any]:
    capacity = args.capacity_per_triggerer or n + due_batch + WARM_UP
    result: dict[str, Any] = {"n": n, "triggerers": k, "capacity_per_triggerer": capacity}
    with Run("timers", args) as run:
        run.start_worker(concurrency=args.concurrency)
        began = time.monotonic()
        run.store_deferrals(
            "bench.probe",
            "arrive",
            schedule(datetime.now(timezone.utc) + timedelta(days=1), n, 86400.0),
        )
        result["setup_s"] = time.monotonic() - began
        # A store that gathered N timers over time has been vacuumed and analysed as they
        # came; one filled in bulk has not, and autovacuum would then run through the
        # measurement (PostgreSQL at 54 % of a core in the due window at 1,000,000).
        began = time.monotonic()
        run.vacuum("defer_triggers", "defer_deferrals")
        result["vacuum_s"] = time.monotonic() - began
        began = time.monotonic()
        roles = run.start_triggerers(k, capacity)
        run.profile(*roles, tag="-pickup")  # with --profile: each phase of its own
        # Timers are data: a triggerer claims only those due within defer_timer_horizon
        # (60 s), so the N a day ahead stay rows; wait for what is claimable now.
        claimable = run.scalar(CLAIMABLE)
        result["claimable"] = claimable
        result["pickup"] = wait_owned(run, roles, claimable, began, args.pickup_timeout, args.stall)
        time.sleep(SCAN)  # every triggerer has scanned the store at least once
        run.profiled()
        # Warm-up: every pool process opens its store connection on its first resume.
        soon = datetime.now(timezone.utc) + timedelta(seconds=2)
        resume_probes(run, schedule(soon, WARM_UP, 1.0), soon)
        time.sleep(SETTLE)
        result["busy_before_pct"] = readings.wait_quiet(args)
        run.profile(*roles, tag="-idle")
        window = run.cpu_window(*roles, "worker")
        time.sleep(args.window)
        result["idle_cpu"] = window.stop()
        run.profiled()
        result["rss"] = {role: readings.memory(run.pid(role)) for role in roles}
        worker_tree = readings.descendants(run.pid("worker"))
        result["worker_rss"] = sum(readings.memory(pid)[0] for pid in worker_tree)
        result["owned_by"] = run.owned()
        result["busy_before_due_pct"] = readings.wait_quiet(args)
        first = datetime.now(timezone.utc) + timedelta(seconds=args.lead)
        run.profile(*roles, tag="-due")
        window = run.cpu_window(*roles, "worker")
        result["late"] = resume_probes(run, schedule(first, due_batch, spread), first)
        result["due_cpu"] = window.stop()
        run.profiled()
        first = datetime.now(timezone.utc) + timedelta(seconds=1)
        window = run.cpu_window(*roles, "worker")
        result["plain_late"] = plain_baseline(run, schedule(first, due_batch, spread))
        result["plain_cpu"] = window.stop()
    return result


def summary(r: dict[str, Any], window: float) -> dict[str, Any]:
    """The figures of one run, the JSON's top-level keys first."""
    k, n = r["triggerers"], r["n"]
    ms, mib = 1000, 2**20
    delays, plain = r["late"]["delays"], r["plain_late"]
    # The work a triggerer holds is what it claimed: with timers as data, the N far timers
    # are rows nobody owns, so the shares are of the due batch as the triggerers claimed it.
    batch_owned = r["late"]["owned_by"]
    claimed = sum(batch_owned.values()) or 1
    shares = {role: count / claimed * 100 for role, count in batch_owned.items()}
    return {
        "rss_mib": max(rss for rss, _peak in r["rss"].values()) / mib,
        "idle_cpu_pct": r["idle_cpu"]["triggerer-1"],
        "share_min_pct": min(shares.values()) if k > 1 else None,
        "share_max_pct": max(shares.values()) if k > 1 else None,
        "late_ms_p99": percentile(delays, 99) * ms,
        "late_ms_p50": percentile(delays, 50) * ms,
        "late_ms_max": max(delays) * ms,
        "n": n,
        "triggerers": k,
        "capacity_per_triggerer": r["capacity_per_triggerer"],
        "setup_s": r["setup_s"],
        "pickup_s": r["pickup"]["seconds"],
        "owned": r["pickup"]["owned"],
        "claimable": r["claimable"],
        "pickup_ended": r["pickup"]["ended"],
        "rss_mib_each": {role: rss / mib for role, (rss, _peak) in r["rss"].items()},
        "peak_rss_mib_each": {role: peak / mib for role, (_rss, peak) in r["rss"].items()},
        "idle_window_cpu_pct": r["idle_cpu"],
        "idle_window_s": window,
        "busy_before_pct": r["busy_before_pct"],
        "busy_before_due_pct": r["busy_before_due_pct"],
        "due_window_cpu_pct": r["due_cpu"],
        "plain_window_cpu_pct": r["plain_cpu"],
        "shares_pct": shares,
        "due_batch": len(delays),
        "due_picked_up_before_due": r["late"]["picked_up_before_due"],
        "plain_late_ms_p50": percentile(plain, 50) * ms,
        "plain_late_ms_p99": percentile(plain, 99) * ms,
        "plain_late_ms_max": max(plain) * ms,
        "worker_rss_mib": r["worker_rss"] / mib,
        "late_timeline": r["late"]["timeline"],
    }


def main() -> int:
    parser = harness.arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, help="pending timers (100000; 5000 with --quick)")
    parser.add_argument("--triggerers", type=int, default=1, help="triggerer processes (1)")
    parser.add_argument(
        "--capacity-per-triggerer",
        type=int,
        help="each triggerer's --capacity (N + the due batch + 20: each can hold everything)",
    )
    parser.add_argument(
        "--due-batch", type=int, help="extra timers fired for the lateness (1000; 200 --quick)"
    )
    parser.add_argument(
        "--due-spread",
        type=float,
        help="seconds over which the due batch comes due, evenly (10; 4 with --quick); "
        "0: all at one moment (a burst: then the lateness is the worker's drain time)",
    )
    parser.add_argument(
        "--lead", type=float, default=5.0, help="seconds from storing the due batch to its first"
    )
    parser.add_argument(
        "--window",
        type=float,
        help="seconds of the idle CPU window (30, a reconciliation period; 10 with --quick)",
    )
    parser.add_argument(
        "--pickup-timeout", type=float, default=900.0, help="most seconds to wait for ownership"
    )
    parser.add_argument(
        "--stall",
        type=float,
        default=30.0,
        help="stop waiting for ownership after this many seconds without a new claim",
    )
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (2)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    n = args.n or (5000 if args.quick else 100_000)
    k = args.triggerers
    due_batch = args.due_batch or (200 if args.quick else 1000)
    spread = args.due_spread if args.due_spread is not None else (4.0 if args.quick else 10.0)
    args.window = args.window or (10.0 if args.quick else 30.0)
    s = summary(measure(args, n, k, due_batch, spread), args.window)
    report(args, s, spread)
    readings.dump_json(args.json, s)
    return 0


def report(args: Any, s: dict[str, Any], spread: float) -> None:
    n, k = s["n"], s["triggerers"]
    at_n = "" if n >= TARGET_N else " at this N"
    verdict = readings.verdict

    def each(values: dict[str, float], unit: str, digits: int = 0) -> str:
        if len(values) == 1:
            return ""
        return " (" + ", ".join(f"{r[10:]}: {v:,.{digits}f}{unit}" for r, v in values.items()) + ")"

    if k > 1:
        fair = 100 / k
        low, high = fair - SHARE_TOLERANCE, fair + SHARE_TOLERANCE
        share_ok = s["share_min_pct"] >= low and s["share_max_pct"] <= high
        share = [
            "share of the due batch claimed",
            f"min {s['share_min_pct']:.1f} %, max {s['share_max_pct']:.1f} %"
            + each(s["shares_pct"], " %", 1),
            "-",
            f"{fair:g} % +/- {SHARE_TOLERANCE:g} % each",
            ("met" if share_ok else "missed") + ("" if k == TARGET_SHARE_K else " at this K"),
        ]
    else:
        share = ["share of the due batch claimed", "- (one triggerer)", "-", "-", "-"]
    peak = max(s["peak_rss_mib_each"].values())
    idle_window = s["idle_window_cpu_pct"]
    rows = [
        ["set-up: N timers stored in bulk (COPY)", f"{s['setup_s']:.1f} s", "-", "-", "-"],
        [
            "pick-up: triggers owned, from the triggerers' start",
            f"{s['owned']:,} (claimable now: {s['claimable']:,}; the other "
            f"{n - s['claimable']:,} of the {n:,} stay rows) after {s['pickup_s']:.1f} s",
            "-",
            "-",
            "-",
        ],
        [
            "RSS of a triggerer" + (" (the largest)" if k > 1 else ""),
            f"{s['rss_mib']:,.0f} MiB, peak {peak:,.0f} MiB" + each(s["rss_mib_each"], " MiB"),
            f"idle worker, all {args.concurrency + 1} processes: {s['worker_rss_mib']:,.0f} MiB",
            f"<= {TARGET_RSS_MIB:g} MiB at {TARGET_N:,} in one",
            verdict(s["rss_mib"], TARGET_RSS_MIB) + at_n,
        ],
        [
            f"idle CPU of triggerer-1 over {s['idle_window_s']:g} s, nothing due",
            f"{s['idle_cpu_pct']:.2f} % of a core"
            + each({r: v for r, v in idle_window.items() if r.startswith("trigg")}, " %", 2)
            + f" (others meanwhile: {idle_window['others']:.0f} % of a core)",
            f"idle worker: {idle_window['worker']:.2f} %",
            f"<= {TARGET_IDLE_CPU:g} %",
            verdict(s["idle_cpu_pct"], TARGET_IDLE_CPU) + at_n,
        ],
        share,
        [
            f"late: {s['due_batch']:,} due over {spread:g} s, due -> resumed p50 / p99 / max",
            f"{s['late_ms_p50']:.1f} / {s['late_ms_p99']:.1f} / {s['late_ms_max']:.1f} ms "
            f"(others meanwhile: {s['due_window_cpu_pct']['others']:.0f} % of a core)",
            f"`bench.stamp` sent at each moment: {s['plain_late_ms_p50']:.1f} / "
            f"{s['plain_late_ms_p99']:.1f} / {s['plain_late_ms_max']:.1f} ms "
            f"(others: {s['plain_window_cpu_pct']['others']:.0f} %)",
            f"p99 <= {TARGET_LATE_P99_MS:g} ms",
            verdict(s["late_ms_p99"], TARGET_LATE_P99_MS) + at_n,
        ],
    ]
    readings.print_report(
        f"timers: {n:,} pending timers held by {k} triggerer{'s' if k > 1 else ''}",
        {
            "machine": readings.machine(),
            "store": "PostgreSQL (local)",
            "broker": args.broker,
            "result backend": "Redis",
            "worker": f"`celery -A benchapp worker -P prefork -c {args.concurrency}` "
            "(--without-gossip --without-mingle)",
            "triggerers": f"{k} x `celery -A benchapp triggerer --capacity "
            f"{s['capacity_per_triggerer']}`, started together after the timers were stored",
            "timers": f"{n:,} DateTimeTriggers spread over the 24 h starting a day from now",
            "due batch": f"{s['due_batch']:,} more, due evenly over {spread:g} s from "
            f"{args.lead:g} s after storing; {s['due_picked_up_before_due']:,} owned before the "
            f"first was due; {WARM_UP} resumed before, not counted",
            "machine busy before the idle window / the due batch": f"{s['busy_before_pct']:.0f} "
            f"/ {s['busy_before_due_pct']:.0f} % of a core",
        },
        ["measure", "timers (triggerers)", "plain Celery, same run", "target", "verdict"],
        rows,
        [
            f"Targets (issue #13, 5): {TARGET_N:,} timers in one triggerer: RSS <= "
            f"{TARGET_RSS_MIB:g} MiB, idle CPU <= {TARGET_IDLE_CPU:g} % of a core, late p99 <= "
            f"{TARGET_LATE_P99_MS:g} ms; with {TARGET_SHARE_K} triggerers each holds 25 % +/- "
            f"{SHARE_TOLERANCE:g} %. 'at this N' / 'at this K': measured below the target's size. "
            "'others' is CPU used by processes outside the benchmark."
        ],
    )


if __name__ == "__main__":
    raise SystemExit(main())

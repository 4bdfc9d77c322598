"""Fault tests: triggerers killed, paused mid-fire, or partitioned, with 1,000 tasks each.

Every scenario runs real ``celery -A faultapp`` processes (tests/faults/faultapp.py) on a
PostgreSQL store and a Redis broker, kills with ``SIGKILL``, and counts at the end how often
each task's resumed method completed: every one exactly once, or the test fails.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.faultkit import FaultRun, fault_run
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

TASKS = 1000


@pytest.fixture
def run(
    request: pytest.FixtureRequest, postgres_url: str, redis_url: str, tmp_path: Path
) -> Iterator[FaultRun]:
    name = request.node.name.removeprefix("test_")
    with fault_run(
        name, postgres_url=postgres_url, redis_url=redis_url, broker_url=None, logdir=tmp_path
    ) as fault:
        failed_before = request.session.testsfailed
        yield fault
        if request.session.testsfailed > failed_before:
            print(fault.tails(60))


def held_by_one(run: FaultRun) -> str:
    owners = run.held_by()
    if owners.get(None) or len(owners) != 1 or sum(owners.values()) != TASKS:
        return ""
    return str(next(iter(owners)))


def assert_exactly_once(run: FaultRun) -> None:
    tally = run.tally()
    assert (tally.lost, tally.duplicated) == (0, 0), f"{tally.summary()}\n{run.tails()}"


@pytest.mark.timeout(300)
def test_triggerer_killed_holding_triggers(run: FaultRun) -> None:
    run.start_worker()
    run.start_beat()
    run.start_triggerer("triggerer-a")
    run.send(TASKS, after=15)
    run.wait_deferred()
    wait_until(lambda: held_by_one(run), 30, "triggerer a to hold every trigger")
    run.kill("triggerer-a")
    run.start_triggerer("triggerer-b")
    run.wait_all_done()
    assert_exactly_once(run)


@pytest.mark.timeout(300)
def test_triggerer_killed_between_storing_events_and_publishing(
    run: FaultRun, tmp_path: Path
) -> None:
    """Events stored (rows ``firing``), resumes never sent: the sweep sends them."""
    paused = tmp_path / "paused-before-publish"
    run.start_worker()
    run.start_beat()
    run.start_triggerer("triggerer-a", FAULT_HANG_BEFORE_PUBLISH=str(paused))
    run.send(TASKS, after=10)
    run.wait_deferred()
    wait_until(lambda: held_by_one(run), 30, "triggerer a to hold every trigger")
    wait_until(paused.exists, 30, "triggerer a to store events and pause before publishing")
    stored_unsent = int(paused.read_text())
    assert stored_unsent > 0 and run.states()["firing"] >= stored_unsent
    run.kill("triggerer-a")
    run.start_triggerer("triggerer-b")
    run.wait_all_done()
    assert_exactly_once(run)


@pytest.mark.timeout(300)
def test_two_triggerers_running_the_same_triggers(run: FaultRun, tmp_path: Path) -> None:
    """A partitioned triggerer keeps firing what another took over: each task resumes once."""
    partition = tmp_path / "partitioned"
    run.start_worker()
    run.start_beat()
    run.start_triggerer("triggerer-a", FAULT_PARTITIONED=str(partition))
    run.send(TASKS, after=25)  # time for a to claim, then b to take over, before they fire
    run.wait_deferred()
    owner_a = wait_until(lambda: held_by_one(run), 30, "triggerer a to hold every trigger")
    partition.touch()  # from now on a's heartbeats never reach the store
    run.start_triggerer("triggerer-b")
    owner_b = wait_until(
        lambda: (owner := held_by_one(run)) != owner_a and owner, 30, "b to take a's triggers"
    )
    assert owner_b != owner_a
    run.wait_all_done()
    assert_exactly_once(run)
    # Both really ran (and fired) the same triggers.
    fired_a, fired_b = run.log_count("triggerer-a", "fired"), run.log_count("triggerer-b", "fired")
    assert fired_a > 0 and fired_b > 0, (fired_a, fired_b)


@pytest.mark.timeout(300)
def test_load_spreads_within_capacity_and_a_clean_stop_hands_over_at_once(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    """Two triggerers of capacity 600 share 1,000 triggers; SIGTERM releases at once.

    The health timeout is 30 s here, so a hand-over seen within 5 s of the stop can only
    be the stopping triggerer's own release, not a takeover of a silent one.
    """
    with fault_run(
        "two_triggerers_capacity_600_and_a_clean_stop",
        postgres_url=postgres_url,
        redis_url=redis_url,
        broker_url=None,
        logdir=tmp_path,
        FAULT_HEALTH_TIMEOUT="30",
    ) as run:
        run.start_worker()
        run.start_beat()
        run.start_triggerer("triggerer-a", "--capacity", "600")
        run.start_triggerer("triggerer-b", "--capacity", "600")
        run.send(TASKS, after=35)
        run.wait_deferred()

        def spread() -> list[int]:
            owners = run.held_by()
            counts = sorted(n for owner, n in owners.items() if owner is not None)
            return counts if sum(counts) == TASKS and len(counts) == 2 else []

        counts = wait_until(spread, 30, "both triggerers to hold every trigger between them")
        assert all(0 < n <= 600 for n in counts), counts
        owners_before = set(run.held_by())
        run.stop("triggerer-a")  # SIGTERM: a clean stop
        stopped_at = time.monotonic()

        def b_took_what_it_can() -> bool:
            owners = run.held_by()
            return set(owners) - {None} != owners_before and max(owners.values()) == 600

        wait_until(b_took_what_it_can, 5, "b to fill its 600 slots from a's released triggers")
        assert time.monotonic() - stopped_at < 10  # far below the 30 s health timeout
        assert run.held_by()[None] == TASKS - 600  # the rest wait, unowned, for capacity
        run.start_triggerer("triggerer-c", "--capacity", "600")
        run.wait_all_done()
        assert_exactly_once(run)

"""Issue #4: deferrable tasks inside Celery's canvas and task options, with real processes.

A class-scoped fixture starts ``celery -A proj worker`` (prefork pool,
concurrency 2, so time limits work; task events on with ``-E``; consuming the
default queue and a second one, ``other``), ``celery -A proj triggerer`` and
``celery -A proj beat`` (app: ``tests/integration/proj.py``, machinery:
``tests/integration/harness.py``) in two configurations:

* ``redis``: broker Redis, result backend Redis, store PostgreSQL;
* ``db``: broker RabbitMQ, result backend PostgreSQL (``db+postgresql``), store PostgreSQL.

Each test proves that a deferral is invisible to Celery's machinery around
the task: chains, groups, chords, callbacks, retries, time limits, revoke,
routing, priority, headers, ``ignore_result``, monitoring events and both
task protocols behave as if the task had run without deferring.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from celery import chain, chord, group
from celery.exceptions import SoftTimeLimitExceeded
from celery.result import AsyncResult

from celery_defer import DEFERRED, TriggerTimeout
from tests.integration.harness import Cluster, running_cluster
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIGS = {
    "redis": "broker Redis, results Redis, store PostgreSQL",
    "db": "broker RabbitMQ, results PostgreSQL (db+postgresql), store PostgreSQL",
}

#: prefork (time limits need it), two slots, task events for the events test.
WORKER = ("--pool", "prefork", "--concurrency", "2", "-E")


@pytest.fixture(scope="class", params=list(CONFIGS), ids=list(CONFIGS))
def cluster(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
    redis_url: str,
) -> Iterator[Cluster]:
    config = request.param
    # Check (or skip for) every service before creating anything.
    amqp_url = request.getfixturevalue("amqp_url") if config == "db" else None
    with running_cluster(
        config,
        broker="redis" if config == "redis" else "amqp",
        backend="redis" if config == "redis" else "db",
        postgres_url=postgres_url,
        redis_url=redis_url,
        amqp_url=amqp_url,
        logdir=tmp_path_factory.mktemp(f"canvas-{config}"),
        worker_options=WORKER,
        extra_queues=("other",),
    ) as cluster:
        yield cluster


@pytest.fixture(autouse=True)
def _log_tails_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    if "cluster" not in request.fixturenames:
        yield
        return
    cluster = request.getfixturevalue("cluster")
    failed_before = request.session.testsfailed
    yield
    if request.session.testsfailed > failed_before:
        print(cluster.log_tails(lines=80))


def sig(cluster: Cluster, name: str, *args: Any, **kwargs: Any) -> Any:
    """A signature of a proj task on the cluster's client app."""
    return cluster.app.signature(name, args=args, kwargs=kwargs)


def marker() -> str:
    return f"cdit:{uuid.uuid4().hex}"


def counter(cluster: Cluster, key: str) -> int:
    return int(cluster.marker_redis.get(key) or 0)


def stays(predicate: Any, seconds: float, interval: float = 0.05) -> bool:
    """True if ``predicate()`` holds for the whole of ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(interval)
    return bool(predicate())


@pytest.mark.timeout(90)
class TestCanvasReal:
    # -- 1. chains (and 11. protocol 1) ------------------------------------------

    def test_chain_with_a_deferring_step_equals_the_plain_chain(self, cluster: Cluster) -> None:
        plain = chain(
            sig(cluster, "proj.add", 1), sig(cluster, "proj.double"), sig(cluster, "proj.add")
        )
        deferring = chain(
            sig(cluster, "proj.add", 1), sig(cluster, "proj.defer_double"), sig(cluster, "proj.add")
        )
        expected = cluster.get(plain.apply_async())
        result = deferring.apply_async()
        assert expected == (1 + 1) * 2 + 1
        assert cluster.get(result) == expected
        # The deferred middle step ended SUCCESS under its own id, with its own value.
        middle = result.parent
        assert middle is not None
        assert middle.state == "SUCCESS"
        assert middle.result == 4

    @pytest.mark.parametrize("where", ["start", "middle", "end"])
    def test_deferring_step_anywhere_in_a_longer_chain(self, cluster: Cluster, where: str) -> None:
        def steps(step: str) -> list[Any]:
            # Fresh signatures each time: a chain freezes (gives ids to) its steps.
            def add(*args: int) -> Any:
                return sig(cluster, "proj.add", *args)

            if where == "start":
                return [sig(cluster, step, 3), add(), add(2)]
            if where == "middle":
                return [add(1), add(), sig(cluster, step), add(2), add()]
            return [add(1), add(), sig(cluster, step)]

        expected = cluster.get(chain(*steps("proj.double")).apply_async())
        got = cluster.get(chain(*steps("proj.defer_double")).apply_async())
        assert got == expected

    def test_a_step_that_defers_several_times(self, cluster: Cluster) -> None:
        plain = chain(
            sig(cluster, "proj.add", 1), sig(cluster, "proj.add", 3), sig(cluster, "proj.add")
        )
        deferring = chain(
            sig(cluster, "proj.add", 1),
            sig(cluster, "proj.defer_then_add", times=3),
            sig(cluster, "proj.add"),
        )
        expected = cluster.get(plain.apply_async())
        assert expected == 1 + 1 + 3 + 1
        assert cluster.get(deferring.apply_async()) == expected

    def test_chains_sent_with_task_protocol_1(self, cluster: Cluster) -> None:
        with cluster.client_app(task_protocol=1) as app:

            def step(name: str, *args: Any) -> Any:
                return app.signature(name, args=args)

            # Protocol 1 carries a chain as nested link callbacks, not a chain field.
            plain = chain(step("proj.add", 1), step("proj.double"), step("proj.add"))
            deferring = chain(step("proj.add", 1), step("proj.defer_double"), step("proj.add"))
            expected = cluster.get(plain.apply_async())
            assert expected == 5
            assert cluster.get(deferring.apply_async()) == expected
            # The deferring task itself received as a protocol 1 message.
            first = chain(step("proj.defer_double", 2), step("proj.add"))
            assert cluster.get(first.apply_async()) == 2 * 2 + 1

    # -- 2. group ------------------------------------------------------------------

    def test_group_of_50_deferring_tasks_in_order(self, cluster: Cluster) -> None:
        # Later members wait less: they resume first, so order is not completion order.
        members = [sig(cluster, "proj.defer_double", i, 0.02 * (50 - i)) for i in range(50)]
        result = group(members).apply_async()
        assert cluster.get(result, timeout=40) == [2 * i for i in range(50)]

    # -- 3. chord --------------------------------------------------------------------

    # Celery 5.3-5.6's Redis backend sets the chord size with redis-py's deprecated setex().
    @pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
    def test_chord_callback_runs_once_after_the_last_member(self, cluster: Cluster) -> None:
        runs = marker()
        members = [sig(cluster, "proj.defer_double", i, 0.1 * (10 - i)) for i in range(10)]
        callback = sig(cluster, "proj.sum_and_count", marker=runs)
        result = chord(members)(callback)
        value = cluster.get(result, timeout=30)
        expected = [2 * i for i in range(10)]
        assert value["total"] == sum(expected)
        assert sorted(value["values"]) == expected
        assert value["values"] == expected, "chord results not in member order"
        assert value["runs"] == 1
        assert stays(lambda: counter(cluster, runs) == 1, 1.5), "the callback ran again"
        # The callback ran after every member had resumed and finished.
        for member in result.parent.results:
            assert member.state == "SUCCESS"

    # -- 4. link / link_error ---------------------------------------------------------

    def test_link_fires_once_at_the_real_end(self, cluster: Cluster) -> None:
        calls = marker()
        result = cluster.send(
            "proj.defer_double", 21, 1.5, link=sig(cluster, "proj.count_call", marker=calls)
        )
        cluster.wait_state(result, DEFERRED)
        assert counter(cluster, calls) == 0, "link ran at deferral"
        assert cluster.get(result) == 42
        wait_until(lambda: counter(cluster, calls) >= 1, 10, "the link callback")
        assert stays(lambda: counter(cluster, calls) == 1, 1.0), "the link ran more than once"

    def test_link_error_fires_once_at_the_real_end(self, cluster: Cluster) -> None:
        calls = marker()
        result = cluster.send(
            "proj.defer_then_fail",
            "boom",
            1.5,
            link_error=sig(cluster, "proj.count_call", marker=calls),
        )
        cluster.wait_state(result, DEFERRED)
        assert counter(cluster, calls) == 0, "link_error ran at deferral"
        exc = cluster.wait_failed(result)
        assert isinstance(exc, ValueError) and "boom" in str(exc), repr(exc)
        wait_until(lambda: counter(cluster, calls) >= 1, 10, "the link_error callback")
        assert stays(lambda: counter(cluster, calls) == 1, 1.0), "link_error ran more than once"

    # -- 5. retry --------------------------------------------------------------------

    def test_retry_inside_the_resumed_method(self, cluster: Cluster) -> None:
        result = cluster.send("proj.retry_after_resume", 2)
        assert cluster.get(result) == 2
        assert AsyncResult(result.id, app=cluster.app).state == "SUCCESS"

    # -- 6. time limits -----------------------------------------------------------

    def test_soft_time_limit_applies_to_the_resumed_method(self, cluster: Cluster) -> None:
        started = time.monotonic()
        result = cluster.send("proj.slow_resume", 3.0, soft_time_limit=1)
        exc = cluster.wait_failed(result)
        assert isinstance(exc, SoftTimeLimitExceeded), repr(exc)
        assert time.monotonic() - started < 3.0, "the limit did not cut the 3 s sleep short"

    def test_soft_time_limit_does_not_count_the_deferral(self, cluster: Cluster) -> None:
        result = cluster.send("proj.wait_then_add", 1, 2, 2.0, soft_time_limit=1)
        assert cluster.get(result)["total"] == 3

    # -- 7. revoke -----------------------------------------------------------------

    def test_revoke_of_a_deferred_task(self, cluster: Cluster) -> None:
        key = marker()
        result = cluster.send("proj.sleep_forever", key)
        cluster.wait_state(result, DEFERRED)
        wait_until(lambda: cluster.marker_redis.get(f"{key}:started"), 10, "the trigger to start")
        store = cluster.defer_store()
        assert store.get_deferral(result.id) is not None
        result.revoke()
        cluster.wait_state(result, "REVOKED", timeout=10)
        wait_until(
            lambda: cluster.marker_redis.get(f"{key}:cleanup"), 10, "the trigger's cleanup()"
        )
        assert cluster.marker_redis.get(f"{key}:cleanup") == b"1"
        assert store.get_deferral(result.id) is None
        assert stays(lambda: result.state == "REVOKED", 1.0)

    # -- 8. total deadline -----------------------------------------------------------

    def test_total_deadline_fails_the_task_through_the_sweep(self, cluster: Cluster) -> None:
        started = time.monotonic()
        result = cluster.send("proj.deadline_two_seconds")
        cluster.wait_state(result, DEFERRED)
        exc = cluster.wait_failed(result, timeout=15)
        elapsed = time.monotonic() - started
        assert isinstance(exc, TriggerTimeout), repr(exc)
        assert "total deadline" in str(exc), str(exc)
        assert 2.0 <= elapsed < 10.0, f"failed after {elapsed:.1f}s"

    # -- 9. routing, priority, headers, ignore_result ----------------------------------

    def test_queue_priority_and_headers_survive_a_deferral(self, cluster: Cluster) -> None:
        other = cluster.queues["other"]
        result = cluster.send(
            "proj.report_request",
            kwargs={"seconds": 0.5},
            queue=other,
            priority=5,
            headers={"tenant": "acme"},
        )
        cluster.wait_state(result, DEFERRED)
        report = cluster.get(result)
        assert report["task_id"] == result.id
        assert report["routing_key"] == other, report
        assert report["priority"] == 5, report
        assert report["headers"].get("tenant") == "acme", report
        assert report["ignore_result"] is False

    def test_ignore_result_survives_a_deferral(self, cluster: Cluster) -> None:
        key = marker()
        result = cluster.send(
            "proj.report_request", kwargs={"marker": key, "seconds": 1.0}, ignore_result=True
        )
        states: set[str] = set()

        def reported() -> Any:
            states.add(result.state)
            return cluster.marker_redis.get(f"{key}:report")

        report = json.loads(wait_until(reported, 15, "the resumed method's report"))
        assert report["task_id"] == result.id
        assert report["ignore_result"] is True
        # Celery stores nothing for ignore_result: not DEFERRED, not the result.
        assert stays(lambda: result.state == "PENDING", 1.0)
        assert states == {"PENDING"}, states
        meta = cluster.app.backend.get_task_meta(result.id)
        assert meta["status"] == "PENDING" and meta.get("result") is None, meta

    # -- 10. events ----------------------------------------------------------------

    def test_deferred_and_resumed_events(self, cluster: Cluster) -> None:
        events: list[dict[str, Any]] = []
        ready = threading.Event()
        with cluster.app.connection_for_read() as connection:
            receiver = cluster.app.events.Receiver(connection, handlers={"*": events.append})
            receiver.on_consume_ready = lambda *_args, **_kwargs: ready.set()
            thread = threading.Thread(
                target=receiver.capture, kwargs={"wakeup": False}, daemon=True
            )
            thread.start()
            try:
                assert ready.wait(10), "the event receiver did not start"
                # Subscribed once any worker event arrives (ask for heartbeats).
                for _ in range(20):
                    cluster.app.control.broadcast("heartbeat")
                    if stays(lambda: not events, 0.5):
                        continue
                    break
                assert events, "no worker event arrived"

                result = cluster.send("proj.defer_double", 5, 0.5)
                assert cluster.get(result) == 10

                def mine() -> list[str]:
                    return [e["type"] for e in list(events) if e.get("uuid") == result.id]

                wait_until(lambda: "task-succeeded" in mine(), 10, "task-succeeded")
                time.sleep(1.0)  # a late duplicate would show up here
            finally:
                receiver.should_stop = True
                thread.join(10)
        sequence = mine()
        assert "task-deferred" in sequence and "task-resumed" in sequence, sequence
        deferred, resumed = sequence.index("task-deferred"), sequence.index("task-resumed")
        assert deferred < resumed, sequence
        assert sequence.count("task-succeeded") == 1, sequence
        assert "task-failed" not in sequence, sequence
        before = sequence[:resumed]
        assert "task-succeeded" not in before and "task-failed" not in before, sequence
        assert sequence.index("task-succeeded") > resumed, sequence

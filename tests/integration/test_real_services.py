"""celery-defer against real services, with real processes.

A class-scoped fixture starts ``celery -A proj worker`` (threads pool,
concurrency 1), ``celery -A proj triggerer`` and ``celery -A proj beat`` as
subprocesses (app: ``tests/integration/proj.py``) in two configurations:

* ``redis``: broker Redis, result backend Redis, store PostgreSQL;
* ``amqp``: broker RabbitMQ, result backend PostgreSQL (``db+postgresql``), store PostgreSQL.

Each run gets its own PostgreSQL schema, its own queue names and a random
Redis database number, so leftovers of earlier (or concurrent) runs cannot
interfere. When a test fails, the tail of every process log is printed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from celery.result import AsyncResult

from celery_defer import DEFERRED, InvalidDeferral, TriggerFailed, TriggerTimeout
from tests.integration.harness import Cluster, running_cluster
from tests.support.processes import STOP_TIMEOUT
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


# -- the fixture ---------------------------------------------------------------

CONFIGS = {
    "redis": "broker Redis, results Redis, store PostgreSQL",
    "amqp": "broker RabbitMQ, results PostgreSQL, store PostgreSQL",
}


@pytest.fixture(scope="class", params=list(CONFIGS), ids=list(CONFIGS))
def cluster(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
    redis_url: str,
) -> Iterator[Cluster]:
    config = request.param
    # Check (or skip for) every service before creating anything.
    amqp_url = request.getfixturevalue("amqp_url") if config == "amqp" else None
    with running_cluster(
        config,
        broker="redis" if config == "redis" else "amqp",
        backend="redis" if config == "redis" else "db",
        postgres_url=postgres_url,
        redis_url=redis_url,
        amqp_url=amqp_url,
        logdir=tmp_path_factory.mktemp(f"celery-{config}"),
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
    # The call phase's report is counted before teardown runs.
    if request.session.testsfailed > failed_before:
        print(cluster.log_tails(lines=60))


# -- the tests -----------------------------------------------------------------


@pytest.mark.timeout(150)
class TestRealServices:
    def test_deferred_tasks_free_the_single_worker_slot(self, cluster: Cluster) -> None:
        started = time.monotonic()
        first = cluster.send("proj.wait_then_add", 1, 2, 2.0)
        second = cluster.send("proj.wait_then_add", 10, 20, 2.0)
        assert cluster.get(first)["total"] == 3
        assert cluster.get(second)["total"] == 30
        elapsed = time.monotonic() - started
        # Holding the only slot, the second would finish after ~4 s.
        assert elapsed < 3.5, f"both took {elapsed:.2f}s: the worker slot was not freed"

    def test_deferred_state_then_result_under_the_original_id(self, cluster: Cluster) -> None:
        result = cluster.send("proj.wait_then_add", 2, 3, 2.0)
        cluster.wait_state(result, DEFERRED)
        info = AsyncResult(result.id, app=cluster.app).info
        assert isinstance(info, dict), repr(info)
        # TimeDeltaTrigger serializes as a DateTimeTrigger at its absolute moment.
        assert info["trigger"] == "celery_defer.triggers.DateTimeTrigger"
        assert info["method"] == "finish"
        value = cluster.get(result)
        assert value["total"] == 5
        assert value["task_id"] == result.id  # the resumed execution ran under the same id
        final = AsyncResult(result.id, app=cluster.app)
        assert final.state == "SUCCESS"
        assert final.result == value

    def test_three_successive_deferrals(self, cluster: Cluster) -> None:
        assert cluster.get(cluster.send("proj.count_deferrals", 3)) == 3

    def test_defer_from_a_nested_helper(self, cluster: Cluster) -> None:
        result = cluster.send("proj.nested_defer", "deep")
        assert cluster.get(result) == {"label": "deep", "task_id": result.id}

    def test_failing_trigger_fails_the_task(self, cluster: Cluster) -> None:
        exc = cluster.wait_failed(cluster.send("proj.fail_fast"))
        assert isinstance(exc, TriggerFailed), repr(exc)
        assert "FailureTrigger" in str(exc)

    def test_timeout_through_the_beat_sweep_runs_the_errback(self, cluster: Cluster) -> None:
        marker = f"cdit:{uuid.uuid4().hex}"
        started = time.monotonic()
        result = cluster.send(
            "proj.too_slow",
            link_error=cluster.app.signature("proj.record_errback", kwargs={"marker": marker}),
        )
        exc = cluster.wait_failed(result, timeout=15)
        elapsed = time.monotonic() - started
        assert isinstance(exc, TriggerTimeout), repr(exc)
        assert elapsed < 10, f"the sweep took {elapsed:.1f}s to time the task out"
        errback = wait_until(
            lambda: cluster.marker_redis.get(f"{marker}:errback"), 10, "the errback's marker"
        )
        assert errback.decode() == result.id

    def test_unserializable_kwargs_are_refused(self, cluster: Cluster) -> None:
        result = cluster.send("proj.bad_kwargs")
        exc = cluster.wait_failed(result)
        assert isinstance(exc, InvalidDeferral), repr(exc)  # SerializationError is one too
        assert "kwargs" in str(exc)
        assert cluster.trigger_owner(result.id) == (False, None)  # nothing was stored

    @pytest.mark.timeout(90)
    def test_sigterm_hands_triggers_back_and_runs_cleanup(self, cluster: Cluster) -> None:
        marker = f"cdit:{uuid.uuid4().hex}"
        waiting = cluster.send("proj.wait_then_add", 4, 5, 2.0)
        forever = cluster.send("proj.sleep_forever", marker)
        cluster.wait_state(waiting, DEFERRED)
        cluster.wait_state(forever, DEFERRED)
        wait_until(
            lambda: cluster.marker_redis.get(f"{marker}:started"),
            10,
            "the SleepForeverTrigger to start",
        )
        owner = wait_until(
            lambda: cluster.trigger_owner(waiting.id)[1],
            10,
            "the triggerer to claim the timer trigger",
        )

        stopping = time.monotonic()
        code = cluster.stop("triggerer", timeout=STOP_TIMEOUT)
        took = time.monotonic() - stopping
        assert code == 0, f"triggerer exited with {code}\n{cluster.log_tails()}"
        assert took < 5, f"the triggerer took {took:.1f}s to stop"
        assert cluster.marker_redis.get(f"{marker}:cleanup") == b"1", "cleanup() did not run"
        # Handed back: the trigger row is still there, owned by nobody.
        assert cluster.trigger_owner(waiting.id) == (True, None), owner
        assert cluster.trigger_owner(forever.id) == (True, None)
        time.sleep(2.5)  # the timer is due now: only a triggerer can fire it
        assert waiting.state == DEFERRED

        restarted = time.monotonic()
        cluster.start_triggerer()
        assert cluster.get(waiting)["total"] == 9
        took = time.monotonic() - restarted
        # A trigger that was not handed back would wait out defer_triggerer_health_timeout (10 s).
        assert took < 8, f"the new triggerer took {took:.1f}s to finish the handed-back task"
        wait_until(
            lambda: cluster.marker_redis.get(f"{marker}:started") == b"2",
            10,
            "the new triggerer to run the handed-back SleepForeverTrigger",
        )

"""The beat sweep: timeouts, stranded resumes, unused triggers, expired events.

Run by celery beat as the task ``celery_defer.sweep`` every
``defer_sweep_interval`` seconds (:func:`celery_defer.install` adds the entry). Each step
claims before it acts (a conditional ``UPDATE ... WHERE state='deferred'``
in the store), so two sweeps running at once never both act on a deferral.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from celery_defer.broker import resumes
from celery_defer.settings import Settings
from celery_defer.store import ResumeOrder, store_for
from celery_defer.wire import Outcome

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)

SWEEP_TASK_NAME = "celery_defer.sweep"

#: Deferrals handled per store round trip; a sweep makes at most _MAX_ROUNDS.
_BATCH = 500
_MAX_ROUNDS = 20

TIMEOUT_MESSAGE = "the deferral timed out before its trigger fired"


@dataclass(frozen=True)
class SweepReport:
    """What one sweep did: the sweep's counters, reported where they are counted.

    The ``celery_defer.sweep`` task returns it (as a dict: monitors see it as
    the ``task-succeeded`` result) and logs it at INFO with one structured
    field per count, whenever the sweep did anything.
    """

    timed_out: int
    republished: int
    triggers_deleted: int
    #: External events older than ``defer_event_retention``, deleted.
    events_deleted: int = 0
    #: Triggers owned by a triggerer no longer registered, handed back.
    triggers_released: int = 0
    #: Ended deferrals older than ``defer_ended_retention``, deleted.
    ended_deleted: int = 0


def sweep(
    app: Celery, now: datetime | None = None, *, find_unused_triggers: bool = True
) -> SweepReport:
    """Fail timed-out deferrals, re-send stranded resumes, tidy triggers and old events.

    ``find_unused_triggers``: look for triggers no deferral waits on. Nothing
    leaves one behind (a fire, a cancel and a timeout delete theirs), so it
    is a safety net, and it reads every trigger (0.6 s of PostgreSQL at a
    million): the beat task does it, the triggerers' own sweeps do not.
    """
    store = store_for(app)
    settings = Settings.from_app(app)
    now = now or datetime.now(timezone.utc)
    timed_out = time_out_due(app, now)
    # A row left in 'firing' this long lost its publisher (a triggerer died
    # between storing the event and sending the resume): send it again. A
    # duplicate is harmless, the worker runs one generation once.
    stuck = store.stuck_firing(now - timedelta(seconds=settings.triggerer_health_timeout), _BATCH)
    # A resume published long ago and never claimed may have lost its message
    # (a broker restarted without persistence): send it again, same reasoning.
    stuck += store.unclaimed_resumes(
        now - timedelta(seconds=settings.resume_republish_after), _BATCH
    )
    republished = len(stuck)
    _publish(app, stuck)
    deleted = store.delete_unused_triggers() if find_unused_triggers else 0
    released = store.release_orphaned_triggers()
    events_deleted = _in_batches(
        store.delete_events, now - timedelta(seconds=settings.event_retention)
    )
    ended_deleted = _in_batches(
        store.delete_ended, now - timedelta(seconds=settings.ended_retention)
    )
    report = SweepReport(
        timed_out=timed_out,
        republished=republished,
        triggers_deleted=deleted,
        events_deleted=events_deleted,
        triggers_released=released,
        ended_deleted=ended_deleted,
    )
    if any(asdict(report).values()):
        logger.info("sweep: %s", report, extra=asdict(report))
    return report


def _in_batches(delete: Callable[[datetime, int], int], cutoff: datetime) -> int:
    """Delete what is older than ``cutoff`` (events, ended deferrals) in bounded batches."""
    deleted = 0
    for _ in range(_MAX_ROUNDS):
        count = delete(cutoff, _BATCH)
        deleted += count
        if count < _BATCH:
            break
    return deleted


def time_out_due(app: Celery, now: datetime) -> int:
    """Fail the deferrals whose timeout is before ``now``; returns how many.

    The sweep's first step; :func:`celery_defer.testing.fast_forward` also
    runs it with a moved clock. The count is reported in the sweep's
    :class:`SweepReport`, where it is counted: the triggerer's metrics cannot
    see it (see :mod:`celery_defer.triggerer.metrics`).
    """
    store = store_for(app)
    outcome = Outcome.error("timeout", TIMEOUT_MESSAGE).dumps()
    timed_out = 0
    for _ in range(_MAX_ROUNDS):
        orders = store.claim_timed_out(now, outcome, _BATCH)
        timed_out += len(orders)
        _publish(app, orders)
        if len(orders) < _BATCH:
            break
    return timed_out


def _publish(app: Celery, orders: list[ResumeOrder]) -> None:
    if not orders:
        return
    # Publish from a fresh thread: inside the sweep task, send_task would
    # otherwise take the sweep as the parent of every resumed task
    # (celery/app/base.py send_task reads current_worker_task, thread-local).
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-defer-sweep") as pool:
        sent = pool.submit(resumes.publish, app, orders).result()
    store_for(app).mark_resumed(sent)

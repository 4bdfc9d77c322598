"""The triggerer's event loop: claim triggers, run them, fire their tasks.

Structure (after procrastinate's worker): one coroutine per trigger, plus
named side tasks — the claim loop (woken by new-trigger notices, by a freed
slot, or by its periodic scan), the heartbeat, and the fire loop that stores
outcomes and publishes resumes in batches. The store is synchronous, so its
calls run on a small thread pool and never block the loop.

Per-loop work does not grow with the number of triggers held: a timer
stays a row in the store until its moment is within ``defer_timer_horizon``
(the periodic scan, every heartbeat, claims it then), near timers sleep
on the loop's own timer heap, the claim is one indexed query, and the only
O(held) step (reconciling with the store) runs once per health timeout.
Store writes are batched: a claim takes up to CLAIM_BATCH triggers and
notices arriving together share it; one transaction stores every outcome
that arrived while the previous one ran; published resumes are recorded in
one transaction per MARK_INTERVAL, off the path from event to resume
(:mod:`celery_defer.triggerer.firing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from celery_defer.codec import codec_for
from celery_defer.exceptions import SerializationError, StoreError, TriggerFailed
from celery_defer.revoking import cancel
from celery_defer.settings import Settings
from celery_defer.store import ClaimedTrigger, Store, TriggerOutcome
from celery_defer.triggerer.firing import ResumePipeline
from celery_defer.triggerer.metrics import TriggererMetrics
from celery_defer.triggerer.supervision import supervise
from celery_defer.triggerer.sweeping import sweep_loop
from celery_defer.triggerer.watchdog import running_trigger
from celery_defer.triggers.base import BaseTrigger, TriggerEvent
from celery_defer.triggers.clock import DEFAULT_CLOCK, far_timers_may_wait
from celery_defer.triggers.execution import describe, first_event
from celery_defer.validation import resolve_trigger_class
from celery_defer.wire import Outcome

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger("celery_defer.triggerer")

T = TypeVar("T")

#: Most triggers claimed in one store transaction.
CLAIM_BATCH = 1000

#: Claims start at most this often (seconds), so that a burst of new-trigger
#: notices costs one transaction, not one each.
CLAIM_INTERVAL = 0.01


class TriggerRunner:
    """Runs up to ``capacity`` triggers on the current event loop until stopped."""

    def __init__(
        self, app: Celery, store: Store, triggerer_id: str, capacity: int, host: str, pid: int
    ) -> None:
        self.app = app
        self.store = store
        self.settings = Settings.from_app(app)
        self.codec = codec_for(app)  # checks defer_encryption_keys at start, not at a trigger
        self.triggerer_id = triggerer_id
        self.capacity = capacity
        self.host = host
        self.pid = pid
        self.running: dict[int, asyncio.Task[None]] = {}
        #: Why the triggerer stopped on its own (a loop that failed), or None.
        self.failure: BaseException | None = None
        self._db = ThreadPoolExecutor(max_workers=4, thread_name_prefix="celery-defer-db")
        # Since Python 3.10 these bind to the loop on first use, not here.
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        # Whether the last claim stopped at capacity, leaving triggers behind.
        self._unowned_left = True
        self._side_tasks: set[asyncio.Task[None]] = set()
        # The claim transaction last submitted: cancelling the claim loop does not stop
        # it, and a stop must let it commit before handing every owned trigger back.
        self._claim: Future[list[ClaimedTrigger]] | None = None
        # Triggers this runner cancelled, to tell them from one raising CancelledError itself.
        self._cancelling: set[int] = set()
        self.registered: Callable[[], None] = lambda: None
        #: The clock the triggers go by (the service sets its own).
        self.clock: Any = DEFAULT_CLOCK
        self.metrics = TriggererMetrics()
        self._resumes = ResumePipeline(app, store, self._call, self._sleep, self._stop.is_set)

    # -- control, callable from the loop thread ----------------------------

    def request_stop(self) -> None:
        """Begin a clean shutdown (idempotent)."""
        self._stop.set()

    def wake(self) -> None:
        """Claim now rather than at the next scan (a notice arrived)."""
        self._wake.set()

    def revoke(self, task_ids: list[str]) -> None:
        """Cancel these tasks' deferrals (a revoke broadcast arrived)."""
        task = asyncio.create_task(self._revoke(task_ids), name="revoke")
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # -- main -------------------------------------------------------------

    async def main(self) -> None:
        """Register, run until :meth:`request_stop`, then shut down cleanly."""
        try:
            if not await self._register():
                return
            self.registered()
            side = [
                asyncio.create_task(self._claim_loop(), name="claim"),
                asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
                asyncio.create_task(self._resumes.fire_loop(), name="fire"),
                asyncio.create_task(self._resumes.mark_loop(), name="mark-resumed"),
                asyncio.create_task(self._resumes.republish_loop(), name="republish"),
                asyncio.create_task(
                    sweep_loop(
                        self.app,
                        self._call,
                        lambda: self.clock.now(),
                        self._sleep,
                        self._stop.is_set,
                        self.metrics.timed_out.inc,
                    ),
                    name="sweep",
                ),
            ]
            self.failure = await supervise(side, self._stop, self.triggerer_id)
            for task in side[:2]:
                task.cancel()
            await self._cancel_triggers(list(self.running))
            for task in side[2:]:
                task.cancel()
            await asyncio.gather(*side, return_exceptions=True)
            await self._claim_settled()
            await self._resumes.flush()  # events that arrived before the stop
            await self._resumes.mark_published()
            released = await self._call(self.store.unregister_triggerer, self.triggerer_id)
            logger.info(
                "triggerer %s stopped; handed back %d triggers",
                self.triggerer_id,
                released,
                extra={"triggerer_id": self.triggerer_id},
            )
        except StoreError as exc:
            logger.error(
                "triggerer %s could not hand its triggers back (%s); another triggerer "
                "takes them after defer_triggerer_health_timeout",
                self.triggerer_id,
                exc,
            )
        finally:
            self._db.shutdown(wait=False, cancel_futures=True)

    async def _register(self) -> bool:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                await self._call(
                    self.store.register_triggerer,
                    self.triggerer_id,
                    self.host,
                    self.pid,
                    self.capacity,
                )
                logger.info(
                    "triggerer %s running, capacity %d",
                    self.triggerer_id,
                    self.capacity,
                    extra={"triggerer_id": self.triggerer_id},
                )
                return True
            except StoreError as exc:
                logger.warning(
                    "cannot register with the store (%s); retrying in %.1fs", exc, backoff
                )
                await self._sleep(backoff)
                backoff = min(backoff * 2, 30.0)
        return False

    # -- claiming ---------------------------------------------------------

    async def _claim_loop(self) -> None:
        scan = self.settings.triggerer_heartbeat
        loop = asyncio.get_running_loop()
        while True:
            began = loop.time()
            await self._claim_free_slots()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=scan)
            # Notices of a burst of deferrals share one claim.
            pause = CLAIM_INTERVAL - (loop.time() - began)
            if pause > 0:
                await asyncio.sleep(pause)
            self._wake.clear()

    async def _claim_free_slots(self) -> None:
        """Claim in batches of CLAIM_BATCH until the slots or the unowned rows run out.

        Short transactions that lock few rows, and the first triggers run
        while the rest are still being claimed.
        """
        while (free := self.capacity - len(self.running)) > 0:
            limit = min(free, CLAIM_BATCH)
            try:
                self._claim = self._db.submit(
                    self.store.claim_triggers,
                    self.triggerer_id,
                    limit,
                    self.settings.triggerer_health_timeout,
                    # None (claim every timer) under a clock of tests: see far_timers_may_wait.
                    self.settings.timer_horizon if far_timers_may_wait(self.clock) else None,
                )
                claimed = await asyncio.wrap_future(self._claim)
            except StoreError as exc:
                logger.warning("claiming triggers failed: %s", exc)
                return
            for row in claimed:
                self._start(row)
            if len(claimed) < limit:
                # None left: a freed slot need not claim; new triggers come
                # with a notice, or at the next scan.
                self._unowned_left = False
                return
        self._unowned_left = True

    async def _claim_settled(self) -> None:
        """Wait for a claim still in its transaction when the claim loop was cancelled.

        Otherwise it could commit after :meth:`main` hands the triggers back,
        leaving rows owned by a triggerer that no longer exists. What it
        claimed is never started: the hand-back releases it with the rest.
        """
        if self._claim is not None and not self._claim.done():
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wrap_future(self._claim)

    def _start(self, row: ClaimedTrigger) -> None:
        if row.id in self.running:
            return  # already ours and running (claimed again after a rejoin)
        try:
            trigger_class = resolve_trigger_class(row.classpath)
            trigger: BaseTrigger = trigger_class(
                **self.codec.loads(row.kwargs, where="trigger kwargs")
            )
        except Exception as exc:
            message = f"trigger {row.classpath} could not be rebuilt: {exc}"
            logger.error(message, extra={"trigger_id": row.id, "trigger": row.classpath})
            self.metrics.failed.inc()
            self._resumes.submit(TriggerOutcome(row.id, Outcome.error("failed", message).dumps()))
            return
        logger.debug(
            "running trigger %s: %r",
            row.id,
            trigger,
            extra={"trigger_id": row.id, "trigger": describe(trigger)},
        )
        self.running[row.id] = asyncio.create_task(
            self._run(row.id, trigger), name=f"trigger-{row.id}"
        )

    async def _run(self, trigger_id: int, trigger: BaseTrigger) -> None:
        try:
            event = await self._first_event(trigger_id, trigger)
            try:
                outcome = Outcome.event(event.payload).dumps()
            except SerializationError as exc:
                raise TriggerFailed(
                    f"{type(trigger).__name__} yielded a payload that cannot be stored: {exc}"
                ) from exc
            self.metrics.record_fire(trigger, event)
            logger.info(
                "trigger %s (%s) fired",
                trigger_id,
                describe(trigger),
                extra={"trigger_id": trigger_id, "trigger": describe(trigger)},
            )
        except TriggerFailed as exc:
            self.metrics.failed.inc()
            logger.warning(
                "trigger %s failed: %s",
                trigger_id,
                exc,
                extra={"trigger_id": trigger_id, "trigger": describe(trigger)},
            )
            outcome = Outcome.error("failed", str(exc)).dumps()
        finally:
            self.running.pop(trigger_id, None)
            self._cancelling.discard(trigger_id)
            if self._unowned_left:
                self._wake.set()  # a slot is free and a trigger may be waiting for one
        self._resumes.submit(TriggerOutcome(trigger_id, outcome))

    async def _first_event(self, trigger_id: int, trigger: BaseTrigger) -> TriggerEvent:
        """:func:`first_event`, failing a trigger that raises CancelledError of its own.

        Only a cancellation by this runner (stop, hand-over, revoke) may end a
        trigger without an outcome; a CancelledError the trigger raised itself
        (it awaited a cancelled future) would otherwise leave its tasks
        waiting on a trigger that no longer runs, silently, until a timeout.
        """
        try:
            # Inside the trigger's task: the watchdog learns from it which trigger blocks.
            with running_trigger(trigger_id, trigger):
                return await first_event(trigger)
        except asyncio.CancelledError:
            if trigger_id in self._cancelling:
                raise
            raise TriggerFailed(
                f"{describe(trigger)} raised CancelledError, but nothing cancelled it "
                "(did it await a cancelled future or task?)"
            ) from None

    async def _cancel_triggers(self, trigger_ids: list[int]) -> None:
        self._cancelling.update(i for i in trigger_ids if i in self.running)
        tasks = [self.running[i] for i in trigger_ids if i in self.running]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=30)

    # -- revocation ---------------------------------------------------------

    async def _revoke(self, task_ids: list[str]) -> None:
        try:
            done = await self._call(
                partial(cancel, self.app, self.store, task_ids, reason="revoked while deferred")
            )
        except StoreError as exc:
            logger.warning("could not cancel the deferrals of revoked tasks %s: %s", task_ids, exc)
            return
        cancelled = done.cancelled
        if not cancelled.task_ids:
            return  # not deferred, or another triggerer got there first
        for task_id, error in done.unrecorded.items():
            logger.error("could not record task %s as revoked: %s", task_id, error)
        # Stopping a trigger runs its cleanup(); one held by another
        # triggerer stops at that triggerer's next reconciliation.
        await self._cancel_triggers([i for i in cancelled.trigger_ids if i in self.running])
        logger.info(
            "revoked deferred tasks %s", cancelled.task_ids, extra={"task_ids": cancelled.task_ids}
        )

    # -- heartbeat and reconciliation --------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.triggerer_heartbeat
        reconcile_every = max(1, int(self.settings.triggerer_health_timeout // interval))
        beats = 0
        while True:
            await asyncio.sleep(interval)
            beats += 1
            try:
                alive = await self._call(self.store.heartbeat, self.triggerer_id)
                if not alive:
                    await self._rejoin()
                elif beats % reconcile_every == 0:
                    await self._reconcile()
            except StoreError as exc:
                logger.warning("heartbeat failed: %s", exc)

    async def _rejoin(self) -> None:
        """We were declared dead (a long stall): our triggers now belong to others."""
        logger.error(
            "triggerer %s was declared dead; dropping its %d triggers and rejoining",
            self.triggerer_id,
            len(self.running),
        )
        await self._cancel_triggers(list(self.running))
        await self._call(
            self.store.register_triggerer, self.triggerer_id, self.host, self.pid, self.capacity
        )
        self._wake.set()

    async def _reconcile(self) -> None:
        """Stop triggers the store no longer has (their deferrals timed out or went away)."""
        candidates = set(self.running)
        held = await self._call(self.store.held_trigger_ids, self.triggerer_id)
        gone = [i for i in candidates - held if i in self.running]
        if gone:
            logger.info("stopping %d triggers no task waits for", len(gone))
            await self._cancel_triggers(gone)

    # -- helpers ----------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._db, fn, *args)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=seconds)

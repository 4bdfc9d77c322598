"""From a trigger's event to its tasks' resumes: store, publish, record.

The triggerer's runner hands every outcome (an event, or a failure) to one
:class:`ResumePipeline`. One transaction stores every outcome that arrived while
the previous one ran (the rows move to ``firing``, with the outcome); their
resumes are published at once; those the broker was away for are kept and
published again with backoff; and published resumes are recorded (``resumed``)
in one transaction per MARK_INTERVAL, off the path from event to resume.
Whatever this process loses by dying, the store still holds: the sweep sends
rows left ``firing``, and a worker runs a duplicate resume once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from celery_defer.broker import resumes
from celery_defer.exceptions import StoreError
from celery_defer.store import ResumeOrder, Store, TriggerOutcome

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["MARK_INTERVAL", "ResumePipeline"]

logger = logging.getLogger("celery_defer.triggerer")

#: Published resumes are recorded as such in one transaction per this many
#: seconds. It is bookkeeping off the critical path: the sweep re-sends a row
#: still 'firing' only after the health timeout, and workers accept either state.
MARK_INTERVAL = 0.1


class ResumePipeline:
    """Stores trigger outcomes as fired and publishes their resumes, losing none.

    ``call`` runs a blocking store or broker call off the event loop;
    ``sleep`` waits but returns early on a stop; ``stopping`` tells whether
    the triggerer is stopping.
    """

    def __init__(
        self,
        app: Celery,
        store: Store,
        call: Callable[..., Awaitable[Any]],
        sleep: Callable[[float], Awaitable[None]],
        stopping: Callable[[], bool],
    ) -> None:
        self.app = app
        self.store = store
        self._call = call
        self._sleep = sleep
        self._stopping = stopping
        self._outcomes: list[TriggerOutcome] = []
        self._outcome_ready = asyncio.Event()
        self._published: list[ResumeOrder] = []
        self._published_ready = asyncio.Event()
        # Resumes stored as fired whose publish found the broker away.
        self._unsent: list[ResumeOrder] = []
        self._unsent_ready = asyncio.Event()

    def submit(self, outcome: TriggerOutcome) -> None:
        """Queue an outcome; the fire loop stores it with whatever else is waiting."""
        self._outcomes.append(outcome)
        self._outcome_ready.set()

    async def fire_loop(self) -> None:
        """Flush whenever outcomes are waiting (a side task of the runner)."""
        while True:
            await self._outcome_ready.wait()
            self._outcome_ready.clear()
            await self.flush()

    async def flush(self) -> None:
        """Store every pending outcome in one transaction, then publish the resumes."""
        backoff = 0.2
        while self._outcomes:
            batch, self._outcomes = self._outcomes, []
            try:
                orders = await self._call(self.store.fire, batch)
            except StoreError as exc:
                self._outcomes[:0] = batch  # keep them: nothing may be lost
                logger.warning(
                    "storing %d trigger events failed (%s); retrying in %.1fs",
                    len(batch),
                    exc,
                    backoff,
                )
                if self._stopping():
                    return  # unreleased triggers are re-run by the next triggerer
                await self._sleep(backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            await self._publish(orders)

    async def _publish(self, orders: list[ResumeOrder]) -> bool:
        """Publish resumes; keep those the broker was away for. True if all went."""
        sent, unsent = await self._call(resumes.publish_until_unreachable, self.app, orders)
        if sent:
            self._published.extend(sent)
            self._published_ready.set()
        if unsent:
            self._unsent.extend(unsent)
            self._unsent_ready.set()
        return not unsent

    async def republish_loop(self) -> None:
        """Publish again, with backoff, the resumes the broker was away for.

        They are stored as fired (``firing``), so if this triggerer dies
        first, the sweep sends them; a copy sent by both is dropped by the
        worker as a duplicate.
        """
        backoff = 0.5
        while True:
            await self._unsent_ready.wait()
            await asyncio.sleep(backoff)
            self._unsent_ready.clear()
            batch, self._unsent = self._unsent, []
            if await self._publish(batch):
                backoff = 0.5
                logger.info("broker back: published %d held resumes", len(batch))
            else:
                backoff = min(backoff * 2, 30.0)

    async def mark_loop(self) -> None:
        """Record published resumes a batch at a time (a side task of the runner)."""
        while True:
            await self._published_ready.wait()
            await asyncio.sleep(MARK_INTERVAL)  # let more resumes join the transaction
            self._published_ready.clear()
            await self.mark_published()

    async def mark_published(self) -> None:
        """Record the resumes published since the last call, in one transaction."""
        batch, self._published = self._published, []
        if not batch:
            return
        try:
            await self._call(self.store.mark_resumed, batch)
        except StoreError as exc:
            # Harmless: the rows stay 'firing', the worker accepts the
            # resume from that state, the sweep may send it again, and the
            # worker drops the duplicate.
            logger.warning("recording %d published resumes failed: %s", len(batch), exc)

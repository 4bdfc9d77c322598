"""The triggerer's watchers: one batched watcher per kind of wait, as the triggers' runtime.

A triggerer may run thousands of :class:`~celery_defer.triggers.TaskResultTrigger`
and :class:`~celery_defer.triggers.ExternalEventTrigger` at once. Each of them
only registers a future here; two watcher tasks do the looking, in batches:

* the **result watcher** looks up every task id that is due in one call per
  round (``mget`` on key-value backends), at most every ``poll_interval`` of
  each id and never more often than every :data:`MIN_LOOKUP_GAP` seconds;
  ids due within half their interval are taken along, so waiters that started
  at different moments fall into step and share lookups;
* the **event watcher** makes one store query for all the keys it has reason
  to look at: keys of new waiters and keys named by a broker hint at once,
  and every waited key each ``defer_triggerer_heartbeat`` (the safety net for
  a lost hint).

Both run on a thread of their own (the store and the backends are
synchronous) and stop when nothing waits; a failed lookup is logged and
retried, never fatal. Cost per round is one query, whatever the number of
waiters.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from celery_defer.exceptions import SerializationError, StoreError, TriggerFailed
from celery_defer.external_events import matches, payload_of
from celery_defer.settings import Settings
from celery_defer.store import Store
from celery_defer.triggers.clock import DEFAULT_CLOCK, TriggerClock
from celery_defer.triggers.result_backend import fetch_ready

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["MIN_LOOKUP_GAP", "Watchers"]

logger = logging.getLogger("celery_defer.triggerer")

#: The shortest pause between two result-backend lookups: new waiters
#: arriving one by one are looked up together rather than one call each.
MIN_LOOKUP_GAP = 0.1


class Watchers:
    """A triggerer's watchers: the ``TriggerRuntime`` its triggers wait through.

    Implements :class:`~celery_defer.triggers.context.TriggerRuntime`, the
    protocol a trigger sees; eager mode has another implementation
    (:class:`~celery_defer.worker.eager.InlineRuntime`).

    Create it outside the loop; use it from the loop thread only, except
    :meth:`hint`, which the broker listener calls through
    ``loop.call_soon_threadsafe``.
    """

    def __init__(self, app: Celery, store: Store, clock: TriggerClock = DEFAULT_CLOCK) -> None:
        self._app = app
        self._clock = clock
        settings = Settings.from_app(app)
        self._events = _EventWatcher(app, store, settings)
        self._results = _ResultWatcher(app)

    @property
    def app(self) -> Celery:
        """The triggerer's app."""
        return self._app

    @property
    def clock(self) -> TriggerClock:
        """The triggerer's clock: its timer triggers read it and sleep on it."""
        return self._clock

    async def external_event(self, key: str, since: datetime | None) -> Any:
        """Wait for the newest event of ``key`` within retention and at/after ``since``."""
        return await self._events.wait(key, since)

    async def task_result(self, task_id: str, poll_interval: float) -> dict[str, Any]:
        """Wait until ``task_id`` is ready; return its payload."""
        return await self._results.wait(task_id, poll_interval)

    def hint(self, key: str) -> None:
        """An event for ``key`` was sent: look now if anything here waits on it."""
        self._events.hint(key)

    @property
    def waiting(self) -> tuple[int, int]:
        """How many event keys and task ids are watched now (for logs and tests)."""
        return len(self._events.waiters), len(self._results.watched)

    async def aclose(self) -> None:
        """Stop the watchers and their threads (after the triggers have stopped)."""
        await self._events.close()
        await self._results.close()


class _Watcher(abc.ABC):
    """A lazily started watcher task with its own lookup thread."""

    name = "watcher"

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"celery-defer-{self.name}"
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def _ensure_running(self) -> None:
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._guarded(), name=self.name)

    async def _guarded(self) -> None:
        while self._busy():
            try:
                await self._loop()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("the %s failed; restarting it", self.name)
                await asyncio.sleep(1.0)

    @abc.abstractmethod
    def _busy(self) -> bool:
        """Whether anyone still waits (the watcher stops when nobody does)."""

    @abc.abstractmethod
    async def _loop(self) -> None:
        """One watching pass, run again until nobody waits."""

    async def _nap(self, seconds: float) -> None:
        """Sleep up to ``seconds``, or until woken."""
        if seconds > 0:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._pool.shutdown(wait=False, cancel_futures=True)


async def _wait_on(future: asyncio.Future[Any], forget: Callable[[], None]) -> Any:
    try:
        return await future
    finally:
        forget()


# -- task results ------------------------------------------------------------


@dataclass
class _Watch:
    """One watched task id, shared by every trigger waiting on it."""

    interval: float
    due: float
    futures: list[asyncio.Future[dict[str, Any]]] = field(default_factory=list)


class _ResultWatcher(_Watcher):
    name = "result-watcher"

    def __init__(self, app: Celery) -> None:
        super().__init__()
        self.app = app
        self.watched: dict[str, _Watch] = {}
        self._last_lookup = -MIN_LOOKUP_GAP

    def _busy(self) -> bool:
        return bool(self.watched)

    async def wait(self, task_id: str, poll_interval: float) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        watch = self.watched.get(task_id)
        if watch is None:
            watch = self.watched[task_id] = _Watch(interval=poll_interval, due=0.0)
        else:
            watch.interval = min(watch.interval, poll_interval)
            watch.due = min(watch.due, time.monotonic() + poll_interval)
        watch.futures.append(future)
        self._ensure_running()

        def forget() -> None:
            if future in watch.futures:
                watch.futures.remove(future)
            if not watch.futures and self.watched.get(task_id) is watch:
                del self.watched[task_id]

        result: dict[str, Any] = await _wait_on(future, forget)
        return result

    async def _loop(self) -> None:
        while self.watched:
            now = time.monotonic()
            # Ids due within half their interval come along: waiters that
            # started at different moments fall into one lookup per round.
            due = [
                task_id
                for task_id, watch in self.watched.items()
                if watch.due <= now + watch.interval / 2
            ]
            ready_at = self._last_lookup + MIN_LOOKUP_GAP
            if due and now >= ready_at:
                await self._look(due)
                continue
            soonest = min(watch.due for watch in self.watched.values())
            await self._nap(max(soonest, ready_at) - now)

    async def _look(self, task_ids: list[str]) -> None:
        self._last_lookup = time.monotonic()
        try:
            found: dict[str, dict[str, Any]] = await self._in_thread(
                fetch_ready, self.app, task_ids
            )
        except TriggerFailed as exc:
            self._fail(task_ids, exc)
            return
        except Exception as exc:
            found = {}
            logger.warning(
                "looking up %d task results failed (%s); retrying",
                len(task_ids),
                exc,
                extra={"task_count": len(task_ids)},
            )
        now = time.monotonic()
        for task_id in task_ids:
            watch = self.watched.get(task_id)
            if watch is None:
                continue
            payload = found.get(task_id)
            if payload is None:
                watch.due = now + watch.interval
            else:
                del self.watched[task_id]
                for future in watch.futures:
                    if not future.done():
                        future.set_result(payload)

    def _fail(self, task_ids: list[str], error: TriggerFailed) -> None:
        for task_id in task_ids:
            watch = self.watched.pop(task_id, None)
            for future in watch.futures if watch else ():
                if not future.done():
                    future.set_exception(error)


# -- external events ---------------------------------------------------------


@dataclass
class _EventWaiter:
    since: datetime | None
    future: asyncio.Future[Any]


class _EventWatcher(_Watcher):
    name = "event-watcher"

    def __init__(self, app: Celery, store: Store, settings: Settings) -> None:
        super().__init__()
        self.app = app
        self.store = store
        self.scan_every = settings.triggerer_heartbeat
        self.retention = timedelta(seconds=settings.event_retention)
        self.waiters: dict[str, list[_EventWaiter]] = {}
        self._pending: set[str] = set()

    def _busy(self) -> bool:
        return bool(self.waiters)

    async def wait(self, key: str, since: datetime | None) -> Any:
        waiter = _EventWaiter(since, asyncio.get_running_loop().create_future())
        self.waiters.setdefault(key, []).append(waiter)
        self._pending.add(key)
        self._ensure_running()

        def forget() -> None:
            waiting = self.waiters.get(key)
            if waiting is not None and waiter in waiting:
                waiting.remove(waiter)
                if not waiting:
                    del self.waiters[key]

        return await _wait_on(waiter.future, forget)

    def hint(self, key: str) -> None:
        if key in self.waiters:
            self._pending.add(key)
            self._wake.set()

    async def _loop(self) -> None:
        next_scan = time.monotonic() + self.scan_every
        while self.waiters:
            if not self._pending:
                await self._nap(next_scan - time.monotonic())
            if time.monotonic() >= next_scan:
                keys = list(self.waiters)
                next_scan = time.monotonic() + self.scan_every
            else:
                keys = [key for key in self._pending if key in self.waiters]
            self._pending.clear()
            if keys:
                await self._look(keys)

    async def _look(self, keys: list[str]) -> None:
        cutoff = datetime.now(timezone.utc) - self.retention
        try:
            found = await self._in_thread(self.store.latest_events, keys, cutoff)
        except StoreError as exc:
            logger.warning(
                "looking up events for %d keys failed (%s); the next scan retries",
                len(keys),
                exc,
                extra={"key_count": len(keys)},
            )
            return
        for key, event in found.items():
            for waiter in list(self.waiters.get(key, ())):
                if waiter.future.done() or not matches(event, waiter.since):
                    continue
                try:
                    waiter.future.set_result(payload_of(event))
                except SerializationError as exc:
                    waiter.future.set_exception(exc)

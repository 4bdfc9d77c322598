"""The clock timer triggers read, and the sleep they wait in, both movable by tests.

:class:`~celery_defer.triggers.DateTimeTrigger` (and so ``TimeDeltaTrigger``)
reads the time with :func:`now` and waits with :func:`sleep`. In production
``now()`` is the wall clock and ``sleep()`` is a timer on the event loop,
costing what ``asyncio.sleep`` costs (one future, one timer handle) plus a
place in a set. The set is what makes time movable for tests
(:func:`celery_defer.testing.fast_forward`, :func:`celery_defer.testing.skip_time`):

* :func:`shift` moves this process's timer clock forward and wakes every
  sleeping timer, on whatever loop or thread it sleeps, so it re-reads the
  clock and fires if it is now due;
* while :func:`skipping` is on, a sleep does not wait: the clock jumps to the
  sleep's end, so a timer due in a day fires in microseconds.

Only timer triggers in this process see the shifted clock: ``datetime.now()``,
the store's timestamps and other processes do not.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta, timezone

__all__ = ["now", "offset", "reset", "shift", "skipping", "sleep"]

_lock = threading.Lock()
#: (offset added to the wall clock, epoch bumped by every shift), swapped as one.
_state: tuple[timedelta, int] = (timedelta(0), 0)
_skip_depth = 0
_sleepers: set[asyncio.Future[None]] = set()


class _Seen(threading.local):
    # The epoch the last now() in this thread saw: a sleep that follows it
    # (with no await between, as in DateTimeTrigger.run) can tell whether a
    # shift slipped in between reading the clock and starting to sleep.
    epoch = -1


_seen = _Seen()


def now() -> datetime:
    """The time timer triggers go by: the wall clock (aware, UTC) plus the test offset."""
    moved, epoch = _state
    _seen.epoch = epoch
    return datetime.now(timezone.utc) + moved


def offset() -> timedelta:
    """How far :func:`shift` and :func:`skipping` have moved the clock ahead of the wall clock."""
    return _state[0]


async def sleep(seconds: float) -> None:
    """Wait ``seconds`` on the running loop, or less if the clock is moved meanwhile."""
    if _skip_depth:
        _advance(seconds)
        await asyncio.sleep(0)  # let the rest of the loop run, as a real sleep would
        return
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()
    with _lock:
        if _state[1] != _seen.epoch and _seen.epoch != -1:
            return  # the clock moved after the caller read it: read it again
        _sleepers.add(waiter)
    handle = loop.call_later(seconds, _release, [waiter])
    try:
        await waiter
    finally:
        handle.cancel()
        with _lock:
            _sleepers.discard(waiter)


def shift(delta: timedelta) -> None:
    """Move the timer clock by ``delta`` and wake every sleeping timer to re-read it."""
    global _state
    with _lock:
        _state = (_state[0] + delta, _state[1] + 1)
    _wake_sleepers()


def reset() -> None:
    """Put the timer clock back on the wall clock (tests call it between tests)."""
    global _state
    with _lock:
        if not _state[0]:
            return  # already on the wall clock
        _state = (timedelta(0), _state[1] + 1)
    _wake_sleepers()


@contextmanager
def skipping() -> Iterator[None]:
    """While inside, timer sleeps end at once and the clock jumps to their end.

    Sleeping timers are woken on entry. On exit the clock goes back to where
    it was on entry, so time skipped inside does not leak into what follows.
    """
    global _skip_depth, _state
    with _lock:
        _skip_depth += 1
        entry_offset = _state[0]
        _state = (entry_offset, _state[1] + 1)
    _wake_sleepers()
    try:
        yield
    finally:
        with _lock:
            _skip_depth -= 1
            if not _skip_depth:
                _state = (entry_offset, _state[1] + 1)


def _advance(seconds: float) -> None:
    """Skip mode: jump the clock forward so that ``seconds`` have passed from now."""
    global _state
    with _lock:
        _state = (_state[0] + timedelta(seconds=seconds), _state[1])


def _wake_sleepers() -> None:
    with _lock:
        waiters = list(_sleepers)
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = defaultdict(list)
    for waiter in waiters:
        by_loop[waiter.get_loop()].append(waiter)
    for loop, group in by_loop.items():
        with suppress(RuntimeError):  # that loop closed meanwhile
            loop.call_soon_threadsafe(_release, group)


def _release(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)

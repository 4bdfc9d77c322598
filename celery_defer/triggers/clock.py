"""The clocks timer triggers go by: what a trigger reads the time from and sleeps on.

A :class:`TriggerClock` is two calls: ``now()`` (aware UTC) and ``async
sleep(seconds)``. :class:`~celery_defer.triggers.DateTimeTrigger` (and so
``TimeDeltaTrigger``) uses the clock of the context it runs in
(:func:`celery_defer.triggers.context.current_clock`): the clock of the
triggerer or eager task running it, else :data:`DEFAULT_CLOCK`.

* :class:`SystemClock` is the wall clock and the loop's timer: a sleep costs
  exactly what ``asyncio.sleep`` costs (one future, one timer handle). The
  ``celery triggerer`` command runs on one: nothing in that process moves time.
* :class:`ShiftableClock` is the wall clock plus an offset that tests move.
  :meth:`~ShiftableClock.shift` moves it forward and wakes every trigger
  sleeping on it, on whatever loop or thread it sleeps, so each re-reads the
  clock and fires if it is now due; while :meth:`~ShiftableClock.skipping`,
  a sleep does not wait: the clock jumps to the sleep's end. Each instance
  keeps its own time: a ``Triggerer(app, clock=ShiftableClock())`` moves with
  that clock only.
* :data:`DEFAULT_CLOCK` is the one :class:`ShiftableClock` of the process:
  what a trigger goes by when nobody chose a clock for it (an embedded
  ``Triggerer(app)``, an eager task, a trigger run by hand). It is the wall
  clock until :func:`celery_defer.testing.fast_forward` or
  :func:`~celery_defer.testing.skip_time` moves it: those helpers have no
  other handle on "every timer in this process" that they promise to move.

Only timer triggers see a moved clock: ``datetime.now()``, the store's
timestamps and other processes do not.

The module functions (:func:`now`, :func:`sleep`, :func:`offset`,
:func:`shift`, :func:`reset`, :func:`skipping`) act on :data:`DEFAULT_CLOCK`.
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from datetime import datetime, timedelta, timezone
from typing import Protocol

__all__ = [
    "DEFAULT_CLOCK",
    "ShiftableClock",
    "SystemClock",
    "TriggerClock",
    "now",
    "offset",
    "reset",
    "shift",
    "skipping",
    "sleep",
]


class TriggerClock(Protocol):
    """What a timer trigger reads the time from and waits on."""

    def now(self) -> datetime:
        """The current time, aware, in UTC."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (a clock may end the wait early; callers re-read :meth:`now`)."""


def far_timers_may_wait(clock: object) -> bool:
    """Whether, under ``clock``, a timer beyond ``defer_timer_horizon`` may stay a row.

    The store judges a timer's distance by the wall clock; a trigger clock
    moved (``fast_forward``), skipping (``skip_time``) or of another kind may
    make a far timer due, so then every timer is announced, claimed and run.
    """
    follows = getattr(clock, "follows_wall_clock", None)
    return follows is not None and bool(follows())


class SystemClock:
    """The wall clock and the running loop's timer, with nothing added.

    Stateless, so one instance serves any number of loops and threads.
    """

    def now(self) -> datetime:
        """The wall clock, aware, in UTC."""
        return datetime.now(timezone.utc)

    async def sleep(self, seconds: float) -> None:
        """One timer on the running loop."""
        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        """Which clock it is, in logs and test failures."""
        return "SystemClock()"

    def follows_wall_clock(self) -> bool:
        """Always: timers far away by this clock are far away by the store's."""
        return True


class _Seen(threading.local):
    # The epoch the last now() in this thread saw: a sleep that follows it
    # (with no await between, as in DateTimeTrigger.run) can tell whether a
    # shift slipped in between reading the clock and starting to sleep.
    epoch = -1


class ShiftableClock:
    """The wall clock plus an offset that tests move; moving it wakes its sleepers.

    Thread-safe: a test thread may shift it while triggers sleep on it in a
    triggerer's loop and in other threads' loops. A sleep costs one future,
    one timer handle and a place in a set (what finds it to wake it).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: (offset added to the wall clock, epoch bumped by every move), swapped as one.
        self._state: tuple[timedelta, int] = (timedelta(0), 0)
        self._skip_depth = 0
        self._sleepers: set[asyncio.Future[None]] = set()
        self._seen = _Seen()

    def now(self) -> datetime:
        """The wall clock (aware, UTC) plus the offset."""
        moved, epoch = self._state
        self._seen.epoch = epoch
        return datetime.now(timezone.utc) + moved

    def follows_wall_clock(self) -> bool:
        """Whether it reads the wall clock now: not moved, not skipping.

        Only then may a triggerer leave far timers in the store (the store
        judges "far" by the wall clock); otherwise it runs every timer.
        """
        return not self._skip_depth and not self._state[0]

    def offset(self) -> timedelta:
        """How far :meth:`shift` and :meth:`skipping` have moved this clock past the wall clock."""
        return self._state[0]

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on the running loop, or less if the clock is moved meanwhile."""
        if self._skip_depth:
            self._advance(seconds)
            await asyncio.sleep(0)  # let the rest of the loop run, as a real sleep would
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        seen = self._seen.epoch
        with self._lock:
            if seen not in (-1, self._state[1]):
                return  # the clock moved after the caller read it: read it again
            self._sleepers.add(waiter)
        handle = loop.call_later(seconds, _release, [waiter])
        try:
            await waiter
        finally:
            handle.cancel()
            with self._lock:
                self._sleepers.discard(waiter)

    def shift(self, delta: timedelta) -> None:
        """Move the clock by ``delta`` and wake every trigger sleeping on it to re-read it."""
        with self._lock:
            self._state = (self._state[0] + delta, self._state[1] + 1)
        self._wake_sleepers()

    def reset(self) -> None:
        """Put the clock back on the wall clock (tests call it between tests)."""
        with self._lock:
            if not self._state[0]:
                return  # already on the wall clock
            self._state = (timedelta(0), self._state[1] + 1)
        self._wake_sleepers()

    @contextmanager
    def skipping(self) -> Iterator[None]:
        """While inside, sleeps end at once and the clock jumps to their end.

        Sleeping triggers are woken on entry. On exit the clock goes back to
        where it was on entry, so time skipped inside does not leak into what
        follows.
        """
        with self._lock:
            self._skip_depth += 1
            entry_offset = self._state[0]
            self._state = (entry_offset, self._state[1] + 1)
        self._wake_sleepers()
        try:
            yield
        finally:
            with self._lock:
                self._skip_depth -= 1
                if not self._skip_depth:
                    self._state = (entry_offset, self._state[1] + 1)

    def _advance(self, seconds: float) -> None:
        """Skip mode: jump the clock forward so that ``seconds`` have passed from now."""
        with self._lock:
            self._state = (self._state[0] + timedelta(seconds=seconds), self._state[1])

    def _wake_sleepers(self) -> None:
        with self._lock:
            waiters = list(self._sleepers)
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = defaultdict(list)
        for waiter in waiters:
            by_loop[waiter.get_loop()].append(waiter)
        for loop, group in by_loop.items():
            with suppress(RuntimeError):  # that loop closed meanwhile
                loop.call_soon_threadsafe(_release, group)

    def __repr__(self) -> str:
        """Which clock it is and how far it is moved, in logs and test failures."""
        return f"<ShiftableClock offset={self.offset()}>"


def _release(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


#: The process's default clock: the wall clock unless ``celery_defer.testing`` moves it.
DEFAULT_CLOCK = ShiftableClock()


def now() -> datetime:
    """:data:`DEFAULT_CLOCK`'s time (triggers use ``current_clock().now()``)."""
    return DEFAULT_CLOCK.now()


def offset() -> timedelta:
    """How far :data:`DEFAULT_CLOCK` has been moved past the wall clock."""
    return DEFAULT_CLOCK.offset()


async def sleep(seconds: float) -> None:
    """Sleep on :data:`DEFAULT_CLOCK`."""
    await DEFAULT_CLOCK.sleep(seconds)


def shift(delta: timedelta) -> None:
    """Move :data:`DEFAULT_CLOCK` by ``delta``, waking its sleepers."""
    DEFAULT_CLOCK.shift(delta)


def reset() -> None:
    """Put :data:`DEFAULT_CLOCK` back on the wall clock."""
    DEFAULT_CLOCK.reset()


def skipping() -> AbstractContextManager[None]:
    """:meth:`ShiftableClock.skipping` on :data:`DEFAULT_CLOCK`."""
    return DEFAULT_CLOCK.skipping()

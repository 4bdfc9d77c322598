"""Triggers that fire at a moment: :class:`DateTimeTrigger` and :class:`TimeDeltaTrigger`.

They are the commonest triggers and the cheapest to hold: each one is a single
timer on the triggerer's event loop, with no polling, so a triggerer can wait
on many thousands of moments at no cost. The loop's timer is monotonic, which
alone would drift from the wall clock across an NTP step, a suspend or a long
wait; so a trigger never sleeps more than an hour and re-reads the wall clock
after every sleep, which keeps it from firing early or much too late.

Both read the time and sleep on the clock of the context they run in
(:func:`~celery_defer.triggers.context.current_clock`: the triggerer's or the
eager task's clock, else the process's default clock), which tests can move
(:func:`celery_defer.testing.fast_forward`, ``skip_time``, or a
:class:`~celery_defer.triggers.clock.ShiftableClock` given to a triggerer):
a sleep there is a loop timer that a clock shift can also end early.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta, timezone
from typing import Any

from celery_defer.exceptions import InvalidDeferral
from celery_defer.triggers.base import BaseTrigger, TriggerEvent
from celery_defer.triggers.context import current_clock

__all__ = ["MAX_SLEEP", "DateTimeTrigger", "TimeDeltaTrigger"]

#: The longest single sleep, in seconds, before the wall clock is read again.
MAX_SLEEP = 3600.0

# The public path, not this module's: stored rows must survive a module move.
_CLASSPATH = "celery_defer.triggers.DateTimeTrigger"


def _now() -> datetime:
    """The current time, aware, in UTC, on the clock of the context this runs in."""
    return current_clock().now()


async def _sleep(seconds: float) -> None:
    """Sleep on the same clock :func:`_now` reads (one a clock shift can end early)."""
    await current_clock().sleep(seconds)


def _as_utc(moment: Any) -> datetime:
    if not isinstance(moment, datetime):
        if isinstance(moment, date):
            raise InvalidDeferral(
                f"DateTimeTrigger needs a datetime, got the date {moment!r} with no time "
                "of day: pass datetime.combine(day, time(), tzinfo=...) to say which instant"
            )
        raise InvalidDeferral(
            f"DateTimeTrigger needs a datetime, got {type(moment).__qualname__}: {moment!r}"
        )
    if moment.utcoffset() is None:
        # Naive means UTC: the same instant on every machine, whatever its local zone.
        return moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError as exc:
        raise InvalidDeferral(f"DateTimeTrigger: {moment!r} is out of range in UTC") from exc


class DateTimeTrigger(BaseTrigger):
    """Fire once, at ``moment``; the event's payload is the moment (aware, UTC).

    A naive ``moment`` means UTC; an aware one in another zone is converted to
    UTC. Anything other than a :class:`~datetime.datetime` (a bare
    :class:`~datetime.date` included) raises
    :class:`~celery_defer.exceptions.InvalidDeferral`. A moment in the past
    fires at once.
    """

    def __init__(self, moment: datetime) -> None:
        super().__init__()
        self.moment = _as_utc(moment)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the public classpath and the absolute moment, in UTC."""
        return (_CLASSPATH, {"moment": self.moment})

    def wakes_at(self) -> datetime | None:
        """The moment, unless a subclass's own ``run()`` does more than wait for it."""
        return self.moment if type(self).run is DateTimeTrigger.run else None

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Sleep on the loop's timer until the moment, then yield it once."""
        while True:
            remaining = (self.moment - _now()).total_seconds()
            if remaining <= 0:
                break
            await _sleep(min(remaining, MAX_SLEEP))
        yield TriggerEvent(self.moment)


class TimeDeltaTrigger(DateTimeTrigger):
    """Fire once, ``delta`` after the trigger is made; the payload is that moment.

    The moment is fixed when the trigger is constructed, and it serializes as
    a :class:`DateTimeTrigger` at that absolute moment, so a triggerer restart
    does not add the delta again. A negative delta fires at once; anything but
    a :class:`~datetime.timedelta` raises
    :class:`~celery_defer.exceptions.InvalidDeferral`.
    """

    def __init__(self, delta: timedelta) -> None:
        if not isinstance(delta, timedelta):
            raise InvalidDeferral(
                f"TimeDeltaTrigger needs a timedelta, got {type(delta).__qualname__}: {delta!r}"
            )
        try:
            moment = _now() + delta
        except OverflowError as exc:
            raise InvalidDeferral(f"TimeDeltaTrigger: {delta!r} from now is out of range") from exc
        super().__init__(moment)
        self.delta = delta

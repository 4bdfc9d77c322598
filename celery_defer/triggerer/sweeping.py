"""The sweep, run by every triggerer: timeouts on time, with or without celery beat.

A deferral's ``timeout`` used to be as late as the beat sweep (every
``defer_sweep_interval``, 15 s: a 2 s timeout failed after 13 s), and an app
that ran no beat, or forgot ``install(app)``, never timed out at all. The
triggerer is the one process every deployment runs, so it sweeps itself:
every :data:`TIMEOUT_SCAN` seconds it fails the deferrals past their timeout
(one indexed query when none is), and every ``defer_sweep_interval`` it runs
the whole sweep (stranded resumes, old events and ended deferrals; not the
search for unused triggers, which reads every trigger: see ``sweep``).
Several triggerers sweeping at once is safe: each step is a conditional
update or an idempotent delete. The beat entry keeps working.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from celery_defer.exceptions import StoreError
from celery_defer.settings import Settings
from celery_defer.sweep import sweep, time_out_due

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["TIMEOUT_SCAN", "sweep_loop"]

logger = logging.getLogger("celery_defer.triggerer")

#: Seconds between two looks for deferrals past their timeout.
TIMEOUT_SCAN = 1.0


async def sweep_loop(
    app: Celery,
    call: Callable[..., Awaitable[Any]],
    now: Callable[[], datetime],
    sleep: Callable[[float], Awaitable[None]],
    stopping: Callable[[], bool],
    on_timed_out: Callable[[int], None],
) -> None:
    """Fail timed-out deferrals every TIMEOUT_SCAN s; the whole sweep every sweep interval.

    ``call`` runs a blocking function off the loop; ``now`` is the trigger
    clock (a test's moved clock times deferrals out as ``fast_forward`` does);
    ``sleep`` returns early on a stop, and the loop returns once ``stopping()``.
    A store that is away is retried at the next scan; any other error ends
    the loop (and the triggerer).
    """
    interval = Settings.from_app(app).sweep_interval
    loop = asyncio.get_running_loop()
    next_full = loop.time() + interval
    while True:
        await sleep(TIMEOUT_SCAN)
        if stopping():
            return
        try:
            if loop.time() >= next_full:
                next_full = loop.time() + interval
                report = await call(partial(sweep, app, now(), find_unused_triggers=False))
                timed_out = report.timed_out
            else:
                timed_out = await call(time_out_due, app, now())
        except StoreError as exc:
            logger.warning("sweeping failed (%s); retrying in %.0f s", exc, TIMEOUT_SCAN)
            continue
        if timed_out:
            on_timed_out(timed_out)

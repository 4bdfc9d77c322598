"""Supervision of the triggerer's background loops: never a live process with a dead loop.

Every loop of the runner (claim, heartbeat, fire, mark-resumed, republish)
retries by itself the errors it knows to be transient (a store or broker
away). One that ends, or raises anything else, would leave a process that
heart-beats but never claims again (Airflow #65286). The model is
procrastinate's ``_monitor_side_tasks``: the first loop to finish is logged
with its traceback and the triggerer stops, handing its triggers back, so that
the process exits non-zero and its supervisor (systemd, Kubernetes) restarts it.
"""

from __future__ import annotations

import asyncio
import logging

__all__ = ["supervise"]

logger = logging.getLogger("celery_defer.triggerer")


async def supervise(
    loops: list[asyncio.Task[None]], stop: asyncio.Event, triggerer_id: str
) -> BaseException | None:
    """Wait for ``stop``, or for one of ``loops`` to end on its own.

    Returns None on a requested stop; otherwise sets ``stop`` and returns
    why the first loop ended (its exception, or a RuntimeError saying it
    returned).
    """
    stopping = asyncio.create_task(stop.wait(), name="stop")
    try:
        done, _ = await asyncio.wait([stopping, *loops], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    ended = [task for task in loops if task in done]
    if not ended or (
        stopping in done and not any(t.exception() for t in ended if not t.cancelled())
    ):
        return None  # a requested stop (a loop may have returned on seeing it)
    task = ended[0]
    error = None if task.cancelled() else task.exception()
    logger.error(
        "triggerer %s: its %s loop %s; stopping (its triggers are handed back)",
        triggerer_id,
        task.get_name(),
        f"failed: {error!r}" if error else "ended",
        exc_info=error,
        extra={"triggerer_id": triggerer_id, "loop": task.get_name()},
    )
    stop.set()
    return error or RuntimeError(f"the {task.get_name()} loop of triggerer {triggerer_id} ended")

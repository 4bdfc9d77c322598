"""Running one trigger to its first event, holding it to the contract.

Shared by the triggerer and by eager mode, so a trigger misbehaves in the
same way, with the same message, wherever it runs. Every way a trigger can
break the contract becomes a :class:`~celery_defer.exceptions.TriggerFailed`
that says which way, and ``cleanup()`` runs on every exit.
"""

from __future__ import annotations

import asyncio
import inspect
import logging

from celery_defer.exceptions import TriggerFailed
from celery_defer.triggers.base import BaseTrigger, TriggerEvent

logger = logging.getLogger(__name__)


def describe(trigger: BaseTrigger) -> str:
    """A short name for logs and errors: the trigger's class path."""
    cls = type(trigger)
    return f"{cls.__module__}.{cls.__qualname__}"


async def first_event(trigger: BaseTrigger) -> TriggerEvent:
    """Run ``trigger`` until it yields its first event, then clean it up.

    Cancellation (a triggerer stopping, or handing the trigger over)
    propagates unchanged after ``cleanup()``.
    """
    name = describe(trigger)
    try:
        stream: object = trigger.run()
        if inspect.iscoroutine(stream):
            stream.close()
            raise TriggerFailed(
                f"{name}.run() is a coroutine function: it must be an async generator "
                "that yields TriggerEvent (use 'yield', not 'return')"
            )
        if not inspect.isasyncgen(stream):
            raise TriggerFailed(
                f"{name}.run() must be an async generator, it returned {type(stream).__name__}"
            )
        async for item in stream:
            if not isinstance(item, TriggerEvent):
                raise TriggerFailed(f"{name} yielded {type(item).__name__}, not a TriggerEvent")
            # Only the first event counts; close the generator at its yield.
            # (On every other exit the generator has already finished: an
            # exception or a cancellation propagated out of it.)
            await stream.aclose()
            return item
        raise TriggerFailed(f"{name} ended without yielding an event")
    except (TriggerFailed, asyncio.CancelledError):
        raise  # the runner tells its own cancellations from a trigger's (runner.py)
    except BaseException as exc:
        # Every BaseException, not only Exception: a trigger raising SystemExit,
        # KeyboardInterrupt, GeneratorExit or one of its own must fail its tasks,
        # never end the triggerer's process (asyncio re-raises KeyboardInterrupt and
        # SystemExit out of the loop) nor leave its tasks without an outcome.
        raise TriggerFailed(f"{name} raised {type(exc).__name__}: {exc}") from exc
    finally:
        await _cleanup(trigger, name)


async def _cleanup(trigger: BaseTrigger, name: str) -> None:
    try:
        await trigger.cleanup()
    except asyncio.CancelledError:
        raise
    except BaseException:  # KeyboardInterrupt included: never fatal to the triggerer
        logger.exception("cleanup() of trigger %s raised; ignored", name, extra={"trigger": name})

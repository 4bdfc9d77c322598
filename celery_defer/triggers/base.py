"""The trigger contract: what a trigger is, what it yields, and what it promises.

A trigger is a small async object that waits for one thing (a moment, a file,
another task) and says so by yielding a :class:`TriggerEvent`. It knows
nothing of where it runs or how it is stored: the task side stores what
:meth:`BaseTrigger.serialize` returns, and a triggerer, possibly on another
machine and after a restart, rebuilds the trigger from it and runs it. Keeping
the contract in one small module lets the task side, the triggerer and eager
mode agree on it without importing each other.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

__all__ = ["BaseTrigger", "TriggerEvent"]


class TriggerEvent:
    """What a trigger yields when the thing it waits for has happened.

    The ``payload`` is handed to the resumed task method as ``event.payload``,
    so it must be storable as typed JSON (see :mod:`celery_defer.serialization`).
    Two events are equal when their payloads are; events are not hashable
    because payloads (lists, dicts) often are not.
    """

    __slots__ = ("payload",)

    def __init__(self, payload: Any) -> None:
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        """Events are equal when their payloads are (tests compare them)."""
        if isinstance(other, TriggerEvent):
            return bool(self.payload == other.payload)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        """The payload, as it would be written to build the event."""
        return f"TriggerEvent({self.payload!r})"


class BaseTrigger(abc.ABC):
    """Base class of every trigger.

    A subclass must:

    * be rebuildable from :meth:`serialize`: ``cls(**kwargs)`` with the
      returned kwargs must give an equivalent trigger, in another process;
    * implement :meth:`run` as an async generator (``async def`` with
      ``yield``). The **first** event it yields resumes every task waiting on
      the trigger; anything after it is ignored;
    * be idempotent and free of side effects: after a triggerer dies, another
      one takes its triggers over, so the same trigger may run twice at once
      for a while, and may be started again from scratch after a restart;
    * never block the event loop: one triggerer runs thousands of triggers on
      one loop, so blocking I/O belongs in ``asyncio.to_thread`` or an async
      client.

    :meth:`cleanup` runs on every exit of :meth:`run` (fired, failed,
    cancelled, handed over to another triggerer).

    The base keeps no state of its own, so a subclass that forgets to call
    ``super().__init__()`` still works.
    """

    def __init__(self, **kwargs: Any) -> None:  # noqa: B027 - deliberately empty
        """Accept and ignore keyword arguments, so subclasses may pass theirs up."""

    @classmethod
    def classpath(cls) -> str:
        """The dotted path this class is importable under (module + qualified name)."""
        return f"{cls.__module__}.{cls.__qualname__}"

    @abc.abstractmethod
    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return ``(classpath, kwargs)`` from which the triggerer rebuilds this trigger.

        ``classpath`` must import to a :class:`BaseTrigger` subclass (usually
        :meth:`classpath`), and ``kwargs`` must be storable as typed JSON:
        the triggerer calls ``cls(**kwargs)``.
        """

    def wakes_at(self) -> datetime | None:
        """The moment this trigger fires at, if waiting for that moment is all it does.

        A trigger that returns a moment is a timer: the store keeps it as a row
        until the moment comes within ``defer_timer_horizon`` of now, and only
        then does a triggerer claim it and run it (no coroutine, no capacity
        while it is far away). Default None: claimed and run at once.
        """
        return None

    @abc.abstractmethod
    def run(self) -> AsyncIterator[TriggerEvent]:
        """Wait for the condition, then yield a :class:`TriggerEvent`.

        Write it as ``async def run(self): ... yield TriggerEvent(payload)``.
        Returning an event instead of yielding it, ending without an event, or
        raising fails the waiting tasks with
        :class:`~celery_defer.exceptions.TriggerFailed`. The generator may be
        cancelled at any ``await``.
        """

    async def cleanup(self) -> None:  # noqa: B027 - an optional hook, not abstract
        """Release what :meth:`run` acquired; the default does nothing.

        Called by the triggerer in a ``finally`` on every exit of :meth:`run`,
        including cancellation. Its exceptions are logged, never fatal.
        """

    def __repr__(self) -> str:
        """Show the class and its serialized kwargs; never raises."""
        name = type(self).__qualname__
        try:
            _, kwargs = self.serialize()
            arguments = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
        except Exception:
            return f"<{name}>"
        return f"{name}({arguments})"

"""Every error celery-defer raises, under one base class.

A user can catch :class:`CeleryDeferError` to handle all of ours at once.
:class:`TaskDeferred` is the exception: it is control flow, not an error, and
derives from :class:`BaseException` so that a task's ``except Exception:``
cannot swallow a deferral (a lesson from Airflow's ``TaskDeferred``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery_defer.triggers.base import BaseTrigger


class CeleryDeferError(Exception):
    """Base class of every celery-defer error."""

    def __init__(self, message: str | None = None) -> None:
        # The docstring's first line is the default message, so every error
        # says something useful even when raised bare.
        if message is None:
            message = (type(self).__doc__ or type(self).__name__).strip().splitlines()[0]
        super().__init__(message)


class ConfigurationError(CeleryDeferError, ValueError):
    """A celery-defer setting has a value it cannot use."""


class InvalidDeferral(CeleryDeferError, ValueError):
    """The deferral was refused before anything was stored."""


class SerializationError(InvalidDeferral, TypeError):
    """A value cannot be stored as typed JSON."""


class EncryptionError(CeleryDeferError):
    """A stored value is encrypted and no configured key (defer_encryption_keys) opens it."""


class StoreError(CeleryDeferError):
    """The deferral store failed (unreachable, or a query error)."""


class SchemaMissing(StoreError):
    """The deferral store has no schema: run ``celery -A proj defer init-db``."""


class TriggerTimeout(CeleryDeferError):
    """The deferral timed out before its trigger fired."""


class TriggerFailed(CeleryDeferError):
    """The trigger raised, misbehaved, or ended without yielding an event."""


class TaskDeferred(BaseException):
    """Raised to hand the rest of a task to a trigger and free the worker.

    May be raised directly, from any call depth inside the task; the usual way
    is ``self.defer(...)`` on a :class:`~celery_defer.DeferrableTask`.
    ``timeout`` is a :class:`~datetime.timedelta` or a number of seconds.
    """

    def __init__(
        self,
        trigger: BaseTrigger,
        method_name: str = "run",
        kwargs: dict[str, Any] | None = None,
        timeout: timedelta | float | int | None = None,
    ) -> None:
        super().__init__(trigger, method_name, kwargs, timeout)
        self.trigger = trigger
        self.method_name = method_name
        self.kwargs = kwargs
        self.timeout = timeout

    def __repr__(self) -> str:
        """The deferral's parts, as a developer reading a log needs them."""
        return (
            f"TaskDeferred(trigger={self.trigger!r}, method_name={self.method_name!r}, "
            f"timeout={self.timeout!r})"
        )


class InvalidEvent(CeleryDeferError, ValueError):
    """The external event was refused before anything was stored."""

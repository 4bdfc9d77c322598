"""Checks made when a task defers, before anything is stored.

A deferral that would fail later (at the triggerer, or when the task resumes
hours from now) is refused now, with an error naming the problem, while the
user's code and data are still on the stack.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from celery import Task

from celery_defer import serialization
from celery_defer.exceptions import InvalidDeferral, TaskDeferred
from celery_defer.triggers.base import BaseTrigger

#: Parameter name under which the resumed method receives the trigger's event.
EVENT_KWARG = "event"


@dataclass(frozen=True)
class CheckedDeferral:
    """A deferral that passed every check, in the form the store takes."""

    method: str
    kwargs: str
    trigger_classpath: str
    trigger_kwargs: str
    timeout_at: datetime | None
    #: The trigger's moment if it is a timer (``BaseTrigger.wakes_at``), aware UTC.
    wakes_at: datetime | None = None


def check_deferral(task: Task, deferred: TaskDeferred, max_bytes: int) -> CheckedDeferral:
    """Validate ``deferred`` for ``task``; raise InvalidDeferral naming the problem."""
    check_method(task, deferred.method_name)
    kwargs = deferred.kwargs if deferred.kwargs is not None else {}
    if not isinstance(kwargs, dict):
        raise InvalidDeferral(f"kwargs must be a dict, got {type(kwargs).__name__}")
    if EVENT_KWARG in kwargs:
        raise InvalidDeferral(
            f"kwargs must not contain {EVENT_KWARG!r}: the resumed method receives the "
            "trigger's event under that name"
        )
    kwargs_text = _bounded(serialization.dumps(kwargs, where="kwargs"), "kwargs", max_bytes)
    classpath, trigger_kwargs = check_trigger(deferred.trigger)
    trigger_text = _bounded(
        serialization.dumps(trigger_kwargs, where="trigger kwargs"), "trigger kwargs", max_bytes
    )
    return CheckedDeferral(
        method=deferred.method_name,
        kwargs=kwargs_text,
        trigger_classpath=classpath,
        trigger_kwargs=trigger_text,
        timeout_at=timeout_moment(deferred.timeout),
        wakes_at=_wake_moment(deferred.trigger),
    )


def _wake_moment(trigger: BaseTrigger) -> datetime | None:
    """``trigger.wakes_at()``, checked: an aware datetime (made UTC) or None."""
    moment = trigger.wakes_at()
    if moment is None:
        return None
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise InvalidDeferral(
            f"{type(trigger).__qualname__}.wakes_at() must return an aware datetime or None, "
            f"got {moment!r}"
        )
    return moment.astimezone(timezone.utc)


def check_method(task: Task, name: Any) -> None:
    """Refuse a method name that cannot, or must not, be resumed into."""
    if not isinstance(name, str) or not name:
        raise InvalidDeferral(f"method_name must be a non-empty string, got {name!r}")
    if name.startswith("__"):
        raise InvalidDeferral(f"method_name {name!r} is private: resume into a public method")
    if name != "run" and hasattr(Task, name):
        raise InvalidDeferral(
            f"method_name {name!r} is part of Celery's Task API, not a method of task {task.name!r}"
        )
    # DeferrableTask's own methods (defer, and its internals) are not resumable
    # either: resuming into them failed only later, at the resume, or never ran.
    owner = next((cls for cls in type(task).__mro__ if name in vars(cls)), None)
    if owner is not None and owner.__module__.startswith("celery_defer."):
        raise InvalidDeferral(
            f"method_name {name!r} is part of {owner.__name__}, not a method of task {task.name!r}"
        )
    method = getattr(task, name, None)
    if method is None:
        raise InvalidDeferral(f"task {task.name!r} has no method {name!r} to resume into")
    if not callable(method):
        raise InvalidDeferral(f"{name!r} of task {task.name!r} is not callable")


def check_trigger(trigger: Any) -> tuple[str, dict[str, Any]]:
    """Refuse a trigger the triggerer could not rebuild; return its serialized form."""
    if isinstance(trigger, type) and issubclass(trigger, BaseTrigger):
        raise InvalidDeferral(
            f"trigger must be a celery_defer.BaseTrigger instance, got the class "
            f"{trigger.__name__}: pass an instance, {trigger.__name__}(...)"
        )
    if not isinstance(trigger, BaseTrigger):
        raise InvalidDeferral(
            f"trigger must be a celery_defer.BaseTrigger instance, got {type(trigger).__name__}"
        )
    try:
        serialized = trigger.serialize()
    except Exception as exc:
        raise InvalidDeferral(f"{type(trigger).__name__}.serialize() raised {exc!r}") from exc
    if (
        not isinstance(serialized, tuple)
        or len(serialized) != 2
        or not isinstance(serialized[0], str)
        or not isinstance(serialized[1], dict)
    ):
        raise InvalidDeferral(
            f"{type(trigger).__name__}.serialize() must return (classpath, kwargs dict), "
            f"got {serialized!r}"
        )
    classpath, kwargs = serialized
    resolve_trigger_class(classpath)
    return classpath, kwargs


def resolve_trigger_class(classpath: str) -> type[BaseTrigger]:
    """Import ``classpath``; refuse anything that is not a BaseTrigger subclass.

    This is a security boundary: a stored classpath is never called unless
    it names a trigger class.
    """
    module_name, _, attr = classpath.rpartition(".")
    if not module_name:
        raise InvalidDeferral(f"trigger classpath {classpath!r} is not a dotted path")
    try:
        found = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise InvalidDeferral(f"trigger classpath {classpath!r} does not import: {exc}") from exc
    if not (isinstance(found, type) and issubclass(found, BaseTrigger)):
        raise InvalidDeferral(f"trigger classpath {classpath!r} is not a BaseTrigger subclass")
    return found


def timeout_moment(timeout: Any) -> datetime | None:
    """The aware UTC moment a ``timeout`` (timedelta or seconds) from now ends."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (timedelta, int, float)):
        raise InvalidDeferral(
            f"timeout must be a timedelta or a number of seconds, got {type(timeout).__name__}"
        )
    delta = timeout if isinstance(timeout, timedelta) else _seconds(timeout)
    if delta < timedelta(0):
        raise InvalidDeferral(f"timeout must not be negative, got {timeout!r}")
    try:
        return datetime.now(timezone.utc) + delta
    except OverflowError:  # e.g. timedelta.max: a bare OverflowError would not name the timeout
        raise InvalidDeferral(f"timeout {timeout!r} from now is out of range") from None


def _seconds(value: float) -> timedelta:
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidDeferral(f"timeout must be a finite number of seconds, got {value!r}")
    try:
        return timedelta(seconds=value)
    except OverflowError:
        raise InvalidDeferral(f"timeout {value!r} from now is out of range") from None


def _bounded(text: str, what: str, max_bytes: int) -> str:
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise InvalidDeferral(
            f"{what} take {size} bytes serialized, over the limit of {max_bytes} "
            "(defer_max_kwargs_bytes): store large data elsewhere and pass a reference"
        )
    return text

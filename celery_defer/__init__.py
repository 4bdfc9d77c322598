"""celery-defer: deferrable tasks for Celery.

A :class:`DeferrableTask` hands its wait to a trigger and leaves the worker;
a :class:`Triggerer` runs thousands of triggers in one event loop; when one
fires, the task resumes on a worker under its original id.
"""

from celery_defer.broker import filesystem as _filesystem  # noqa: F401  (registers defer-filesystem://)
from celery_defer.exceptions import (
    CeleryDeferError,
    InvalidDeferral,
    InvalidEvent,
    TaskDeferred,
    TriggerFailed,
    TriggerTimeout,
)
from celery_defer.external_events import send_event
from celery_defer.task import DEFERRED, DeferrableTask
from celery_defer.triggerer import Triggerer
from celery_defer.triggers import BaseTrigger, TriggerEvent
from celery_defer.wiring import install

__version__ = "0.1.0"

__all__ = [
    "DEFERRED",
    "BaseTrigger",
    "CeleryDeferError",
    "DeferrableTask",
    "InvalidDeferral",
    "InvalidEvent",
    "TaskDeferred",
    "TriggerEvent",
    "TriggerFailed",
    "TriggerTimeout",
    "Triggerer",
    "install",
    "send_event",
]

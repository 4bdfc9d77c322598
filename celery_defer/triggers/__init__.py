"""Triggers: the contract (:class:`BaseTrigger`, :class:`TriggerEvent`) and the built-ins.

Users import from here (``from celery_defer.triggers import TimeDeltaTrigger``),
and stored rows name triggers by these public paths, so the modules behind them
can move without breaking deferrals already in the database.
"""

from __future__ import annotations

from celery_defer.triggers.base import BaseTrigger, TriggerEvent
from celery_defer.triggers.external_event import ExternalEventTrigger
from celery_defer.triggers.filesystem import FileTrigger
from celery_defer.triggers.task_result import TaskResultTrigger
from celery_defer.triggers.temporal import DateTimeTrigger, TimeDeltaTrigger

__all__ = [
    "BaseTrigger",
    "DateTimeTrigger",
    "ExternalEventTrigger",
    "FileTrigger",
    "TaskResultTrigger",
    "TimeDeltaTrigger",
    "TriggerEvent",
]

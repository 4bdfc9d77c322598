"""The triggerer: a process running thousands of triggers in one event loop."""

from celery_defer.triggerer.service import Triggerer

__all__ = ["Triggerer"]

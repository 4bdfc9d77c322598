"""Broker plumbing: what celery-defer sends and hears on the broker besides tasks.

Every message here is a hint, never the source of truth (that is the store):
new-trigger notices (:mod:`~celery_defer.broker.notices`), external-event hints
(:mod:`~celery_defer.broker.event_hints`), revoke broadcasts heard by the
triggerer (:mod:`~celery_defer.broker.revocations`), all consumed by one
reconnecting :class:`~celery_defer.broker.listener.BrokerListener` each. Also
here: Celery monitoring events for deferrals
(:mod:`~celery_defer.broker.monitoring`) and the crash-safe filesystem
transport behind ``defer-filesystem://`` (:mod:`~celery_defer.broker.filesystem`).

Nothing here imports the store, the task class or the triggerer.
"""

"""What a worker does besides running a task body: resuming it, and riding out store outages.

:class:`~celery_defer.task.DeferrableTask` dispatches here; nothing in this
package knows the triggerer.
"""

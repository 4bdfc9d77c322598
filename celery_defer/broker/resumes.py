r"""Publishing resumes: a fired (or timed-out) deferral's task re-sent under its own id.

The triggerer and the sweep hand stored :class:`~celery_defer.store.ResumeOrder`\ s
here; each becomes one ``send_task`` with the options of the request snapshot
and the :data:`~celery_defer.wire.RESUME_HEADER` header (the wire format is
:mod:`celery_defer.wire`). The order's kwargs travel as stored, never decoded
here: sealed values stay sealed all the way to the worker that resumes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celery._state import task_join_will_block
from kombu.exceptions import OperationalError

from celery_defer.store.records import ResumeOrder
from celery_defer.wire import (
    FAIL_METHOD,
    RESUME_HEADER,
    Outcome,
    ResumeHeader,
    corrupt_message,
    restore_request,
)

if TYPE_CHECKING:
    from celery import Celery

logger = logging.getLogger(__name__)


def publish(app: Celery, orders: Sequence[ResumeOrder]) -> list[ResumeOrder]:
    """Send each order's resume message; return the orders that were sent.

    Never raises. An order that cannot be sent (undecodable snapshot) is
    logged and left out; when the broker itself is unreachable, the rest of
    the batch is left out at once rather than each waiting out the publish
    retries. Orders left out stay ``firing``: the triggerer tries them again
    with backoff (:func:`publish_until_unreachable`), and the sweep re-sends
    what a dead triggerer left, so nothing is lost.
    """
    return publish_until_unreachable(app, orders)[0]


def publish_until_unreachable(
    app: Celery, orders: Sequence[ResumeOrder]
) -> tuple[list[ResumeOrder], list[ResumeOrder]]:
    """:func:`publish`, also returning the orders left out because the broker was away."""
    sent: list[ResumeOrder] = []
    position = 0  # orders before it were sent or given up on
    try:
        with app.producer_or_acquire() as producer:
            connection = getattr(producer, "connection", None)
            connection_errors = (*getattr(connection, "connection_errors", ()), OperationalError)
            for position, order in enumerate(orders):  # noqa: B007 - read after the loop
                try:
                    _send(app, order, producer)
                except connection_errors:
                    raise
                except Exception:
                    logger.exception(
                        "could not publish the resume of task %s (%s); the sweep retries it",
                        order.task_id,
                        order.task_name,
                        extra={"task_id": order.task_id, "task_name": order.task_name},
                    )
                    continue
                sent.append(order)
                _unsubscribe(app, order.task_id)
            position = len(orders)
    except Exception as exc:  # the broker, or acquiring/releasing the producer
        left = list(orders[position:])
        logger.warning(
            "broker unreachable (%s); %d resumes wait for the next attempt", exc, len(left)
        )
        return sent, left
    return sent, []


def _send(app: Celery, order: ResumeOrder, producer: Any) -> None:
    options, header = _decoded(order)
    headers = dict(options.pop("headers", None) or {})
    headers[RESUME_HEADER] = header
    app.send_task(
        order.task_name,
        args=(),
        kwargs={},
        task_id=order.task_id,
        headers=headers,
        producer=producer,
        add_to_parent=False,
        **options,
    )


def _decoded(order: ResumeOrder) -> tuple[dict[str, Any], dict[str, Any]]:
    """The send options and the resume header of ``order``.

    A stored row that does not decode (damaged, or edited by hand) never
    will: left ``firing``, the sweep would re-send it for ever while the task
    reads DEFERRED. It is resumed on the failure path instead, so the task
    fails with a :class:`~celery_defer.exceptions.StoreError` naming the
    damaged column (its stored options may be what is lost: default routing).
    """
    part = "request"
    try:
        options = restore_request(order.request)
        part = "outcome"
        header = ResumeHeader.stored(order.generation, order.method, order.outcome, order.kwargs)
        return options, header
    except (ValueError, KeyError, TypeError) as exc:
        message = corrupt_message(order.task_name, order.task_id, part, exc)
    logger.error(message, extra={"task_id": order.task_id, "task_name": order.task_name})
    failure = ResumeHeader(order.generation, FAIL_METHOD, Outcome.error("corrupt", message))
    return {}, failure.data()


def _unsubscribe(app: Celery, task_id: str) -> None:
    """Drop the result subscription ``send_task`` may have opened for ``task_id``.

    With the Redis result backend, every ``send_task`` subscribes the sender
    to the task's result channel unless the process is marked as one that
    never joins results (celery/backends/redis.py ``on_task_call``; celery
    #6963, #4885: memory growth). The ``celery triggerer`` command marks its
    process so; an embedded triggerer shares its process with code that may
    wait for results, so it unsubscribes each resume instead.
    """
    if task_join_will_block():
        return
    consumer = getattr(app.backend, "result_consumer", None)
    cancel = getattr(consumer, "cancel_for", None)
    if cancel is None:
        return
    try:
        cancel(task_id)
    except Exception:  # never let bookkeeping fail a publish
        logger.debug("could not unsubscribe from the result of %s", task_id, exc_info=True)

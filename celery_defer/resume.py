"""Re-sending a deferred task under its own id.

Modelled on Celery's ``Task.retry`` → ``signature_from_request``
(celery/app/task.py): the request's execution options (root/parent ids, group,
chord, chain, link, link_error, headers, time limits, expires, retries,
reply_to) plus the routing and priority from ``delivery_info`` are captured
at defer time and handed back to ``send_task`` at resume time, so the resumed
execution is the same Celery task that deferred.

The snapshot holds users' signatures (chain, callbacks) with their
arguments. It is stored as our typed JSON (:mod:`celery_defer.serialization`),
never with a serializer the stored text names: a row is data an attacker with
database access may have written, and a row that could say
``application/x-python-serialize`` would be unpickled (code execution). The
same typed JSON is the only decoder on the way back, whatever the row claims.

What the resumed worker needs to know travels in one message header,
:data:`RESUME_HEADER`: the method to call, the deferral's generation (the
worker drops a resume whose generation is stale), and the trigger's outcome.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from celery._state import task_join_will_block
from kombu.exceptions import OperationalError
from kombu.utils import json as kombu_json

from celery_defer import serialization
from celery_defer.store.records import ResumeOrder

if TYPE_CHECKING:
    from celery import Celery, Task
    from celery.app.task import Context

logger = logging.getLogger(__name__)

#: The message header that marks a resume (also visible as ``request.celery_defer``).
RESUME_HEADER = "celery_defer"

#: A plain message header carrying a task's total deadline (ISO) across its resumes.
DEADLINE_HEADER = "celery_defer_deadline"

#: The ``method`` a failure resume names: the worker raises instead of calling.
FAIL_METHOD = "__fail__"

# Options Celery fills in itself on every send, or that we set explicitly.
_NOT_REPLAYED = ("task_id", "ignore_result")


def snapshot_request(task: Task, request: Context, deadline_at: datetime | None = None) -> str:
    """Capture what is needed to re-send ``request`` later, as text."""
    if hasattr(request, "as_execution_options"):
        options: dict[str, Any] = dict(request.as_execution_options())
    else:  # Celery < 5.3.5 has no as_execution_options(): same fields by hand.
        limit_hard, limit_soft = request.timelimit or (None, None)
        options = {
            "root_id": request.root_id,
            "parent_id": request.parent_id,
            "group_id": request.group,
            "group_index": getattr(request, "group_index", None),
            "shadow": request.shadow,
            "chord": request.chord,
            "chain": request.chain,
            "link": request.callbacks,
            "link_error": request.errbacks,
            "expires": request.expires,
            "soft_time_limit": limit_soft,
            "time_limit": limit_hard,
            "headers": request.headers,
            "retries": request.retries,
            "reply_to": request.reply_to,
        }
    for key in _NOT_REPLAYED:
        options.pop(key, None)
    headers = dict(options.get("headers") or {})
    headers.pop(RESUME_HEADER, None)
    if deadline_at is not None:
        headers[DEADLINE_HEADER] = deadline_at.isoformat()
    options["headers"] = headers
    options["ignore_result"] = bool(getattr(request, "ignore_result", False) or task.ignore_result)
    delivery_info = request.delivery_info or {}
    if delivery_info.get("priority") is not None:
        options["priority"] = delivery_info["priority"]
    exchange, routing_key = delivery_info.get("exchange"), delivery_info.get("routing_key")
    if exchange == "" and routing_key:
        options["queue"] = routing_key  # sent to the default (anonymous) exchange
    elif routing_key:
        options["exchange"] = exchange
        options["routing_key"] = routing_key
    options = {key: value for key, value in options.items() if value is not None}
    return serialization.dumps(options, where="request (chain, callbacks and headers)")


#: The options a snapshot may hold: what ``Context.as_execution_options`` gives (celery/app/
#: task.py) plus routing and priority. Anything else in a row (``args``, ``task_id``,
#: ``serializer``...) would change what the resume runs or how it is sent: refused.
_SEND_OPTIONS = frozenset(
    {
        "root_id", "parent_id", "group_id", "group_index", "shadow", "chord", "chain", "link",
        "link_error", "expires", "soft_time_limit", "time_limit", "headers", "retries",
        "reply_to", "replaced_task_nesting", "origin", "stamped_headers", "ignore_result",
        "priority", "queue", "exchange", "routing_key",
    }
)  # fmt: skip

#: ``send_task``'s own parameters, which no stamp may be named after.
_SEND_TASK_OWN = frozenset(
    {
        "name", "args", "kwargs", "countdown", "eta", "task_id", "producer", "connection",
        "router", "result_cls", "add_to_parent", "serializer", "compression", "content_type",
        "content_encoding", "retry", "retry_policy", "declare", "publisher", "exchange_type",
    }
)  # fmt: skip

#: The keys of a snapshot written before 0.2 (kombu-serialized options in a JSON envelope).
_LEGACY_ENVELOPE = {"content_type", "encoding", "body", "wrap"}


def restore_request(snapshot: str) -> dict[str, Any]:
    """The ``send_task`` options a :func:`snapshot_request` text stands for.

    Decoded with typed JSON only. A snapshot of an older release (an
    envelope naming a kombu content type) is read only when it says
    ``application/json`` as text, with kombu's JSON decoder (which knows a
    fixed set of value types and runs no code); any other content type is
    refused, never handed to the serializer it names.
    """
    data = serialization.loads(snapshot, where="request")
    if isinstance(data, dict) and set(data) == _LEGACY_ENVELOPE:
        data = _legacy_options(data)
    if not isinstance(data, dict):
        raise TypeError(f"a snapshot must be an object of send options, not {type(data).__name__}")
    stamps = data.get("stamped_headers") or []
    if not (isinstance(stamps, list) and all(isinstance(name, str) for name in stamps)):
        raise TypeError(f"stamped_headers must be a list of names, not {stamps!r}")
    unknown = sorted(set(data) - _SEND_OPTIONS - (set(stamps) - _SEND_TASK_OWN))
    if unknown:
        raise ValueError(f"unexpected send options {unknown} (a snapshot never holds them)")
    if not isinstance(data.get("headers", {}), dict):
        raise TypeError("headers must be an object")
    return data


def _legacy_options(envelope: dict[str, Any]) -> Any:
    content_type = envelope["content_type"]
    if content_type != "application/json" or envelope["wrap"] != "text":
        raise ValueError(
            f"refused request snapshot with content type {content_type!r}: "
            "only JSON is ever decoded from the store"
        )
    body = envelope["body"]
    if not isinstance(body, str):
        raise TypeError("the snapshot body is not text")
    return kombu_json.loads(body)


def event_outcome(payload: Any) -> str:
    """The stored outcome of a trigger that yielded ``payload``."""
    return serialization.dumps({"event": payload}, where="event payload")


def error_outcome(kind: str, message: str) -> str:
    """The stored outcome of a trigger that failed (``failed``) or timed out (``timeout``)."""
    return serialization.dumps({"error": {"kind": kind, "message": message}})


def resume_header(order: ResumeOrder) -> dict[str, Any]:
    """The header a resume message carries."""
    return {
        "generation": order.generation,
        "method": order.method,
        "outcome": json.loads(order.outcome),
    }


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
    options, kwargs, header = _decoded(order)
    headers = dict(options.pop("headers", None) or {})
    headers[RESUME_HEADER] = header
    app.send_task(
        order.task_name,
        args=(),
        kwargs=kwargs,
        task_id=order.task_id,
        headers=headers,
        producer=producer,
        add_to_parent=False,
        **options,
    )


def _decoded(order: ResumeOrder) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The send options, kwargs and resume header of ``order``.

    A stored row that does not decode (damaged, or edited by hand) never
    will: left ``firing``, the sweep would re-send it for ever while the task
    reads DEFERRED. It is resumed on the failure path instead, so the task
    fails with a :class:`~celery_defer.exceptions.StoreError` naming the
    damaged column (its stored options may be what is lost: default routing).
    """
    part = "request"
    try:
        options = restore_request(order.request)
        part = "kwargs"
        kwargs = json.loads(order.kwargs)
        if not isinstance(kwargs, dict):
            raise TypeError(f"a JSON {type(kwargs).__name__}, not an object")
        part = "outcome"
        return options, kwargs, resume_header(order)
    except (ValueError, KeyError, TypeError) as exc:
        message = (
            f"the stored deferral of task {order.task_name}[{order.task_id}] is corrupt "
            f"({part}: {exc!r}): it cannot be resumed"
        )
    logger.error(message, extra={"task_id": order.task_id, "task_name": order.task_name})
    error = {"error": {"kind": "corrupt", "message": message}}
    header = {"generation": order.generation, "method": FAIL_METHOD, "outcome": error}
    return {}, {}, header


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

"""The wire format: everything celery-defer puts on the broker or in a table as data.

One module owns it so that the writer and the reader of each piece sit side by
side: the message headers of a resume (and of the deadline, resend and reclaim
protocols) with the one function that reads a header, the *outcome* of a
trigger (an event, or an error kind and message) with its parse and raise, and
the request snapshot a resume is re-sent with.

Everything stored is typed JSON (:mod:`celery_defer.serialization`) and is
decoded with it only, whatever a row or message claims to be: a store row is
data an attacker with database access may have written, and a row that could
name its own decoder (``application/x-python-serialize``) would run code.

Re-sending under the same id follows Celery's ``Task.retry`` →
``signature_from_request`` (celery/app/task.py): the request's execution
options (root/parent ids, group, chord, chain, link, link_error, headers, time
limits, expires, retries, reply_to) plus routing and priority from
``delivery_info`` are captured at defer time and handed back to ``send_task``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, NoReturn

from kombu.utils import json as kombu_json

from celery_defer import serialization
from celery_defer.exceptions import InvalidDeferral, StoreError, TriggerFailed, TriggerTimeout

if TYPE_CHECKING:
    from celery import Task
    from celery.app.task import Context

__all__ = [
    "DEADLINE_HEADER",
    "FAIL_METHOD",
    "RECLAIM_HEADER",
    "RESEND_HEADER",
    "RESUME_HEADER",
    "Outcome",
    "ResumeHeader",
    "deadline_of",
    "header_of",
    "restore_request",
    "snapshot_request",
]

#: The message header that marks a resume (also visible as ``request.celery_defer``).
RESUME_HEADER = "celery_defer"

#: A plain message header carrying a task's total deadline (ISO) across its resumes.
DEADLINE_HEADER = "celery_defer_deadline"

#: Header counting how often an execution was re-sent because the store was unreachable.
RESEND_HEADER = "celery_defer_resend"

#: Header of a resume this worker had claimed and re-sent (the store failed before the
#: method's next deferral was stored): its one copy may claim the ``running`` row again.
RECLAIM_HEADER = "celery_defer_reclaim"

#: The ``method`` a failure resume names: the worker raises instead of calling.
FAIL_METHOD = "__fail__"


def header_of(request: Any, name: str) -> Any:
    """A custom message header: in ``request.headers``, or a request attribute.

    Celery shows a custom header both ways (protocol 1 puts it on the request
    only); this is the one reader of every header above.
    """
    headers = request.headers
    value = headers.get(name) if headers else None
    return getattr(request, name, None) if value is None else value


def deadline_of(request: Any) -> datetime | None:
    """The total deadline a task's messages carry, or None."""
    value = header_of(request, DEADLINE_HEADER)
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def corrupt_message(task_name: str, task_id: str, part: str, error: BaseException) -> str:
    """The error a task fails with when its stored deferral's ``part`` does not decode."""
    return (
        f"the stored deferral of task {task_name}[{task_id}] is corrupt "
        f"({part}: {error!r}): it cannot be resumed"
    )


# -- outcomes -------------------------------------------------------------------------------

#: The exception a task fails with, per error kind (``corrupt``: a stored deferral that no
#: longer decodes).
_ERRORS: dict[str, type[Exception]] = {
    "timeout": TriggerTimeout,
    "failed": TriggerFailed,
    "corrupt": StoreError,
}


@dataclass(frozen=True)
class Outcome:
    """How a wait ended: the trigger's event payload, or an error (kind and message).

    Written by the triggerer (an event, a failed trigger), the sweep (a
    timeout) and the resume publisher (a row that no longer decodes); read by
    the worker that resumes the task.
    """

    payload: Any = None
    error_kind: str | None = None
    error_message: str = ""

    @classmethod
    def event(cls, payload: Any) -> Outcome:
        """A trigger yielded ``payload``."""
        return cls(payload=payload)

    @classmethod
    def error(cls, kind: str, message: str) -> Outcome:
        """The wait failed: ``kind`` is ``failed``, ``timeout`` or ``corrupt``."""
        return cls(error_kind=kind, error_message=message)

    def data(self) -> dict[str, Any]:
        """The plain-JSON form carried in a resume header."""
        if self.error_kind is not None:
            return {"error": {"kind": self.error_kind, "message": self.error_message}}
        return {"event": serialization.encode(self.payload, where="event payload")}

    def dumps(self) -> str:
        """The stored text (typed JSON); refuses a payload typed JSON cannot hold."""
        if self.error_kind is not None:
            return serialization.dumps(self.data())
        return serialization.dumps({"event": self.payload}, where="event payload")

    @classmethod
    def parse(cls, data: Any) -> Outcome:
        """The outcome a resume header's (or a row's) plain JSON ``data`` stands for."""
        if not isinstance(data, dict):
            return cls.error("failed", "the resume carries no outcome")
        error = data.get("error")
        if error is not None:
            error = error if isinstance(error, dict) else {}
            return cls.error(str(error.get("kind")), str(error.get("message")))
        return cls.event(serialization.decode(data.get("event"), where="event payload"))

    def raise_error(self) -> NoReturn:
        """Raise the exception this (error) outcome stands for."""
        raise _ERRORS.get(str(self.error_kind), TriggerFailed)(self.error_message)


@dataclass(frozen=True)
class ResumeHeader:
    """What a resume message tells the worker, in :data:`RESUME_HEADER`.

    ``kwargs`` is the stored text of the method's kwargs exactly as the store
    holds it (typed JSON, sealed when keys are configured): kwargs keep one
    shape from the deferring task to the worker that resumes it, and the
    triggerer never decodes them.
    """

    generation: int
    method: str
    outcome: Outcome
    kwargs: str | None = None

    def data(self) -> dict[str, Any]:
        """The plain-JSON header value."""
        data = {
            "generation": self.generation,
            "method": self.method,
            "outcome": self.outcome.data(),
        }
        if self.kwargs is not None:
            data["kwargs"] = self.kwargs
        return data

    @staticmethod
    def stored(generation: int, method: str, outcome_text: str, kwargs: str) -> dict[str, Any]:
        """The header value of a stored row, as plain JSON, decoding neither its outcome's
        payload nor its kwargs (the publisher passes them through; the worker decodes)."""
        outcome = json.loads(outcome_text)
        if not isinstance(outcome, dict):
            raise TypeError(f"the stored outcome is a JSON {type(outcome).__name__}")
        return {"generation": generation, "method": method, "outcome": outcome, "kwargs": kwargs}

    @classmethod
    def of(cls, request: Any) -> ResumeHeader | None:
        """The resume header of ``request``; None for a first execution.

        A malformed header raises :class:`~celery_defer.exceptions.InvalidDeferral`.
        """
        data = header_of(request, RESUME_HEADER)
        if data is None:
            return None
        generation = data.get("generation") if isinstance(data, dict) else None
        method = data.get("method") if isinstance(data, dict) else None
        kwargs = data.get("kwargs") if isinstance(data, dict) else None
        if (
            not isinstance(generation, int)
            or not isinstance(method, str)
            or not isinstance(kwargs, (str, type(None)))
        ):
            raise InvalidDeferral(f"malformed {RESUME_HEADER} header: {data!r}")
        return cls(generation, method, Outcome.parse(data.get("outcome")), kwargs)

    @staticmethod
    def generation_of(request: Any) -> int | None:
        """The generation a request's resume header names, without parsing the rest."""
        data = header_of(request, RESUME_HEADER)
        generation = data.get("generation") if isinstance(data, dict) else None
        return generation if isinstance(generation, int) else None


# -- the request snapshot ----------------------------------------------------------------------

#: Options Celery fills in itself on every send, or that we set explicitly.
_NOT_REPLAYED = ("task_id", "ignore_result")

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


def snapshot_request(task: Task, request: Context, deadline_at: datetime | None = None) -> str:
    """Capture what is needed to re-send ``request`` later, as typed-JSON text."""
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

"""Ending an execution that records nothing (a deferral, a dropped duplicate) cheaply.

``celery.exceptions.Ignore`` is Celery's way to end an execution with no
result, no callbacks and no chord count, and we keep its outcome. Its price
is not: Celery's tracer (celery/app/trace.py, ``build_tracer``) handles it by
building billiard's ``ExceptionInfo`` twice and formatting the traceback
twice, and each ``ExceptionInfo`` lists the code positions of every frame,
the tracer's own function among them (2,341 positions on Python 3.11). That
was a fifth of a worker's CPU for each defer + resume.

So :class:`~celery_defer.task.DeferrableTask` wraps the tracer Celery builds
for it (the task's ``__trace__``, see :func:`wrap_tracer`). Inside that
wrapper an execution ends with :class:`ExecutionEnded`, a ``BaseException``:
the tracer's ``except Exception`` clauses let it pass, its ``finally``
blocks still run (the ``task_postrun`` signal, popping the request, the
backend's cleanup), and the wrapper returns exactly what the tracer returns
for ``Ignore`` — the worker then acks the message and records nothing. One
difference is visible: ``task_postrun`` receivers get ``state=None`` for
such an execution, where Celery's ``Ignore`` path gives ``"IGNORED"``.

Outside the wrapper (a tracer Celery built some other way) :func:`end_execution`
raises plain ``Ignore``, which is always correct.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any, NoReturn

from billiard.einfo import ExceptionInfo
from celery.app.trace import IGNORED, TraceInfo, trace_ok_t
from celery.exceptions import Ignore

__all__ = ["ExecutionEnded", "end_execution", "wrap_tracer"]

# Whether the running execution is inside a wrapped tracer (set per call:
# thread, greenlet and asyncio pools each get their own context).
_inside_wrapped_tracer: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "celery_defer_inside_wrapped_tracer", default=False
)


class ExecutionEnded(BaseException):
    """Ends an execution with Celery's ``Ignore`` outcome, without formatting a traceback.

    A ``BaseException`` so that the tracer's ``except Exception`` clauses do
    not catch it; only the wrapper :func:`wrap_tracer` installs does.
    """


def end_execution() -> NoReturn:
    """End this execution recording nothing: cheaply inside a wrapped tracer, else ``Ignore``."""
    if _inside_wrapped_tracer.get():
        raise ExecutionEnded()
    raise Ignore()


def _ignore_info() -> tuple[Ignore, Any]:
    """An ``Ignore`` and its billiard ExceptionInfo, raised here: one small frame to describe."""
    try:
        # Not chained to the ExecutionEnded being handled: its frames are not described either.
        raise Ignore() from None
    except Ignore as ignored:
        return ignored, ExceptionInfo(internal=True)


def wrap_tracer(tracer: Callable[..., Any]) -> Callable[..., Any]:
    """The tracer ``tracer`` that turns :class:`ExecutionEnded` into Celery's ``Ignore`` result."""
    if getattr(tracer, "__wrapped_for_defer__", False):
        return tracer

    def trace(uuid: str, args: Any, kwargs: Any, request: Any = None) -> Any:
        token = _inside_wrapped_tracer.set(True)
        try:
            return tracer(uuid, args, kwargs, request)
        except ExecutionEnded:
            # What the tracer returns from its ``except Ignore`` clause: the
            # pool hands ``R`` (an ExceptionInfo holding Ignore) to the
            # worker's request, which acks the message and records nothing.
            ignored, info = _ignore_info()
            return trace_ok_t(info, TraceInfo(IGNORED, ignored), None, None)
        finally:
            _inside_wrapped_tracer.reset(token)

    trace.__wrapped_for_defer__ = True  # type: ignore[attr-defined]
    trace.__wrapped__ = tracer  # type: ignore[attr-defined]
    return trace

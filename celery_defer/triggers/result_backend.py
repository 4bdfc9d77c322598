"""Reading other tasks' results for :class:`~celery_defer.triggers.TaskResultTrigger`.

One call looks up many task ids: on key-value backends (Redis, memcached,
files, ...) Celery's own ``get_many`` does it in one ``mget`` round trip; on
the others (databases, ...) each id is read in turn, still in one call, so a
caller running it on a thread makes one thread hop per batch. The results are
turned into plain, storable payloads: the state, the value or the error.

Blocking: call it off the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celery import states
from celery.backends.base import DisabledBackend, KeyValueStoreBackend
from celery.backends.rpc import RPCBackend

from celery_defer import serialization
from celery_defer.exceptions import SerializationError, TriggerFailed

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["fetch_ready", "result_payload"]

_READY = frozenset(states.READY_STATES)


def fetch_ready(app: Celery, task_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The payloads of those of ``task_ids`` that are ready (absent: not yet).

    Raises :class:`TriggerFailed` when the app's result backend cannot be
    read by another process (``rpc://``, or no backend at all); any other
    error (the backend is down) propagates, for the caller to retry.
    """
    backend = app.backend
    if isinstance(backend, (DisabledBackend, RPCBackend)):
        raise TriggerFailed(
            f"TaskResultTrigger cannot read results from the {type(backend).__name__} result "
            "backend: configure one that stores results (redis://, db+..., cache+..., file://)"
        )
    if not task_ids:
        return {}
    if isinstance(backend, KeyValueStoreBackend):
        # One mget for every id; interval=0 and max_iterations=1 make
        # get_many return at once instead of waiting for them all.
        metas = dict(backend.get_many(list(task_ids), interval=0, max_iterations=1))
    else:
        metas = {}
        for task_id in task_ids:
            meta = backend.get_task_meta(task_id)
            if meta.get("status") in _READY:
                metas[task_id] = meta
    return {
        str(task_id): result_payload(str(task_id), meta)
        for task_id, meta in metas.items()
        if meta.get("status") in _READY
    }


def result_payload(task_id: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The trigger payload for a ready task: state, and result or error."""
    state = str(meta.get("status"))
    value = meta.get("result")
    if state == states.SUCCESS:
        payload: dict[str, Any] = {
            "task_id": task_id,
            "state": state,
            "result": value,
            "error": None,
        }
        try:
            serialization.encode(value)
        except SerializationError:
            payload["result"] = repr(value)
            payload["result_is_repr"] = True
        return payload
    kind: str | None
    message: str | None
    if isinstance(value, BaseException):
        kind, message = type(value).__name__, str(value)
    elif isinstance(value, dict):  # an exception the backend left undecoded
        kind, message = str(value.get("exc_type")), str(value.get("exc_message"))
    else:
        kind, message = None, None if value is None else str(value)
    traceback = meta.get("traceback")
    return {
        "task_id": task_id,
        "state": state,
        "result": None,
        "error": {
            "type": kind,
            "message": message,
            "traceback": traceback if isinstance(traceback, str) else None,
        },
    }

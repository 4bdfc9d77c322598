"""Running a resume on the worker: claim it once, call the stored method, record the end.

The claim is the compare-and-set on the deferral's state and generation that
makes a duplicate or stale resume message harmless (DESIGN §6: a chord member
resumed twice would bump its chord twice). For a task that does not ack late
the claim is the only write (it settles the row as ``ended``): its message was
acked before the method runs, so a crash loses that run whatever the store
says. An ``acks_late`` task claims (``running``) and records the end after
the method, so a redelivered copy can take over a run cut off.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from celery.exceptions import Retry

from celery_defer import serialization
from celery_defer.broker import monitoring
from celery_defer.codec import Codec, codec_for
from celery_defer.exceptions import StoreError, TaskDeferred, TriggerTimeout
from celery_defer.store import store_for
from celery_defer.triggers.base import TriggerEvent
from celery_defer.validation import EVENT_KWARG, check_method
from celery_defer.wire import (
    FAIL_METHOD,
    RECLAIM_HEADER,
    ResumeHeader,
    corrupt_message,
    deadline_of,
    header_of,
)
from celery_defer.worker.ending import end_execution
from celery_defer.worker.outage import quietly, resend_later

if TYPE_CHECKING:
    from celery_defer.task import DeferrableTask

__all__ = ["resume"]

logger = logging.getLogger("celery_defer.task")


def resume(task: DeferrableTask, header: ResumeHeader, message_kwargs: dict[str, Any]) -> Any:
    """Run the resume ``header`` describes on ``task``; a stale duplicate is dropped."""
    task_id = task.request.id
    generation = header.generation
    store = store_for(task.app)
    settle = not task.acks_late
    try:
        claimed = store.begin_resume(task_id, generation, reclaim=_may_reclaim(task), settle=settle)
    except StoreError as exc:
        resend_later(task, exc, deferring=False)
    if not claimed:
        logger.warning(
            "dropping a stale or duplicate resume of task %s[%s] (generation %s)",
            task.name,
            task_id,
            generation,
            extra={"task_id": task_id, "generation": generation},
        )
        end_execution()
    monitoring.send(task, "task-resumed", method=header.method, generation=generation)
    try:
        result = _run_method(task, header, message_kwargs)
    except TaskDeferred:
        raise  # stored again as the next generation by the task
    except Retry:
        # self.retry() re-sends this very resume; let it claim again.
        quietly(store.reopen_resume, task_id, generation)
        raise
    except BaseException:
        if not settle:
            quietly(store.finish, task_id, generation)
        raise
    if not settle:
        quietly(store.finish, task_id, generation)
    return result


def _may_reclaim(task: DeferrableTask) -> bool:
    """Whether this copy of a resume may take it over from an execution cut off.

    Two copies may: the one this worker re-sent itself after claiming
    (:data:`~celery_defer.wire.RECLAIM_HEADER`), and a message the broker
    redelivered to an ``acks_late`` task, whose previous worker died while
    running the method. The latter is Celery's ``acks_late`` promise, at
    least once: the method runs again. Without ``acks_late`` the message was
    acked before the method ran, and a worker dying mid-method loses that
    run, as it would any Celery task's.
    """
    request = task.request
    if header_of(request, RECLAIM_HEADER) is not None:
        return True
    redelivered = bool((request.delivery_info or {}).get("redelivered"))
    return redelivered and bool(task.acks_late)


def _run_method(task: DeferrableTask, header: ResumeHeader, message_kwargs: dict[str, Any]) -> Any:
    outcome = header.outcome
    if header.method == FAIL_METHOD or outcome.error_kind is not None:
        deadline_at = deadline_of(task.request)
        if (
            outcome.error_kind == "timeout"
            and deadline_at
            and deadline_at <= datetime.now(timezone.utc)
        ):
            raise TriggerTimeout(task.deadline_message())
        outcome.raise_error()
    check_method(task, header.method)
    codec = codec_for(task.app)
    if header.kwargs is None:  # a resume sent by a release before 0.2: kwargs in the body
        kwargs = codec.loads_data(message_kwargs, where="kwargs")
    else:
        kwargs = serialization.decode(_stored_object(task, codec, header.kwargs), where="kwargs")
    event = TriggerEvent(outcome.payload)
    return getattr(task, header.method)(**kwargs, **{EVENT_KWARG: event})


def _stored_object(task: DeferrableTask, codec: Codec, text: str) -> dict[str, Any]:
    """The JSON object of stored kwargs ``text``; a damaged row fails with StoreError."""
    clear = codec.unseal(text, where="kwargs")
    try:
        data = json.loads(clear)
        if not isinstance(data, dict):
            raise TypeError(f"a JSON {type(data).__name__}, not an object")
    except (ValueError, TypeError, RecursionError) as exc:
        raise StoreError(corrupt_message(task.name, task.request.id, "kwargs", exc)) from None
    return data

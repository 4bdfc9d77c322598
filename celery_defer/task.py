"""The worker side: :class:`DeferrableTask`.

Celery's tracer (celery/app/trace.py, ``build_tracer``) calls ``task(*args)``
instead of ``task.run`` when a task class overrides ``__call__``, with the
live request already pushed. That makes ``__call__`` the one place that sees
every execution: it catches :class:`TaskDeferred` from any depth, stores the
deferral, writes the ``DEFERRED`` state and raises ``celery.exceptions.Ignore``
— which makes the tracer skip ``mark_as_done`` (no chord count), callbacks,
the chain step, ``on_success`` and the success/failure signals, and ack the
message, so the worker slot is free.

A resume is the same task id re-sent with the :data:`~celery_defer.resume.RESUME_HEADER`
header; ``__call__`` checks the deferral's generation in the store (a stale or
duplicate message is dropped) and calls the stored method on this fresh
instance with the trigger's event.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore, Retry
from celery.signals import task_revoked

from celery_defer import events, notices, serialization
from celery_defer.eager import InlineRuntime
from celery_defer.exceptions import (
    InvalidDeferral,
    StoreError,
    TaskDeferred,
    TriggerFailed,
    TriggerTimeout,
)
from celery_defer.resume import DEADLINE_HEADER, FAIL_METHOD, RESUME_HEADER, snapshot_request
from celery_defer.settings import Settings
from celery_defer.store import NewDeferral, store_for
from celery_defer.triggers.base import BaseTrigger, TriggerEvent
from celery_defer.triggers.context import use_runtime
from celery_defer.triggers.execution import first_event
from celery_defer.validation import EVENT_KWARG, check_deferral, check_method

logger = logging.getLogger(__name__)

#: The custom task state shown by ``AsyncResult.state`` while a task is deferred.
DEFERRED = "DEFERRED"

_ERRORS = {"timeout": TriggerTimeout, "failed": TriggerFailed}

#: Header counting how often a resume was re-sent because the store was unreachable.
RESEND_HEADER = "celery_defer_resend"


class DeferrableTask(Task):  # type: ignore[misc]
    """A Celery task that can hand its wait to a trigger and leave the worker.

    Subclass it, or use ``@app.task(base=DeferrableTask, bind=True)``. Inside
    the task, :meth:`defer` (or raising :class:`TaskDeferred` at any depth)
    ends this execution without success or failure; when the trigger fires,
    a fresh instance runs ``method_name(**kwargs, event=TriggerEvent)`` under
    the original task id. Everything configurable lives in the ``defer_*``
    settings, not on the class.
    """

    #: A total deadline across every deferral of one task (a timedelta or
    #: seconds; None: no deadline), like Airflow's ``execution_timeout``.
    #: Counted from the start of the first execution; when it passes while the
    #: task is deferred, the task fails with :class:`TriggerTimeout`.
    deadline: timedelta | float | None = None

    def defer(
        self,
        trigger: BaseTrigger,
        method_name: str = "run",
        kwargs: dict[str, Any] | None = None,
        timeout: Any = None,
    ) -> NoReturn:
        """Suspend the task until ``trigger`` fires (or ``timeout`` passes).

        ``timeout`` is a :class:`~datetime.timedelta` or seconds; when it
        passes first, the task fails with :class:`TriggerTimeout`.
        """
        raise TaskDeferred(trigger, method_name=method_name, kwargs=kwargs, timeout=timeout)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if request.is_eager or request.called_directly:
            return self._call_inline(args, kwargs)
        started = datetime.now(timezone.utc)
        header = _resume_header(request)
        try:
            if header is None:
                return super().__call__(*args, **kwargs)
            return self._resume(header, kwargs)
        except TaskDeferred as raised:
            deferred = raised
        # Outside the except block: a refusal must not show the deferral as its context.
        self._defer(deferred, started)

    # -- deferring --------------------------------------------------------

    def _defer(self, deferred: TaskDeferred, started: datetime) -> NoReturn:
        settings = Settings.from_app(self.app)
        checked = check_deferral(self, deferred, settings.max_kwargs_bytes)
        request = self.request
        task_id = request.id
        deadline_at = self._deadline_at(request, started)
        if deadline_at is not None:
            if deadline_at <= datetime.now(timezone.utc):
                raise TriggerTimeout(self._deadline_message())
            if checked.timeout_at is None or deadline_at < checked.timeout_at:
                checked = replace(checked, timeout_at=deadline_at)
        # DEFERRED is written before the deferral is visible to triggerers:
        # a trigger that fires at once must never see its final state
        # overwritten by a late DEFERRED (Airflow #21316).
        if not request.ignore_result and not self.ignore_result:
            self.update_state(
                task_id=task_id,
                state=DEFERRED,
                meta={
                    "trigger": checked.trigger_classpath,
                    "method": checked.method,
                    "deferred_at": datetime.now(timezone.utc).isoformat(),
                    "timeout_at": checked.timeout_at.isoformat() if checked.timeout_at else None,
                },
            )
            _warn_if_outlives_results(self, checked.timeout_at)
        stored = store_for(self.app).save_deferral(
            NewDeferral(
                task_id=task_id,
                task_name=self.name,
                method=checked.method,
                kwargs=checked.kwargs,
                request=snapshot_request(self, request, deadline_at),
                trigger_classpath=checked.trigger_classpath,
                trigger_kwargs=checked.trigger_kwargs,
                timeout_at=checked.timeout_at,
            )
        )
        notices.announce_trigger(self.app, stored.trigger_id)
        events.send(
            self,
            "task-deferred",
            trigger=checked.trigger_classpath,
            method=checked.method,
            generation=stored.generation,
            timeout_at=checked.timeout_at.isoformat() if checked.timeout_at else None,
        )
        logger.info(
            "task %s[%s] deferred on %s (generation %s)",
            self.name,
            task_id,
            checked.trigger_classpath,
            stored.generation,
            extra={
                "task_id": task_id,
                "trigger_id": stored.trigger_id,
                "generation": stored.generation,
            },
        )
        raise Ignore()

    # -- resuming ---------------------------------------------------------

    def _resume(self, header: dict[str, Any], message_kwargs: dict[str, Any]) -> Any:
        task_id = self.request.id
        generation = header.get("generation")
        method_name = header.get("method")
        if not isinstance(generation, int) or not isinstance(method_name, str):
            raise InvalidDeferral(f"malformed {RESUME_HEADER} header: {header!r}")
        store = store_for(self.app)
        try:
            claimed = store.begin_resume(task_id, generation)
        except StoreError as exc:
            self._resend_later(exc)
        if not claimed:
            logger.warning(
                "dropping a stale or duplicate resume of task %s[%s] (generation %s)",
                self.name,
                task_id,
                generation,
                extra={"task_id": task_id, "generation": generation},
            )
            raise Ignore()
        events.send(self, "task-resumed", method=method_name, generation=generation)
        try:
            outcome = serialization.decode(header.get("outcome"))
            result = self._run_method(method_name, message_kwargs, outcome)
        except TaskDeferred:
            raise  # stored again as the next generation by _defer
        except Retry:
            # self.retry() re-sends this very resume; let it claim again.
            _quietly(store.reopen_resume, task_id, generation)
            raise
        except BaseException:
            _quietly(store.finish, task_id, generation)
            raise
        _quietly(store.finish, task_id, generation)
        return result

    def _resend_later(self, error: StoreError) -> NoReturn:
        """The store is unreachable: send this resume again shortly, and drop this copy.

        Like ``self.retry()`` but without consuming a retry: the message is
        re-sent under the same id with the same options (Celery's
        ``signature_from_request``), so the resume is delayed, never lost.
        """
        attempt = int((self.request.headers or {}).get(RESEND_HEADER, 0)) + 1
        countdown = min(2.0**attempt, 60.0)
        logger.warning(
            "store unreachable while resuming %s[%s] (%s); resending in %.0fs",
            self.name,
            self.request.id,
            error,
            countdown,
            extra={"task_id": self.request.id, "attempt": attempt},
        )
        signature = self.signature_from_request(self.request)
        headers = dict(signature.options.get("headers") or {})
        headers[RESEND_HEADER] = attempt
        signature.apply_async(countdown=countdown, headers=headers)
        raise Ignore()

    def _run_method(self, method_name: str, message_kwargs: dict[str, Any], outcome: Any) -> Any:
        if not isinstance(outcome, dict):
            raise TriggerFailed(f"resume of {self.name} carries no outcome")
        error = outcome.get("error")
        if method_name == FAIL_METHOD or error is not None:
            error = error if isinstance(error, dict) else {}
            kind = str(error.get("kind"))
            deadline_at = _deadline_header(self.request)
            if kind == "timeout" and deadline_at and deadline_at <= datetime.now(timezone.utc):
                raise TriggerTimeout(self._deadline_message())
            raise _ERRORS.get(kind, TriggerFailed)(error.get("message"))
        check_method(self, method_name)
        kwargs = serialization.decode(message_kwargs)
        event = TriggerEvent(outcome.get("event"))
        return getattr(self, method_name)(**kwargs, **{EVENT_KWARG: event})

    # -- total deadline ---------------------------------------------------

    def _deadline_at(self, request: Any, started: datetime) -> datetime | None:
        """When the task's total deadline ends: carried by the resumes, set on first defer."""
        carried = _deadline_header(request)
        if carried is not None or self.deadline is None:
            return carried
        delta = self.deadline if isinstance(self.deadline, timedelta) else None
        if delta is None:
            if isinstance(self.deadline, bool) or not isinstance(self.deadline, (int, float)):
                raise InvalidDeferral(
                    f"{self.name}.deadline must be a timedelta or seconds, got {self.deadline!r}"
                )
            delta = timedelta(seconds=self.deadline)
        return started + delta

    def _deadline_message(self) -> str:
        return f"task {self.name} passed its total deadline ({self.deadline}) while deferred"

    # -- eager mode -------------------------------------------------------

    def _call_inline(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Eager mode (``task_always_eager``, ``.apply()``, a direct call).

        There is no worker to come back to, so the trigger runs right here
        and the task resumes at once: users' unit tests need no triggerer.
        """
        settings = Settings.from_app(self.app)
        try:
            return super().__call__(*args, **kwargs)
        except TaskDeferred as first:
            deferred = first
        while True:
            checked = check_deferral(self, deferred, settings.max_kwargs_bytes)
            timeout = None
            if checked.timeout_at is not None:
                timeout = (checked.timeout_at - datetime.now(timezone.utc)).total_seconds()
            event = _run_trigger_inline(self.app, deferred.trigger, timeout)
            method_kwargs = serialization.loads(checked.kwargs, where="kwargs")
            try:
                return getattr(self, checked.method)(**method_kwargs, **{EVENT_KWARG: event})
            except TaskDeferred as again:
                deferred = again


def _run_trigger_inline(app: Any, trigger: BaseTrigger, timeout: float | None) -> TriggerEvent:
    try:
        # asyncio.run's task copies this context: the trigger finds the runtime.
        with use_runtime(InlineRuntime(app)):
            return asyncio.run(asyncio.wait_for(first_event(trigger), timeout))
    except asyncio.TimeoutError:
        raise TriggerTimeout(
            f"trigger {type(trigger).__name__} did not fire within the timeout"
        ) from None


def _warn_if_outlives_results(task: Task, timeout_at: datetime | None) -> None:
    """The DEFERRED record (and Redis chord counters) expire after ``result_expires``.

    A deferral allowed to outlive it reads PENDING meanwhile, and a chord
    member can strand its chord; say so once per deferral, in the worker log.
    """
    expires = task.app.conf.result_expires
    if not expires or timeout_at is None:
        return
    if not isinstance(expires, timedelta):
        expires = timedelta(seconds=float(expires))
    if timeout_at - datetime.now(timezone.utc) > expires:
        logger.warning(
            "task %s[%s] may stay deferred longer than result_expires (%s): its DEFERRED "
            "state expires meanwhile and reads PENDING; raise result_expires",
            task.name,
            task.request.id,
            expires,
            extra={"task_id": task.request.id},
        )


def _deadline_header(request: Any) -> datetime | None:
    value = (request.headers or {}).get(DEADLINE_HEADER) if request.headers else None
    if value is None:
        value = getattr(request, DEADLINE_HEADER, None)
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def _forget_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    """A worker discarded a revoked (or expired) resume: forget its deferral.

    With a triggerer running, a revoke is handled there at once; this covers a
    revoke that no triggerer heard, and a resume that expired in the queue.
    """
    if not isinstance(sender, DeferrableTask) or request is None or not request.id:
        return
    try:
        store_for(sender.app).cancel_deferrals([request.id])
    except StoreError as exc:
        logger.warning("could not forget the deferral of revoked task %s: %s", request.id, exc)


task_revoked.connect(_forget_revoked, weak=False)


def _resume_header(request: Any) -> dict[str, Any] | None:
    header = (request.headers or {}).get(RESUME_HEADER) if request.headers else None
    if header is None:
        header = getattr(request, RESUME_HEADER, None)
    return header if isinstance(header, dict) else None


def _quietly(operation: Any, task_id: str, generation: int) -> None:
    """Bookkeeping after the method ran must not change the task's outcome."""
    try:
        operation(task_id, generation)
    except StoreError:
        logger.exception(
            "could not record the end of resumed task %s",
            task_id,
            extra={"task_id": task_id, "generation": generation},
        )

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
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore, Retry

from celery_defer import encryption, serialization
from celery_defer.broker import monitoring as events
from celery_defer.broker import notices
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

#: Exception per failure-outcome kind (``corrupt``: a stored deferral that no longer decodes).
_ERRORS = {"timeout": TriggerTimeout, "failed": TriggerFailed, "corrupt": StoreError}

#: Header counting how often an execution was re-sent because the store was unreachable.
RESEND_HEADER = "celery_defer_resend"

#: Header of a resume this worker had claimed and re-sent (the store failed before the
#: method's next deferral was stored): its one copy may claim the ``running`` row again.
RECLAIM_HEADER = "celery_defer_reclaim"

#: Re-sends of one execution, with backoff capped at a minute (about 9 minutes in
#: all), before a store that stays unreachable fails the task.
MAX_STORE_RESENDS = 12


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
        try:
            stored = store_for(self.app).save_deferral(
                NewDeferral(
                    task_id=task_id,
                    task_name=self.name,
                    method=checked.method,
                    kwargs=encryption.seal(settings.keyring, checked.kwargs),
                    request=snapshot_request(self, request, deadline_at),
                    trigger_classpath=checked.trigger_classpath,
                    trigger_kwargs=encryption.seal(settings.keyring, checked.trigger_kwargs),
                    timeout_at=checked.timeout_at,
                )
            )
        except StoreError as exc:
            self._resend_later(exc, deferring=True)
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
            claimed = store.begin_resume(task_id, generation, reclaim=self._may_reclaim())
        except StoreError as exc:
            self._resend_later(exc, deferring=False)
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

    def _may_reclaim(self) -> bool:
        """Whether this copy of a resume may take it over from an execution cut off.

        Two copies may: the one this worker re-sent itself after claiming
        (:data:`RECLAIM_HEADER`), and a message the broker redelivered to an
        ``acks_late`` task, whose previous worker died while running the
        method. The latter is Celery's ``acks_late`` promise, at least once:
        the method runs again. Without ``acks_late`` the message was acked
        before the method ran, and a worker dying mid-method loses that run,
        as it would any Celery task's.
        """
        request = self.request
        if _header(request, RECLAIM_HEADER) is not None:
            return True
        redelivered = bool((request.delivery_info or {}).get("redelivered"))
        return redelivered and bool(self.acks_late)

    def _resend_later(self, error: StoreError, *, deferring: bool) -> NoReturn:
        """The store is unreachable: send this execution again shortly, and drop this copy.

        Like ``self.retry()`` but without consuming a retry: the message is
        re-sent under the same id with the same options (Celery's
        ``signature_from_request``), so the execution is delayed, never lost.
        ``deferring``: the store failed while saving a deferral; the task
        body runs again (a resumed method, from its resume, claiming the row
        it had claimed). After :data:`MAX_STORE_RESENDS` the task fails with
        the store's error; a resume not yet claimed is instead left to the
        sweep, which sends it again once the store is back.
        """
        request = self.request
        attempt = int(_header(request, RESEND_HEADER) or 0) + 1
        if attempt > MAX_STORE_RESENDS:
            if deferring:
                raise StoreError(
                    f"the deferral of {self.name}[{request.id}] could not be stored after "
                    f"{MAX_STORE_RESENDS} attempts: {error}"
                ) from error
            logger.error(
                "store unreachable while resuming %s[%s] (%s); left to the sweep",
                self.name,
                request.id,
                error,
                extra={"task_id": request.id},
            )
            raise Ignore()
        countdown = min(2.0**attempt, 60.0)
        logger.warning(
            "store unreachable while %s %s[%s] (%s); resending in %.0fs",
            "deferring" if deferring else "resuming",
            self.name,
            request.id,
            error,
            countdown,
            extra={"task_id": request.id, "attempt": attempt},
        )
        signature = self.signature_from_request(request)
        headers = dict(signature.options.get("headers") or {})
        headers[RESEND_HEADER] = attempt
        resume = _resume_header(request)
        if deferring and resume is not None:
            headers[RECLAIM_HEADER] = resume.get("generation")
        if deferring and not request.ignore_result and not self.ignore_result:
            # Not DEFERRED: nothing waits on a trigger until the re-sent copy stores it.
            self.backend.mark_as_retry(request.id, error, request=request)
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
        keyring = Settings.from_app(self.app).keyring
        kwargs = serialization.decode(
            encryption.unseal_data(keyring, message_kwargs, where="kwargs"), where="kwargs"
        )
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


def _forget_unknown(sender: Any = None, message: Any = None, **kwargs: Any) -> None:
    """A worker rejected a resume of a task it does not know: forget its deferral.

    Celery fails an unregistered task with ``NotRegistered`` and drops its
    message (celery/worker/consumer/consumer.py ``on_unknown_task``). The
    deferral, left ``resumed`` in the store, would be listed as waiting for
    ever and re-sent by the sweep, failing again each time.
    """
    task_id = kwargs.get("id")
    headers = getattr(message, "headers", None) or {}
    app = getattr(sender, "app", None)
    if RESUME_HEADER not in headers or not task_id or app is None:
        return
    try:
        store_for(app).cancel_deferrals([task_id])
    except StoreError as exc:
        logger.warning("could not forget the deferral of unknown task %s: %s", task_id, exc)


def _header(request: Any, name: str) -> Any:
    """A custom message header: in ``request.headers``, or a request attribute (protocol 1)."""
    value = (request.headers or {}).get(name) if request.headers else None
    return getattr(request, name, None) if value is None else value


def _resume_header(request: Any) -> dict[str, Any] | None:
    header = _header(request, RESUME_HEADER)
    return header if isinstance(header, dict) else None


def _quietly(operation: Any, task_id: str, generation: int) -> None:
    """Bookkeeping after the method ran must not change the task's outcome.

    Tried a few times over about 3.5 s, so that a store blip (a database
    restart) does not leave the deferral's row behind; after that it is
    logged and left.
    """
    for pause in (0.5, 1.0, 2.0, None):
        try:
            operation(task_id, generation)
            return
        except StoreError:
            if pause is None:
                logger.exception(
                    "could not record the end of resumed task %s",
                    task_id,
                    extra={"task_id": task_id, "generation": generation},
                )
                return
            time.sleep(pause)

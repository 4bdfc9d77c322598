"""The worker side: :class:`DeferrableTask`.

Celery's tracer (celery/app/trace.py, ``build_tracer``) calls ``task(*args)``
instead of ``task.run`` when a task class overrides ``__call__``, with the
live request already pushed. That makes ``__call__`` the one place that sees
every execution: it catches :class:`TaskDeferred` from any depth, stores the
deferral, writes the ``DEFERRED`` state and ends the execution with Celery's
``Ignore`` outcome — the tracer skips ``mark_as_done`` (no chord count),
callbacks, the chain step, ``on_success`` and the success/failure signals,
and acks the message, so the worker slot is free. (How it ends cheaply, without
Celery formatting a traceback: :mod:`celery_defer.worker.ending`.)

A resume is the same task id re-sent with the :data:`~celery_defer.wire.RESUME_HEADER`
header: :mod:`celery_defer.worker.resuming` runs it; eager executions run
their trigger inline (:mod:`celery_defer.worker.eager`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn

from celery import Task

from celery_defer.broker import monitoring, notices
from celery_defer.codec import codec_for
from celery_defer.exceptions import InvalidDeferral, StoreError, TaskDeferred, TriggerTimeout
from celery_defer.settings import Settings
from celery_defer.store import NewDeferral, store_for
from celery_defer.triggers.base import BaseTrigger
from celery_defer.triggers.clock import DEFAULT_CLOCK, far_timers_may_wait
from celery_defer.validation import check_deferral
from celery_defer.wire import ResumeHeader, deadline_of, snapshot_request
from celery_defer.worker.eager import call_inline
from celery_defer.worker.ending import end_execution, wrap_tracer
from celery_defer.worker.outage import resend_later
from celery_defer.worker.resuming import resume

logger = logging.getLogger(__name__)

#: The custom task state shown by ``AsyncResult.state`` while a task is deferred.
DEFERRED = "DEFERRED"


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

    @property
    def __trace__(self) -> Any:
        """The tracer Celery built for this task, wrapped so a deferral ends cheaply.

        Celery's worker sets ``task.__trace__ = build_tracer(...)`` and calls
        it for every message; see :mod:`celery_defer.worker.ending`.
        """
        return self.__dict__.get("_defer_tracer")

    @__trace__.setter
    def __trace__(self, tracer: Any) -> None:
        self.__dict__["_defer_tracer"] = None if tracer is None else wrap_tracer(tracer)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run one execution: the body, a resume, or (eager) the body with inline triggers.

        The tracer calls this with the request pushed; a :class:`TaskDeferred`
        raised from any depth ends here, is stored, and ends the execution
        with ``Ignore`` (neither success nor failure).
        """
        request = self.request
        if request.is_eager or request.called_directly:
            return call_inline(self, super().__call__, args, kwargs)
        started = datetime.now(timezone.utc)
        try:
            header = ResumeHeader.of(request)
            if header is None:
                return super().__call__(*args, **kwargs)
            return resume(self, header, kwargs)
        except TaskDeferred as raised:
            deferred = raised
        # Outside the except block: a refusal must not show the deferral as its context.
        deferred.__traceback__ = None  # the frames it holds are of no further use
        self._defer(deferred, started)
        end_execution()

    # -- deferring --------------------------------------------------------

    def _defer(self, deferred: TaskDeferred, started: datetime) -> None:
        settings = Settings.from_app(self.app)
        codec = codec_for(self.app)
        checked = check_deferral(self, deferred, settings.max_kwargs_bytes)
        request = self.request
        task_id = request.id
        deadline_at = self._deadline_at(request, started)
        if deadline_at is not None:
            if deadline_at <= datetime.now(timezone.utc):
                raise TriggerTimeout(self.deadline_message())
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
        store = store_for(self.app)
        # A timer beyond the horizon wakes no triggerer: the periodic scan claims it in time
        # (unless the tests' clock is moved or skipping: then triggerers run every timer).
        announce = (
            checked.wakes_at is None
            or not far_timers_may_wait(DEFAULT_CLOCK)
            or checked.wakes_at - datetime.now(timezone.utc)
            < timedelta(seconds=settings.timer_horizon)
        )
        try:
            stored = store.save_deferral(
                NewDeferral(
                    task_id=task_id,
                    task_name=self.name,
                    method=checked.method,
                    kwargs=codec.seal(checked.kwargs),
                    request=snapshot_request(self, request, deadline_at),
                    trigger_classpath=checked.trigger_classpath,
                    trigger_kwargs=codec.seal(checked.trigger_kwargs),
                    timeout_at=checked.timeout_at,
                    after_generation=ResumeHeader.generation_of(request) or 0,
                    wakes_at=checked.wakes_at,
                    announce=announce,
                )
            )
        except StoreError as exc:
            resend_later(self, exc, deferring=True)
        if announce and not store.notifies_new_triggers:  # else the save itself woke them
            notices.announce_trigger(self.app, stored.trigger_id)
        monitoring.send(
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

    # -- total deadline ---------------------------------------------------

    def _deadline_at(self, request: Any, started: datetime) -> datetime | None:
        """When the task's total deadline ends: carried by the resumes, set on first defer."""
        carried = deadline_of(request)
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

    def deadline_message(self) -> str:
        """The message of the TriggerTimeout a passed total deadline fails the task with."""
        return f"task {self.name} passed its total deadline ({self.deadline}) while deferred"


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

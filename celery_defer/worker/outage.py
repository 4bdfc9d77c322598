"""The store-outage protocol: a worker that cannot reach the store delays, never loses.

When a deferral cannot be saved or a resume cannot be claimed, the execution
is re-sent to the broker under the same id with backoff — like
``self.retry()`` (Celery's ``signature_from_request``) but consuming no retry
— and this copy ends with ``Ignore``. The re-sent copy counts its attempts in
:data:`~celery_defer.wire.RESEND_HEADER`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from celery_defer.exceptions import StoreError
from celery_defer.wire import RECLAIM_HEADER, RESEND_HEADER, ResumeHeader, header_of
from celery_defer.worker.ending import end_execution

if TYPE_CHECKING:
    from celery import Task

__all__ = ["MAX_STORE_RESENDS", "quietly", "resend_later"]

logger = logging.getLogger("celery_defer.task")

#: Re-sends of one execution, with backoff capped at a minute (about 9 minutes in
#: all), before a store that stays unreachable fails the task.
MAX_STORE_RESENDS = 12


def resend_later(task: Task, error: StoreError, *, deferring: bool) -> NoReturn:
    """The store is unreachable: send this execution again shortly, and drop this copy.

    ``deferring``: the store failed while saving a deferral; the task body
    runs again (a resumed method, from its resume, claiming the row it had
    claimed). After :data:`MAX_STORE_RESENDS` the task fails with the store's
    error; a resume not yet claimed is instead left to the sweep, which sends
    it again once the store is back.
    """
    request = task.request
    attempt = int(header_of(request, RESEND_HEADER) or 0) + 1
    if attempt > MAX_STORE_RESENDS:
        if deferring:
            raise StoreError(
                f"the deferral of {task.name}[{request.id}] could not be stored after "
                f"{MAX_STORE_RESENDS} attempts: {error}"
            ) from error
        logger.error(
            "store unreachable while resuming %s[%s] (%s); left to the sweep",
            task.name,
            request.id,
            error,
            extra={"task_id": request.id},
        )
        end_execution()
    countdown = min(2.0**attempt, 60.0)
    logger.warning(
        "store unreachable while %s %s[%s] (%s); resending in %.0fs",
        "deferring" if deferring else "resuming",
        task.name,
        request.id,
        error,
        countdown,
        extra={"task_id": request.id, "attempt": attempt},
    )
    signature = task.signature_from_request(request)
    headers = dict(signature.options.get("headers") or {})
    headers[RESEND_HEADER] = attempt
    generation = ResumeHeader.generation_of(request)
    if deferring and generation is not None:
        headers[RECLAIM_HEADER] = generation
    if deferring and not request.ignore_result and not task.ignore_result:
        # Not DEFERRED: nothing waits on a trigger until the re-sent copy stores it.
        task.backend.mark_as_retry(request.id, error, request=request)
    options = {**signature.options, "countdown": countdown, "headers": headers}
    # send_task, not apply_async: a resume's message kwargs are not the body's
    # arguments (they travel in the resume header), so no argument check applies.
    task.app.send_task(task.name, args=signature.args, kwargs=signature.kwargs, **options)
    end_execution()


def quietly(operation: Callable[[str, int], None], task_id: str, generation: int) -> None:
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

"""Reading resume orders from deferral rows: the columns, and the record they make.

Firing, the timeout sweep and the recovery sweeps all hand the same
:class:`~celery_defer.store.records.ResumeOrder` to :mod:`celery_defer.broker.resumes`;
they select these columns so that one function builds it.
"""

from __future__ import annotations

from typing import Any

from celery_defer.store.records import ResumeOrder
from celery_defer.store.sql.schema import deferrals

__all__ = ["ORDER_COLUMNS", "order_of"]

#: The deferral columns a :class:`ResumeOrder` is built from.
ORDER_COLUMNS = (
    deferrals.c.task_id,
    deferrals.c.task_name,
    deferrals.c.generation,
    deferrals.c.method,
    deferrals.c.kwargs,
    deferrals.c.request,
    deferrals.c.outcome,
)


def order_of(row: Any, outcome: str | None = None) -> ResumeOrder:
    """The resume order of a row selected with :data:`ORDER_COLUMNS`.

    ``outcome``, when given, is the one about to be stored with the row (a
    query that fires selects the row before it writes its outcome).
    """
    return ResumeOrder.of(row, outcome)

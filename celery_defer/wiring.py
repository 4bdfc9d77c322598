"""What celery-defer wires into Celery: :func:`install` and the signal handlers.

Two kinds of wiring, both here so that one module answers "what does
celery-defer add to my app and my processes":

* :func:`install` is per app, the documented call: the ``celery_defer.sweep``
  task and its beat entry.
* The signal handlers are per process, and connected when this module is
  imported, which ``import celery_defer`` does: every process that can run a
  :class:`~celery_defer.DeferrableTask` has them, whether or not it called
  :func:`install`. They are:

  - ``task_revoked``: a worker discarded a revoked or expired resume, so its
    deferral is forgotten;
  - ``task_unknown``: a worker rejected a resume of a task it does not know,
    so its deferral is forgotten rather than re-sent for ever;
  - ``worker_init``: whether the worker sends task events (``-E``), which
    decides whether ``task-deferred``/``task-resumed`` monitoring events are sent.

  Celery keys receivers by identity, so importing this module again connects
  nothing twice.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from celery.signals import task_revoked, task_unknown, worker_init

from celery_defer.broker.monitoring import remember_task_events
from celery_defer.revoking import forget_revoked, forget_unknown
from celery_defer.settings import Settings
from celery_defer.sweep import SWEEP_TASK_NAME, sweep

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["install"]


def install(app: Celery) -> None:
    """Set celery-defer up on ``app``: the sweep task and its beat entry.

    Call it once where the app is defined, so that the worker, beat and the
    triggerer all see it. The beat entry uses ``defer_sweep_interval``, read
    when the app is configured.

    Defaults are deliberately not registered with ``app.add_defaults``: Celery
    puts added defaults in front of the configuration loaded later by
    ``config_from_object`` (celery/utils/collections.py ``ChainMap.add_defaults``
    inserts at ``maps[1]``), so they would override the user's values.
    :class:`~celery_defer.settings.Settings` applies the defaults itself.
    """

    @app.task(name=SWEEP_TASK_NAME, bind=True, ignore_result=True, shared=False)
    def sweep_task(self: Any) -> dict[str, int]:
        return asdict(sweep(self.app))

    def add_entry(**_: Any) -> None:
        interval = Settings.from_app(app).sweep_interval
        app.add_periodic_task(
            interval, app.signature(SWEEP_TASK_NAME), name=SWEEP_TASK_NAME, expires=interval
        )

    if app.configured:
        add_entry()
    else:
        # Connected before configuration, so it runs (celery #3589).
        app.on_after_configure.connect(add_entry, weak=False)


task_revoked.connect(forget_revoked, weak=False)
task_unknown.connect(forget_unknown, weak=False)
worker_init.connect(remember_task_events, weak=False)

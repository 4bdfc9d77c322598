"""``celery -A proj triggerer``: run the triggerer in the foreground.

Like ``celery beat`` it takes the app from ``ctx.obj.app`` and handles
preload options; SIGTERM and SIGINT stop it cleanly (see
:meth:`celery_defer.Triggerer.run`).
"""

from __future__ import annotations

import logging
from typing import Any

import click
from celery._state import _set_task_join_will_block
from celery.bin.base import LOG_LEVEL, CeleryOption, handle_preload_options

from celery_defer.cli.base import DeferCommand
from celery_defer.triggerer import Triggerer
from celery_defer.triggers.clock import SystemClock

__all__ = ["triggerer"]


@click.command(cls=DeferCommand)
@click.option(
    "--capacity",
    cls=CeleryOption,
    type=click.IntRange(min=1),
    default=None,
    help_group="Triggerer Options",
    help="Most triggers run at once (default: defer_triggerer_capacity, 1000).",
)
@click.option(
    "-l",
    "--loglevel",
    cls=CeleryOption,
    type=LOG_LEVEL,
    default="INFO",
    help_group="Triggerer Options",
    help="Logging level.",
)
@click.option(
    "--metrics-port",
    cls=CeleryOption,
    type=click.IntRange(min=0, max=65535),
    default=None,
    help_group="Triggerer Options",
    help="Serve Prometheus metrics on this port, at /metrics.",
)
@click.pass_context
@handle_preload_options
def triggerer(
    ctx: click.Context,
    capacity: int | None,
    loglevel: Any,
    metrics_port: int | None = None,
    **_: Any,
) -> None:
    """Run the triggerer: the process that runs deferred tasks' triggers."""
    app = ctx.obj.app
    # This process publishes many resumes and never waits for a result: say
    # so, as workers do, so Celery's Redis result backend does not subscribe
    # it to every task it sends (celery/backends/redis.py on_task_call;
    # celery #6963, #4885).
    _set_task_join_will_block(True)
    app.log.setup_logging_subsystem(loglevel=loglevel)
    logging.getLogger("celery_defer").setLevel(loglevel)
    # Nothing in this process moves time: the plain wall clock and loop timer.
    service = Triggerer(app, capacity=capacity, metrics_port=metrics_port, clock=SystemClock())
    click.echo(f"celery-defer triggerer {service.id} starting (capacity {service.capacity})")
    service.run()

"""``celery -A proj triggerer``: run the triggerer in the foreground.

Like ``celery beat`` it takes the app from ``ctx.obj.app`` and handles
preload options; SIGTERM and SIGINT stop it cleanly (see
:meth:`celery_defer.Triggerer.run`).
"""

from __future__ import annotations

import logging
import socket
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import click
from celery._state import _set_task_join_will_block
from celery.bin.base import LOG_LEVEL, CeleryOption, handle_preload_options

from celery_defer.cli.base import DeferCommand
from celery_defer.exceptions import CeleryDeferError
from celery_defer.settings import Settings
from celery_defer.store import store_for
from celery_defer.triggerer import Triggerer
from celery_defer.triggers.clock import SystemClock

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["health", "triggerer"]


def health(app: Celery, host: str | None) -> tuple[bool, str]:
    """Whether a triggerer of ``app`` (on ``host``; None: any) heart-beats in time, and why.

    What ``--check`` answers, from the store's triggerer rows: the heartbeat a
    triggerer writes every ``defer_triggerer_heartbeat`` seconds, which stops
    when the process or its loop dies (a failed loop stops the triggerer too).
    """
    timeout = Settings.from_app(app).triggerer_health_timeout
    where = "any host" if host is None else f"host {host}"
    try:
        triggerers = [t for t in store_for(app).stats().triggerers if host in (None, t.host)]
    except CeleryDeferError as exc:
        return False, f"unhealthy: the store is unreachable: {exc}"
    if not triggerers:
        return False, f"unhealthy: no triggerer of this app is registered on {where}"
    now = datetime.now(timezone.utc)
    freshest = max(triggerers, key=lambda t: t.heartbeat_at)
    age = (now - freshest.heartbeat_at).total_seconds()
    if age > timeout:
        return False, (
            f"unhealthy: triggerer {freshest.id} on {freshest.host} last heart-beat {age:.1f}s "
            f"ago (defer_triggerer_health_timeout {timeout:g}s)"
        )
    return True, (
        f"healthy: triggerer {freshest.id} on {freshest.host} heart-beat {age:.1f}s ago "
        f"({len(triggerers)} registered on {where})"
    )


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
@click.option(
    "--check",
    cls=CeleryOption,
    is_flag=True,
    help_group="Health Check",
    help="Do not run: exit 0 if a triggerer of this app on this host heart-beats within "
    "defer_triggerer_health_timeout, 1 otherwise (a liveness probe).",
)
@click.option(
    "--any-host",
    cls=CeleryOption,
    is_flag=True,
    help_group="Health Check",
    help="With --check: a triggerer on any host counts.",
)
@click.pass_context
@handle_preload_options
def triggerer(
    ctx: click.Context,
    capacity: int | None,
    loglevel: Any,
    metrics_port: int | None = None,
    check: bool = False,
    any_host: bool = False,
    **_: Any,
) -> None:
    """Run the triggerer: the process that runs deferred tasks' triggers."""
    app = ctx.obj.app
    if check:
        healthy, line = health(app, None if any_host else socket.gethostname())
        click.echo(line, err=not healthy)
        ctx.exit(0 if healthy else 1)
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

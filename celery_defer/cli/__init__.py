"""The ``celery triggerer`` and ``celery defer`` commands.

Registered through the ``celery.commands`` entry point group, which
``celery/bin/celery.py`` loads (``celery_defer.cli:triggerer`` and
``celery_defer.cli:defer`` in setup.cfg); like ``celery beat`` they take the
app from ``ctx.obj.app`` and handle preload options. One module per group of
commands: :mod:`~celery_defer.cli.triggerer_command` runs the triggerer,
:mod:`~celery_defer.cli.inspection` reads the store (list, show, stats),
:mod:`~celery_defer.cli.control` changes things (init-db, cancel, send-event,
rotate-keys); :mod:`~celery_defer.cli.base` turns celery-defer's errors into
click errors for all of them.
"""

from __future__ import annotations

import click
from celery.bin.base import handle_preload_options

from celery_defer.cli import control, inspection
from celery_defer.cli.control import rotate_keys
from celery_defer.cli.triggerer_command import triggerer

__all__ = ["defer", "rotate_keys", "triggerer"]


@click.group(cls=click.Group)
@click.pass_context
@handle_preload_options
def defer(ctx: click.Context) -> None:
    """Manage celery-defer: the deferral store and deferred tasks."""


for _command in (*inspection.COMMANDS, *control.COMMANDS):
    defer.add_command(_command)

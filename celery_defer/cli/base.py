"""What every celery-defer command shares: the command class and the ``--json`` option.

:class:`DeferCommand` is the one place where a :class:`CeleryDeferError`
becomes a click error: the command ends with ``Error: <message>`` on stderr
and exit code 1, never a traceback. Commands simply let such errors rise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
from celery.bin.base import CeleryCommand

from celery_defer.codec import codec_for
from celery_defer.exceptions import CeleryDeferError
from celery_defer.store import Store, store_for

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["DeferCommand", "app_and_store", "json_option", "unknown_deferral"]


class DeferCommand(CeleryCommand):  # type: ignore[misc]
    """A Celery command whose :class:`CeleryDeferError` ends it as a click error."""

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a store, configuration or input error is reported, not raised."""
        try:
            return super().invoke(ctx)
        except CeleryDeferError as exc:
            raise click.ClickException(str(exc)) from exc


#: ``--json``: one JSON document for scripts instead of a table for people.
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document instead of a table."
)


def app_and_store(ctx: click.Context) -> tuple[Celery, Store]:
    """The command's app (``celery -A``) and its store."""
    app: Celery = ctx.obj.app
    codec_for(app)  # a bad defer_encryption_keys fails every command, before any output
    return app, store_for(app)


def unknown_deferral(task_id: str) -> click.ClickException:
    """The error of ``show`` and ``cancel`` for a task with no deferral."""
    return click.ClickException(
        f"no deferral for task {task_id}: it never deferred, or it already finished, or it "
        "was cancelled (the store forgets a deferral once its task resumed and ended)"
    )

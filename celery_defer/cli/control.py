"""``celery defer`` commands that change things: init-db, cancel, send-event, rotate-keys.

Registered with the ``defer`` group by :mod:`celery_defer.cli`. Errors of
celery-defer end the command through :class:`~celery_defer.cli.base.DeferCommand`.
"""

from __future__ import annotations

import json

import click

from celery_defer import encryption
from celery_defer.cli.base import DeferCommand, app_and_store, json_option, unknown_deferral
from celery_defer.codec import codec_for
from celery_defer.exceptions import EncryptionError
from celery_defer.external_events import send_event
from celery_defer.revoking import cancel
from celery_defer.settings import Settings
from celery_defer.store import MEMORY_URL, RUNNING, InMemoryStore, store_for
from celery_defer.store.sql import SCHEMA_VERSION

__all__ = ["COMMANDS", "cancel_command", "init_db", "rotate_keys", "send_event_command"]


@click.command("init-db", cls=DeferCommand)
@click.pass_context
def init_db(ctx: click.Context) -> None:
    """Create or upgrade the schema in defer_database_url (safe to run twice)."""
    store = store_for(ctx.obj.app)
    store.create_schema()
    if isinstance(store, InMemoryStore):
        # Not an error (a test setup may run it), but nothing outlives this command.
        click.echo(
            f"defer_database_url is {MEMORY_URL}: the in-memory store needs no schema, and "
            "it lives inside each process (nothing is created for other processes)"
        )
        return
    click.echo(f"celery-defer schema version {SCHEMA_VERSION} is ready")


@click.command("cancel", cls=DeferCommand)
@click.argument("task_id")
@json_option
@click.pass_context
def cancel_command(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Cancel a deferred task as a revoke would: it ends REVOKED."""
    app, store = app_and_store(ctx)
    before = store.get_deferral(task_id)
    if before is None:
        raise unknown_deferral(task_id)
    if before.state == RUNNING:
        raise click.ClickException(
            f"task {task_id} is running on a worker now (it resumed): not cancelled; "
            "use `celery control revoke --terminate` for a running task"
        )
    done = cancel(app, store, [task_id], reason="cancelled while deferred (celery defer cancel)")
    cancelled = done.cancelled
    if task_id not in cancelled.task_ids:
        raise click.ClickException(
            f"task {task_id} left its deferral meanwhile (it resumed or finished): not cancelled"
        )
    if task_id in done.unrecorded:
        raise click.ClickException(
            f"the deferral of task {task_id} is cancelled, but recording it as REVOKED in the "
            f"result backend failed: {done.unrecorded[task_id]}"
        )
    timeout = Settings.from_app(app).triggerer_health_timeout
    if cancelled.trigger_ids:
        trigger_note = (
            f"its trigger {', '.join(map(str, cancelled.trigger_ids))} is deleted; the triggerer "
            f"running it stops it (cleanup() runs) at its next reconciliation, within "
            f"defer_triggerer_health_timeout ({timeout:g}s)"
        )
    elif before.trigger_id is not None:
        trigger_note = f"its trigger {before.trigger_id} keeps running for other waiting tasks"
    else:
        trigger_note = (
            "its trigger had already fired; a resume already sent is dropped by the worker"
        )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "task_id": task_id,
                    "task_name": before.task_name,
                    "cancelled": True,
                    "previous_state": before.state,
                    "state": "REVOKED",
                    "deleted_trigger_ids": cancelled.trigger_ids,
                    "note": trigger_note,
                },
                indent=2,
            )
        )
        return
    click.echo(
        f"cancelled deferred task {task_id} ({before.task_name}, was {before.state}); "
        f"its result is REVOKED"
    )
    click.echo(trigger_note)


@click.command("send-event", cls=DeferCommand)
@click.argument("key")
@click.option(
    "--payload",
    default="null",
    show_default=True,
    help="The event's payload, as JSON (e.g. '{\"approved\": true}').",
)
@click.pass_context
def send_event_command(ctx: click.Context, key: str, payload: str) -> None:
    """Send an external event: tasks waiting on ExternalEventTrigger(KEY) resume."""
    try:
        value = json.loads(payload)
    except ValueError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint="'--payload'") from exc
    event_id = send_event(ctx.obj.app, key, value)
    click.echo(f"sent event {key!r} (id {event_id})")


@click.command("rotate-keys", cls=DeferCommand)
@click.option(
    "--seal-clear",
    is_flag=True,
    help="Also encrypt values stored in clear (written before encryption was turned on).",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Rows read and rewritten per transaction.",
)
@click.pass_context
def rotate_keys(ctx: click.Context, seal_clear: bool, batch_size: int) -> None:
    """Re-encrypt stored kwargs and trigger kwargs with the first defer_encryption_keys key.

    Safe while workers and triggerers run, and to run again: values already
    under the first key are left alone. Prints counts, never a value. Exits
    non-zero when some value opens with none of the keys (it is left as is).
    """
    app = ctx.obj.app
    keyring = codec_for(app).keyring
    if keyring is None:
        raise click.ClickException(
            f"{encryption.SETTING} is not set: there is no key to encrypt with"
        )
    unopened = 0

    def rewrite(text: str) -> str | None:
        nonlocal unopened
        try:
            return encryption.reseal(keyring, text, seal_clear=seal_clear)
        except EncryptionError:
            unopened += 1
            return None

    done = store_for(app).rewrite_user_values(rewrite, batch_size)
    click.echo(
        f"rewrote {done.deferrals} deferral kwargs and {done.triggers} trigger kwargs "
        "under the first key"
    )
    if unopened:
        raise click.ClickException(
            f"{unopened} stored values are encrypted with a key not in {encryption.SETTING}: "
            "left as they are (their tasks fail when they resume); add that key back to "
            "rotate them"
        )


#: The commands :mod:`celery_defer.cli` adds to the ``celery defer`` group.
COMMANDS = (init_db, cancel_command, send_event_command, rotate_keys)

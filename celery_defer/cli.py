"""The ``celery triggerer`` and ``celery defer`` commands.

Registered through the ``celery.commands`` entry point group, which
``celery/bin/celery.py`` loads; like ``celery beat`` they take the app from
``ctx.obj.app`` and handle preload options.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import click
from celery._state import _set_task_join_will_block
from celery.bin.base import LOG_LEVEL, CeleryCommand, CeleryOption, handle_preload_options

from celery_defer import encryption
from celery_defer.cli_inspect import COMMANDS as INSPECTION_COMMANDS
from celery_defer.exceptions import CeleryDeferError, EncryptionError
from celery_defer.external_events import send_event
from celery_defer.settings import Settings
from celery_defer.store import MEMORY_URL, InMemoryStore, store_for
from celery_defer.store.schema import SCHEMA_VERSION
from celery_defer.triggerer import Triggerer


@click.command(cls=CeleryCommand)
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
    try:
        service = Triggerer(app, capacity=capacity, metrics_port=metrics_port)
        click.echo(f"celery-defer triggerer {service.id} starting (capacity {service.capacity})")
        service.run()
    except CeleryDeferError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group(cls=click.Group)
@click.pass_context
@handle_preload_options
def defer(ctx: click.Context) -> None:
    """Manage celery-defer: the deferral store and deferred tasks."""


for _command in INSPECTION_COMMANDS:  # list, show, cancel, stats
    defer.add_command(_command)


@defer.command("init-db", cls=CeleryCommand)
@click.pass_context
def init_db(ctx: click.Context) -> None:
    """Create or upgrade the schema in defer_database_url (safe to run twice)."""
    app = ctx.obj.app
    try:
        store = store_for(app)
        store.create_schema()
    except CeleryDeferError as exc:
        raise click.ClickException(str(exc)) from exc
    if isinstance(store, InMemoryStore):
        # Not an error (a test setup may run it), but nothing outlives this command.
        click.echo(
            f"defer_database_url is {MEMORY_URL}: the in-memory store needs no schema, and "
            "it lives inside each process (nothing is created for other processes)"
        )
        return
    click.echo(f"celery-defer schema version {SCHEMA_VERSION} is ready")


@defer.command("send-event", cls=CeleryCommand)
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
    try:
        event_id = send_event(ctx.obj.app, key, value)
    except CeleryDeferError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"sent event {key!r} (id {event_id})")


@defer.command("rotate-keys", cls=CeleryCommand)
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
    try:
        keyring = Settings.from_app(app).keyring
    except CeleryDeferError as exc:
        raise click.ClickException(str(exc)) from exc
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

    try:
        done = store_for(app).rewrite_user_values(rewrite, batch_size)
    except CeleryDeferError as exc:
        raise click.ClickException(str(exc)) from exc
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

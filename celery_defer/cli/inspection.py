"""``celery defer list``, ``show`` and ``stats``: looking into the store, read-only.

Subcommands of the ``celery defer`` group (:mod:`celery_defer.cli` adds them).
Each prints an aligned table for people, or with ``--json`` one JSON document
for scripts; timestamps are ISO 8601 in UTC, ages and delays in seconds.

Stored user values (task kwargs, trigger kwargs, event payloads) may hold
secrets: ``list`` and ``stats`` never print them; only ``show`` does, and only
through :func:`reveal`, which never decrypts a value encrypted at rest.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import click

from celery_defer import encryption, serialization
from celery_defer.cli.base import DeferCommand, app_and_store, json_option, unknown_deferral
from celery_defer.exceptions import CeleryDeferError
from celery_defer.settings import Settings
from celery_defer.store.records import STATES, DeferralDetail, DeferralSummary, StoreStats

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["COMMANDS", "reveal"]

#: What :func:`reveal` gives for a value encrypted at rest: a JSON string, which no
#: stored kwargs, trigger kwargs or outcome (all JSON objects) can be.
SEALED = json.dumps(encryption.PLACEHOLDER)


def reveal(app: Celery, stored: str) -> str:  # noqa: ARG001 - the app, as for every helper
    """The typed-JSON text of a stored user value, for ``celery defer show`` to print.

    The one place where inspection turns what the store holds back into
    something readable. A value encrypted at rest (``defer_encryption_keys``)
    is shown as :data:`SEALED`, never decrypted, even when this process has
    the keys: encrypting is meant to keep secrets off terminals and logs too.
    Values stored in clear are shown as they are.
    """
    return SEALED if encryption.is_sealed(stored) else stored


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _seconds_since(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else round((now - moment).total_seconds(), 3)


def _duration(seconds: float | None) -> str:
    """A short human duration: 850ms, 42s, 5m 12s, 3h 2m, 4d 1h."""
    if seconds is None:
        return "-"
    sign, seconds = ("-" if seconds < 0 else ""), abs(seconds)
    if seconds < 1:
        return f"{sign}{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{sign}{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{sign}{days}d {hours}h"
    if hours:
        return f"{sign}{hours}h {minutes}m"
    return f"{sign}{minutes}m {secs}s"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    )


def _summary_json(row: DeferralSummary, now: datetime) -> dict[str, Any]:
    return {
        "task_id": row.task_id,
        "task_name": row.task_name,
        "state": row.state,
        "generation": row.generation,
        "method": row.method,
        "trigger_id": row.trigger_id,
        "trigger": row.trigger_classpath,
        "triggerer_id": row.triggerer_id,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "timeout_at": _iso(row.timeout_at),
        "age_seconds": _seconds_since(row.created_at, now),
    }


@click.command("list", cls=DeferCommand)
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(STATES),
    help="Only deferrals in this state (repeatable).",
)
@click.option("--task-name", default=None, help="Only tasks of this exact name.")
@click.option(
    "--trigger",
    "trigger_contains",
    default=None,
    metavar="TEXT",
    help="Only deferrals whose trigger class path contains TEXT.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Most deferrals shown, oldest first.",
)
@json_option
@click.pass_context
def list_command(
    ctx: click.Context,
    states: tuple[str, ...],
    task_name: str | None,
    trigger_contains: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List deferrals, oldest first (never their kwargs: see `show`)."""
    _, store = app_and_store(ctx)
    rows = store.list_deferrals(states, task_name, trigger_contains, limit)
    now = datetime.now(timezone.utc)
    if as_json:
        click.echo(json.dumps([_summary_json(row, now) for row in rows], indent=2))
        return
    if not rows:
        click.echo("no deferrals")
        return
    table = [
        [
            row.task_id,
            row.task_name,
            row.state,
            str(row.generation),
            row.method,
            row.trigger_classpath or "-",
            "-" if row.trigger_id is None else str(row.trigger_id),
            row.triggerer_id or "-",
            _duration(_seconds_since(row.created_at, now)),
            "-"
            if row.timeout_at is None
            else _duration(-(_seconds_since(row.timeout_at, now) or 0.0)),
        ]
        for row in rows
    ]
    click.echo(
        _table(
            [
                "TASK ID",
                "TASK",
                "STATE",
                "GEN",
                "METHOD",
                "TRIGGER",
                "TRIGGER ID",
                "TRIGGERER",
                "AGE",
                "TIMEOUT IN",
            ],
            table,
        )
    )
    if len(rows) == limit:
        click.echo(f"(first {limit} shown; there may be more: raise --limit or filter)")


def _value_json(text: str | None) -> Any:
    # The stored typed-JSON structure, exact (tagged datetimes, bytes...).
    return None if text is None else json.loads(text)


def _value_text(text: str | None) -> str:
    if text is None:
        return "-"
    if text == SEALED:
        return encryption.PLACEHOLDER
    try:
        return repr(serialization.loads(text, where="stored value"))
    except CeleryDeferError:
        return text


@click.command("show", cls=DeferCommand)
@click.argument("task_id")
@json_option
@click.pass_context
def show_command(ctx: click.Context, task_id: str, as_json: bool) -> None:
    """Show one deferral, with its kwargs and trigger kwargs."""
    app, store = app_and_store(ctx)
    detail: DeferralDetail | None = store.describe_deferral(task_id)
    if detail is None:
        raise unknown_deferral(task_id)
    now = datetime.now(timezone.utc)
    kwargs = reveal(app, detail.kwargs)
    trigger_kwargs = None if detail.trigger_kwargs is None else reveal(app, detail.trigger_kwargs)
    outcome = None if detail.outcome is None else reveal(app, detail.outcome)
    if as_json:
        document = _summary_json(detail, now)
        document.update(
            kwargs=_value_json(kwargs),
            trigger_kwargs=_value_json(trigger_kwargs),
            outcome=_value_json(outcome),
        )
        click.echo(json.dumps(document, indent=2))
        return
    trigger = (
        "-"
        if detail.trigger_id is None
        else (f"{detail.trigger_classpath} (id {detail.trigger_id})")
    )
    fields = [
        ("task id", detail.task_id),
        ("task name", detail.task_name),
        ("state", detail.state),
        ("generation", str(detail.generation)),
        ("method", detail.method),
        ("trigger", trigger),
        (
            "triggerer",
            detail.triggerer_id
            or ("-" if detail.trigger_id is None else "none yet: waiting for a free triggerer"),
        ),
        (
            "deferred at",
            f"{_iso(detail.created_at)} ({_duration(_seconds_since(detail.created_at, now))} ago)",
        ),
        ("updated at", f"{_iso(detail.updated_at)}"),
        ("timeout at", "-" if detail.timeout_at is None else _iso(detail.timeout_at) or "-"),
        ("kwargs", _value_text(kwargs)),
        ("trigger kwargs", _value_text(trigger_kwargs)),
        ("outcome", _value_text(outcome)),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        click.echo(f"{name.ljust(width)}  {value}")


def _stats_json(stats: StoreStats, now: datetime, health_timeout: float) -> dict[str, Any]:
    triggerers = []
    for t in stats.triggerers:
        age = _seconds_since(t.heartbeat_at, now)
        triggerers.append(
            {
                "id": t.id,
                "host": t.host,
                "pid": t.pid,
                "running": t.running,
                "capacity": t.capacity,
                "started_at": _iso(t.started_at),
                "heartbeat_at": _iso(t.heartbeat_at),
                "heartbeat_age_seconds": age,
                "alive": age is not None and age <= health_timeout,
            }
        )
    oldest = stats.oldest
    return {
        "triggerers": triggerers,
        "deferrals": {
            "by_state": stats.by_state,
            "total": sum(stats.by_state.values()),
            "oldest": None
            if oldest is None
            else {
                "task_id": oldest.task_id,
                "task_name": oldest.task_name,
                "state": oldest.state,
                "created_at": _iso(oldest.created_at),
                "age_seconds": _seconds_since(oldest.created_at, now),
            },
        },
        "triggers_waiting_for_a_triggerer": stats.unowned_triggers,
    }


@click.command("stats", cls=DeferCommand)
@json_option
@click.pass_context
def stats_command(ctx: click.Context, as_json: bool) -> None:
    """Triggerers and their load, deferrals by state, the oldest deferral."""
    app, store = app_and_store(ctx)
    stats = store.stats()
    now = datetime.now(timezone.utc)
    document = _stats_json(stats, now, Settings.from_app(app).triggerer_health_timeout)
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    if document["triggerers"]:
        click.echo(
            _table(
                ["TRIGGERER", "HOST", "PID", "RUNNING / CAPACITY", "HEARTBEAT AGE"],
                [
                    [
                        t["id"],
                        t["host"],
                        str(t["pid"]),
                        f"{t['running']} / {t['capacity']}",
                        _duration(t["heartbeat_age_seconds"])
                        + ("" if t["alive"] else " (silent: dead?)"),
                    ]
                    for t in document["triggerers"]
                ],
            )
        )
    else:
        click.echo("no triggerer is running")
    click.echo()
    deferrals = document["deferrals"]
    click.echo(
        _table(
            ["STATE", "DEFERRALS"],
            [[state, str(count)] for state, count in deferrals["by_state"].items()]
            + [["total", str(deferrals["total"])]],
        )
    )
    click.echo()
    oldest = deferrals["oldest"]
    if oldest is not None:
        click.echo(
            f"oldest deferral: task {oldest['task_id']} ({oldest['task_name']}, "
            f"{oldest['state']}), deferred {_duration(oldest['age_seconds'])} ago"
        )
    click.echo(f"triggers waiting for a triggerer: {document['triggers_waiting_for_a_triggerer']}")


#: The commands :mod:`celery_defer.cli` adds to the ``celery defer`` group.
COMMANDS = (list_command, show_command, stats_command)

"""celery-defer's settings, read once from ``app.conf``.

Settings follow Celery's conventions: lowercase ``defer_*`` names on
``app.conf``; with ``config_from_object(..., namespace="CELERY")`` the
uppercase ``CELERY_DEFER_*`` names are read too. Nothing is read from the
environment at import time: a :class:`Settings` is built from an app when it
is first needed and then cached for that app.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery_defer.exceptions import ConfigurationError

if TYPE_CHECKING:
    from celery import Celery

DEFAULTS: dict[str, Any] = {
    "defer_database_url": "sqlite:///celery-defer.sqlite3",
    "defer_triggerer_capacity": 1000,
    "defer_triggerer_heartbeat": 5.0,
    "defer_triggerer_health_timeout": 30.0,
    "defer_sweep_interval": 15.0,
    "defer_trigger_queue": "celery_defer.triggers",
    "defer_max_kwargs_bytes": 65536,
    "defer_triggerer_block_warning": 0.5,
    "defer_event_retention": 86400.0,
    "defer_ended_retention": 600.0,
    "defer_timer_horizon": 60.0,
    "defer_encryption_keys": None,
    "defer_resume_republish_after": 300.0,
}

_cache: weakref.WeakKeyDictionary[Any, Settings] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class Settings:
    """The validated ``defer_*`` settings of one Celery app."""

    database_url: str
    triggerer_capacity: int
    triggerer_heartbeat: float
    triggerer_health_timeout: float
    sweep_interval: float
    trigger_queue: str
    max_kwargs_bytes: int
    #: Seconds the triggerer's event loop may be blocked before the watchdog warns.
    triggerer_block_warning: float
    #: Seconds an external event counts for ExternalEventTrigger waiters; the sweep
    #: deletes older ones.
    event_retention: float
    #: Seconds an ended deferral stays in the store (``celery defer show`` finds it);
    #: the sweep deletes older ones.
    ended_retention: float
    #: Seconds ahead of its moment a timer trigger is claimed by a triggerer; a timer
    #: further away stays a row in the store (no coroutine, no capacity).
    timer_horizon: float
    #: Seconds a published resume may wait unclaimed before the sweep publishes it
    #: again (its message may be lost with a broker that restarted without persistence).
    resume_republish_after: float
    #: ``defer_encryption_keys`` as configured (None: stored values stay in clear); the
    #: codec (:func:`celery_defer.codec.codec_for`) checks them and builds the keyring.
    #: Kept out of the repr and of comparisons: a logged Settings never shows a key.
    encryption_keys: Any = field(repr=False, compare=False)

    @classmethod
    def from_app(cls, app: Celery) -> Settings:
        """Return the app's settings, building and validating them on first use."""
        try:
            return _cache[app]
        except KeyError:
            pass
        settings = cls(
            database_url=_text(app, "defer_database_url"),
            triggerer_capacity=_positive_int(app, "defer_triggerer_capacity"),
            triggerer_heartbeat=_positive_float(app, "defer_triggerer_heartbeat"),
            triggerer_health_timeout=_positive_float(app, "defer_triggerer_health_timeout"),
            sweep_interval=_positive_float(app, "defer_sweep_interval"),
            trigger_queue=_text(app, "defer_trigger_queue"),
            max_kwargs_bytes=_positive_int(app, "defer_max_kwargs_bytes"),
            triggerer_block_warning=_positive_float(app, "defer_triggerer_block_warning"),
            event_retention=_positive_float(app, "defer_event_retention"),
            ended_retention=_positive_float(app, "defer_ended_retention"),
            timer_horizon=_positive_float(app, "defer_timer_horizon"),
            encryption_keys=_lookup(app, "defer_encryption_keys"),
            resume_republish_after=_positive_float(app, "defer_resume_republish_after"),
        )
        if settings.triggerer_health_timeout <= settings.triggerer_heartbeat:
            raise ConfigurationError(
                "defer_triggerer_health_timeout "
                f"({settings.triggerer_health_timeout}) must be longer than "
                f"defer_triggerer_heartbeat ({settings.triggerer_heartbeat})"
            )
        if settings.timer_horizon < 2 * settings.triggerer_heartbeat:
            # Far timers are claimed by the scan every heartbeat: two scans before the moment.
            raise ConfigurationError(
                f"defer_timer_horizon ({settings.timer_horizon}) must be at least twice "
                f"defer_triggerer_heartbeat ({settings.triggerer_heartbeat})"
            )
        _cache[app] = settings
        return settings


def _lookup(app: Celery, name: str) -> Any:
    conf = app.conf
    for key in (name, "CELERY_" + name.upper()):
        value = conf.get(key)
        if value is not None:
            return value
    return DEFAULTS[name]


def _text(app: Celery, name: str) -> str:
    value = _lookup(app, name)
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _positive_int(app: Celery, name: str) -> int:
    value = _lookup(app, name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    return value


def _positive_float(app: Celery, name: str) -> float:
    value = _lookup(app, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)

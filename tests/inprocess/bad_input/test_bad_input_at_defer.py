"""Bad input at defer time: each case is refused before anything is stored.

The task ends FAILURE with an error naming the problem (the kwarg's path, the method, the
classpath, the limit), and the store holds no deferral and no trigger for it. A classpath
that imports but is not a ``BaseTrigger`` is never called, not even to build it: that check
is a security boundary. Naive and non-UTC datetimes are not errors: they are documented to
mean UTC and to be converted, and the last tests check the trigger fires at that instant.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

import pytest

from celery_defer import InvalidDeferral
from celery_defer.exceptions import SerializationError
from celery_defer.testing import SuccessTrigger
from celery_defer.triggers import DateTimeTrigger, TimeDeltaTrigger
from tests.inprocess.bad_input.kit import (
    DEFER_OPTIONS,
    EXECUTED,
    Claims,
    Fires,
    Live,
    SerializeRaises,
    SerializeReturnsJunk,
    trigger_rows,
)

KIT = "tests.inprocess.bad_input.kit"
LIMIT = r"over the limit of 65536 \(defer_max_kwargs_bytes\)"  # the documented default


def _cycle() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def _good(**options: Any) -> dict[str, Any]:
    return {"trigger": SuccessTrigger(), **options}


def _kwargs(**extra: Any) -> dict[str, Any]:
    return _good(kwargs={"tag": "bad", **extra})


# case id -> (how the task defers, the error it fails with, what the message must say)
REFUSED: dict[str, tuple[Any, type[Exception], str]] = {
    # -- the resumed method's kwargs
    "kwargs-object": (
        lambda: _kwargs(blob=object()),
        SerializationError,
        r"kwargs\['blob'\]: object of type object is not JSON-serializable \(supported: None",
    ),
    "kwargs-set-deep-inside": (
        lambda: _kwargs(batches=[[1], {2, 3}]),
        SerializationError,
        r"kwargs\['batches'\]\[1\]: object of type set is not JSON-serializable",
    ),
    "kwargs-int-dict-key": (
        lambda: _kwargs(by_id={7: "seven"}),
        SerializationError,
        r"kwargs\['by_id'\]: dict key 7 of type int is not a str",
    ),
    "kwargs-nan": (
        lambda: _kwargs(ratio=float("nan")),
        SerializationError,
        r"kwargs\['ratio'\]: float nan cannot be stored \(JSON has no NaN or infinity\)",
    ),
    "kwargs-cycle": (
        lambda: _kwargs(loop=_cycle()),
        SerializationError,
        r"kwargs\['loop'\]\[0\]: list contains itself",
    ),
    "kwargs-not-a-dict": (
        lambda: _good(kwargs=["tag"]),
        InvalidDeferral,
        "kwargs must be a dict, got list",
    ),
    "kwargs-named-event": (
        lambda: _kwargs(event="mine"),
        InvalidDeferral,
        "kwargs must not contain 'event': the resumed method receives the trigger's event",
    ),
    "kwargs-oversized": (
        lambda: _kwargs(blob="x" * 70_000),
        InvalidDeferral,
        rf"^kwargs take 700\d\d bytes serialized, {LIMIT}: store large data elsewhere",
    ),
    # -- the trigger
    "trigger-kwargs-not-serializable": (
        lambda: {"trigger": Claims(f"{KIT}.Fires", {"value": object()})},
        SerializationError,
        r"trigger kwargs\['value'\]: object of type object is not JSON-serializable",
    ),
    "trigger-kwargs-oversized": (
        lambda: {"trigger": Fires("y" * 70_000)},
        InvalidDeferral,
        rf"^trigger kwargs take 700\d\d bytes serialized, {LIMIT}",
    ),
    "trigger-not-a-trigger": (
        lambda: {"trigger": "in five minutes"},
        InvalidDeferral,
        "trigger must be a celery_defer.BaseTrigger instance, got str",
    ),
    "trigger-class-not-instance": (
        lambda: {"trigger": SuccessTrigger},
        InvalidDeferral,
        r"trigger must be a celery_defer.BaseTrigger instance, got the class SuccessTrigger",
    ),
    "trigger-serialize-raises": (
        lambda: {"trigger": SerializeRaises()},
        InvalidDeferral,
        r"SerializeRaises.serialize\(\) raised KeyError\('no_such_field'\)",
    ),
    "trigger-serialize-returns-junk": (
        lambda: {"trigger": SerializeReturnsJunk()},
        InvalidDeferral,
        r"SerializeReturnsJunk.serialize\(\) must return \(classpath, kwargs dict\), got ",
    ),
    "classpath-module-missing": (
        lambda: {"trigger": Claims("celery_defer_gone.triggers.Vanished")},
        InvalidDeferral,
        "trigger classpath 'celery_defer_gone.triggers.Vanished' does not import: "
        "No module named 'celery_defer_gone'",
    ),
    "classpath-attribute-missing": (
        lambda: {"trigger": Claims(f"{KIT}.Vanished")},
        InvalidDeferral,
        f"trigger classpath '{KIT}.Vanished' does not import: .*no attribute 'Vanished'",
    ),
    "classpath-not-dotted": (
        lambda: {"trigger": Claims("Fires")},
        InvalidDeferral,
        "trigger classpath 'Fires' is not a dotted path",
    ),
    "classpath-plain-class": (
        lambda: {"trigger": Claims(f"{KIT}.NotATrigger", {"x": 1})},
        InvalidDeferral,
        f"trigger classpath '{KIT}.NotATrigger' is not a BaseTrigger subclass",
    ),
    "classpath-plain-function": (
        lambda: {"trigger": Claims(f"{KIT}.not_a_trigger", {"x": 1})},
        InvalidDeferral,
        f"trigger classpath '{KIT}.not_a_trigger' is not a BaseTrigger subclass",
    ),
    "classpath-os-system": (
        lambda: {"trigger": Claims("os.system", {"command": "echo pwned"})},
        InvalidDeferral,
        "trigger classpath 'os.system' is not a BaseTrigger subclass",
    ),
    "datetime-trigger-given-a-date": (
        lambda: {"trigger": DateTimeTrigger(date(2030, 1, 1))},  # type: ignore[arg-type]
        InvalidDeferral,
        r"DateTimeTrigger needs a datetime, got the date datetime.date\(2030, 1, 1\) with no "
        "time of day",
    ),
    "datetime-trigger-given-a-string": (
        lambda: {"trigger": DateTimeTrigger("2030-01-01T00:00:00Z")},  # type: ignore[arg-type]
        InvalidDeferral,
        "DateTimeTrigger needs a datetime, got str: '2030-01-01T00:00:00Z'",
    ),
    "timedelta-trigger-given-seconds": (
        lambda: {"trigger": TimeDeltaTrigger(300)},  # type: ignore[arg-type]
        InvalidDeferral,
        "TimeDeltaTrigger needs a timedelta, got int: 300",
    ),
    # -- the method to resume into
    "method-missing": (
        lambda: _good(method_name="finsh"),
        InvalidDeferral,
        "task 'bad.subject' has no method 'finsh' to resume into",
    ),
    "method-not-callable": (
        lambda: _good(method_name="not_callable"),
        InvalidDeferral,
        "'not_callable' of task 'bad.subject' is not callable",
    ),
    "method-dunder": (
        lambda: _good(method_name="__init__"),
        InvalidDeferral,
        "method_name '__init__' is private: resume into a public method",
    ),
    "method-of-celery-task-api": (
        lambda: _good(method_name="apply_async"),
        InvalidDeferral,
        "method_name 'apply_async' is part of Celery's Task API, not a method of task "
        "'bad.subject'",
    ),
    "method-of-deferrable-task": (
        lambda: _good(method_name="defer"),
        InvalidDeferral,
        "method_name 'defer' is part of DeferrableTask, not a method of task 'bad.subject'",
    ),
    "method-not-a-string": (
        lambda: _good(method_name=None),
        InvalidDeferral,
        "method_name must be a non-empty string, got None",
    ),
    # -- the timeout
    "timeout-negative-seconds": (
        lambda: _good(timeout=-5),
        InvalidDeferral,
        "timeout must not be negative, got -5",
    ),
    "timeout-negative-timedelta": (
        lambda: _good(timeout=timedelta(seconds=-1)),
        InvalidDeferral,
        r"timeout must not be negative, got datetime.timedelta\(days=-1, seconds=86399\)",
    ),
    "timeout-string": (
        lambda: _good(timeout="1h"),
        InvalidDeferral,
        "timeout must be a timedelta or a number of seconds, got str",
    ),
    "timeout-datetime": (
        lambda: _good(timeout=datetime.now(timezone.utc) + timedelta(hours=1)),
        InvalidDeferral,
        "timeout must be a timedelta or a number of seconds, got datetime",
    ),
    "timeout-bool": (
        lambda: _good(timeout=True),
        InvalidDeferral,
        "timeout must be a timedelta or a number of seconds, got bool",
    ),
    "timeout-nan": (
        lambda: _good(timeout=float("nan")),
        InvalidDeferral,
        "timeout must be a finite number of seconds, got nan",
    ),
    "timeout-infinite": (
        lambda: _good(timeout=float("inf")),
        InvalidDeferral,
        "timeout must be a finite number of seconds, got inf",
    ),
    "timeout-too-many-seconds": (
        lambda: _good(timeout=1e15),
        InvalidDeferral,
        "timeout 1000000000000000.0 from now is out of range",
    ),
    "timeout-out-of-range": (
        lambda: _good(timeout=timedelta.max),
        InvalidDeferral,
        r"timeout datetime.timedelta\(days=999999999, .*\) from now is out of range",
    ),
}
DEFER_OPTIONS.update({case: build for case, (build, _, _) in REFUSED.items()})


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_before_anything_is_stored(live: Live, case: str) -> None:
    _, error, message = REFUSED[case]
    triggers_before = trigger_rows(live.app)
    result = live.defer(case)
    with pytest.raises(error, match=message):
        result.get(timeout=10, interval=0.02)
    assert result.state == "FAILURE"
    assert type(result.result) is error  # not merely a subclass: the precise error
    assert live.store.get_deferral(result.id) is None
    assert trigger_rows(live.app) == triggers_before
    assert EXECUTED == []


# -- naive and non-UTC moments: documented to mean UTC / to be converted ----------------------

_IN = timedelta(milliseconds=300)
DEFER_OPTIONS.update(
    {
        "naive-moment": lambda: {
            "trigger": DateTimeTrigger(datetime.now(timezone.utc).replace(tzinfo=None) + _IN)
        },
        "moment-at-plus-5": lambda: {
            "trigger": DateTimeTrigger(
                datetime.now(timezone(timedelta(hours=5), "PKT")) + _IN  # Asia/Karachi
            )
        },
    }
)


@pytest.mark.parametrize("case", ["naive-moment", "moment-at-plus-5"])
def test_a_moment_means_its_utc_instant(live: Live, case: str) -> None:
    started = datetime.now(timezone.utc)
    with live.triggerer():
        value = live.defer(case).get(timeout=10, interval=0.02)
    fired_at = value["payload"]
    assert isinstance(fired_at, datetime) and fired_at.utcoffset() == timedelta(0)
    # The payload is the instant asked for, in UTC: 300 ms after the task ran, not hours away.
    assert timedelta(0) < fired_at - started < timedelta(seconds=5)
    assert datetime.now(timezone.utc) >= fired_at

"""Bad input at the triggerer: triggers that break the contract while they run.

Each bad trigger fails only its own task, with :class:`TriggerFailed` saying what was wrong.
One triggerer serves the whole module and must survive every case: after each, it still
heart-beats, and good tasks deferred alongside (and after) resume with their results.
Damaged trigger rows are in test_bad_input_stored_rows.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest

from celery_defer import Triggerer, TriggerFailed
from celery_defer.triggers import BaseTrigger
from tests.inprocess.bad_input.kit import (
    DEFER_OPTIONS,
    Blocker,
    CleanupInterrupts,
    CleanupRaises,
    EndsEmpty,
    ExitsProcess,
    Interrupts,
    Live,
    PlainRun,
    Raises,
    RaisesBaseException,
    RaisesCancelled,
    RaisesGeneratorExit,
    ReturnsEvent,
    YieldsJunk,
    YieldsUnstorable,
    assert_untouched,
)
from tests.support.waiting import eventually

KIT = "tests.inprocess.bad_input.kit"

# case id -> (the trigger, what the task's TriggerFailed must say)
MISBEHAVING: dict[str, tuple[Any, str]] = {
    "run-returns-instead-of-yielding": (
        ReturnsEvent,
        rf"^{KIT}.ReturnsEvent.run\(\) is a coroutine function: it must be an async generator "
        r"that yields TriggerEvent \(use 'yield', not 'return'\)$",
    ),
    "run-not-async": (
        PlainRun,
        rf"^{KIT}.PlainRun.run\(\) must be an async generator, it returned list$",
    ),
    "run-ends-without-event": (EndsEmpty, rf"^{KIT}.EndsEmpty ended without yielding an event$"),
    "run-raises": (Raises, rf"^{KIT}.Raises raised ConnectionError: upstream said no$"),
    "run-raises-system-exit": (ExitsProcess, rf"^{KIT}.ExitsProcess raised SystemExit: 3$"),
    "run-raises-keyboard-interrupt": (
        Interrupts,
        rf"^{KIT}.Interrupts raised KeyboardInterrupt: $",
    ),
    "run-raises-generator-exit": (
        RaisesGeneratorExit,
        rf"^{KIT}.RaisesGeneratorExit raised GeneratorExit: closed by hand$",
    ),
    "run-raises-a-base-exception-of-its-own": (
        RaisesBaseException,
        rf"^{KIT}.RaisesBaseException raised Doom: not an Exception$",
    ),
    "run-raises-cancelled-error": (
        RaisesCancelled,
        rf"^{KIT}.RaisesCancelled raised CancelledError, but nothing cancelled it \(did it await "
        r"a cancelled future or task\?\)$",
    ),
    "run-yields-not-an-event": (
        YieldsJunk,
        rf"^{KIT}.YieldsJunk yielded dict, not a TriggerEvent$",
    ),
    "run-yields-unstorable-payload": (
        YieldsUnstorable,
        r"^YieldsUnstorable yielded a payload that cannot be stored: event payload\['event'\]"
        r"\['handle'\]: object of type object is not JSON-serializable",
    ),
}


def _options(made: Callable[[], BaseTrigger]) -> dict[str, Any]:
    return {"trigger": made()}


DEFER_OPTIONS.update({case: partial(_options, made) for case, (made, _) in MISBEHAVING.items()})


@pytest.fixture(scope="module")
def triggerer(live: Live) -> Iterator[Triggerer]:
    with live.triggerer() as running:
        yield running


@pytest.mark.parametrize("case", list(MISBEHAVING))
def test_a_misbehaving_trigger_fails_its_task_only(
    live: Live, triggerer: Triggerer, case: str
) -> None:
    before = live.defer("good", tag="before")
    bad = live.defer(case)
    with pytest.raises(TriggerFailed, match=MISBEHAVING[case][1]):
        bad.get(timeout=10, interval=0.02)
    assert bad.state == "FAILURE"
    assert live.store.get_deferral(bad.id) is None
    assert_untouched(live, triggerer, before)


# -- a cleanup() that raises, a trigger that blocks the loop: logged, never fatal ------------


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def warnings(self, *words: str) -> list[logging.LogRecord]:
        return [
            r
            for r in self.records
            if r.levelno >= logging.WARNING and all(w in r.getMessage() for w in words)
        ]


@pytest.fixture
def logged() -> Iterator[Records]:
    """Records of celery_defer's loggers (the test worker turns the root logger to ERROR)."""
    handler = Records()
    logger = logging.getLogger("celery_defer")
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


DEFER_OPTIONS["cleanup-raises"] = lambda: {"trigger": CleanupRaises()}
DEFER_OPTIONS["cleanup-interrupts"] = lambda: {"trigger": CleanupInterrupts()}
DEFER_OPTIONS["blocks-the-loop"] = lambda: {"trigger": Blocker(1.2)}


CLEANUPS = {
    "cleanup-raises": ("CleanupRaises", RuntimeError),
    "cleanup-interrupts": ("CleanupInterrupts", KeyboardInterrupt),
}


@pytest.mark.parametrize("case", list(CLEANUPS))
def test_a_cleanup_that_raises_is_logged_and_the_task_resumes(
    live: Live, triggerer: Triggerer, logged: Records, case: str
) -> None:
    name, error = CLEANUPS[case]
    before = live.defer("good", tag="before")
    result = live.defer(case)
    assert result.get(timeout=10, interval=0.02) == {"tag": case, "payload": True}
    assert_untouched(live, triggerer, before)
    (record,) = logged.warnings(f"cleanup() of trigger {KIT}.{name} raised; ignored")
    assert record.exc_info and isinstance(record.exc_info[1], error)


def test_a_trigger_blocking_the_loop_is_named_and_the_others_keep_firing(
    live: Live, triggerer: Triggerer, logged: Records
) -> None:
    blocker = live.defer("blocks-the-loop")
    alongside = live.defer("good", tag="alongside")
    assert blocker.get(timeout=15, interval=0.02)["payload"] == "unblocked"
    # Other triggers keep firing once the stall is over, through the same triggerer.
    assert_untouched(live, triggerer, alongside)
    eventually(lambda: logged.warnings("in total by trigger"), "the end of the stall logged")
    (during,) = logged.warnings("blocked for", "so far by trigger")
    (after,) = logged.warnings("blocked for", "in total by trigger")
    for record in (during, after):
        assert f"by trigger {KIT}.Blocker (id " in record.getMessage()
    assert "bad_input/kit.py:" in during.getMessage()  # where it is stuck
    assert 1.0 <= after.blocked_seconds <= 2.5  # type: ignore[attr-defined]
    assert f"{after.blocked_seconds:.1f}s in total" in after.getMessage()  # type: ignore[attr-defined]

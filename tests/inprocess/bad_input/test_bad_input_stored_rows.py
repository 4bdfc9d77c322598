"""Damaged rows in the store: a trigger the triggerer cannot rebuild, a deferral that can no
longer be resumed as it was, a task name no worker knows.

Each row is damaged in the real store (SQL on its tables) after the task deferred and before
any triggerer runs. The task ends FAILURE with an error naming what was wrong, and the store
forgets its deferral (nothing is re-sent for ever); the triggerer runs on, and the good task
deferred alongside resumes. A stored classpath that imports but is not a ``BaseTrigger`` is
never called: that check is a security boundary.
"""

from __future__ import annotations

import base64
import json
import logging
import pickle
from typing import Any

import pytest
from celery.exceptions import NotRegistered

from celery_defer import InvalidDeferral, TriggerFailed
from celery_defer.exceptions import SerializationError, StoreError
from tests.inprocess.bad_input.kit import EXECUTED, Live, assert_untouched, corrupt, stored

KIT = "tests.inprocess.bad_input.kit"


class _Payload:
    """Unpickling this calls ``EXECUTED.append``: the proof a pickle was decoded."""

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (exec, ("import bad_input.kit; bad_input.kit.EXECUTED.append('unpickled')",))


#: A request snapshot in the envelope of releases before 0.2, naming pickle as its content
#: type: an attacker with write access to the store writes this to run code in the triggerer.
PICKLED_SNAPSHOT = json.dumps(
    {
        "content_type": "application/x-python-serialize",
        "encoding": "binary",
        "body": base64.b64encode(pickle.dumps(_Payload())).decode("ascii"),
        "wrap": "base64",
    }
)

# -- damaged trigger rows: the triggerer cannot rebuild the trigger --------------------------

# case id -> (what the trigger row is changed to, what the task's TriggerFailed must say)
DAMAGED_TRIGGERS: dict[str, tuple[dict[str, Any], str]] = {
    "stored-classpath-no-longer-imports": (
        {"trigger_classpath": "tests.inprocess.bad_input.kit_v1.Renamed"},
        r"^trigger tests.inprocess.bad_input.kit_v1.Renamed could not be rebuilt: trigger "
        r"classpath 'tests.inprocess.bad_input.kit_v1.Renamed' does not import: "
        r"No module named 'tests.inprocess.bad_input.kit_v1'$",
    ),
    "stored-classpath-attribute-gone": (
        {"trigger_classpath": f"{KIT}.Renamed"},
        rf"^trigger {KIT}.Renamed could not be rebuilt: .*no attribute 'Renamed'",
    ),
    "stored-classpath-plain-class": (
        {"trigger_classpath": f"{KIT}.NotATrigger"},
        rf"could not be rebuilt: trigger classpath '{KIT}.NotATrigger' is not a BaseTrigger",
    ),
    "stored-classpath-plain-function": (
        {"trigger_classpath": f"{KIT}.not_a_trigger"},
        rf"could not be rebuilt: trigger classpath '{KIT}.not_a_trigger' is not a BaseTrigger",
    ),
    "stored-classpath-os-system": (
        {"trigger_classpath": "os.system", "trigger_kwargs": '{"command":"echo pwned"}'},
        "could not be rebuilt: trigger classpath 'os.system' is not a BaseTrigger subclass",
    ),
    "stored-trigger-kwargs-corrupt-json": (
        {"trigger_kwargs": '{"value": tru'},
        rf"^trigger {KIT}.Fires could not be rebuilt: trigger kwargs: corrupt JSON: ",
    ),
    "stored-trigger-kwargs-unknown-tag": (
        {"trigger_kwargs": '{"value":{"__cd__":"pickle","v":"gASVAAAAAAAAAAA="}}'},
        rf"^trigger {KIT}.Fires could not be rebuilt: trigger kwargs\['value'\]: unknown type "
        "tag 'pickle'",
    ),
    "stored-trigger-kwargs-rejected-by-init": (
        {"trigger_kwargs": '{"colour":"red"}'},
        rf"^trigger {KIT}.Fires could not be rebuilt: .*__init__\(\) got an unexpected keyword "
        "argument 'colour'",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGED_TRIGGERS))
def test_a_damaged_trigger_row_fails_its_task_only(live: Live, case: str) -> None:
    damage, message = DAMAGED_TRIGGERS[case]
    bad = live.defer("fires", tag=case)
    before = live.defer("good", tag="before")
    stored(live, bad)
    stored(live, before)
    corrupt(live, bad, **damage)
    with live.triggerer() as triggerer:
        with pytest.raises(TriggerFailed, match=message):
            bad.get(timeout=10, interval=0.02)
        assert bad.state == "FAILURE"
        assert live.store.get_deferral(bad.id) is None
        assert_untouched(live, triggerer, before)
    assert EXECUTED == []  # the security boundary: nothing named by a bad row ran


# -- damaged deferral rows: the resume cannot be sent or run as stored ---------------------

# case id -> (what the deferral row is changed to, the error, what its message must say)
DAMAGED_DEFERRALS: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "stored-kwargs-corrupt-json": (
        {"kwargs": '{"tag": "stored-kwargs-corrupt-json"'},
        StoreError,
        r"^the stored deferral of task bad.subject\[[-0-9a-f]{36}\] is corrupt \(kwargs: "
        r"JSONDecodeError\(.*\)\): it cannot be resumed$",
    ),
    "stored-kwargs-not-an-object": (
        {"kwargs": '["stored-kwargs-not-an-object"]'},
        StoreError,
        r"is corrupt \(kwargs: TypeError\('a JSON list, not an object'\)\)",
    ),
    "stored-kwargs-unknown-tag": (
        {"kwargs": '{"tag":{"__cd__":"pickle","v":"gASVAAAAAAAAAAA="}}'},
        SerializationError,
        r"^kwargs\['tag'\]: unknown type tag 'pickle'$",
    ),
    "stored-request-corrupt": (
        {"request": '{"content_type": "application/json", "body": '},
        StoreError,
        r"is corrupt \(request: SerializationError\('request: corrupt JSON: .*'\)\): "
        r"it cannot be resumed$",
    ),
    "stored-request-not-an-object": (
        {"request": "[1]"},
        StoreError,
        r"is corrupt \(request: TypeError\('a snapshot must be an object of send options, "
        r"not list'\)\)",
    ),
    "stored-request-injects-args": (
        {"request": '{"args": [1], "task_id": "other"}'},
        StoreError,
        r"is corrupt \(request: ValueError\(\"unexpected send options \['args', 'task_id'\] ",
    ),
    "stored-request-stamp-named-like-a-send-option": (
        {"request": '{"stamped_headers": ["serializer"], "serializer": "pickle"}'},
        StoreError,
        r"is corrupt \(request: ValueError\(\"unexpected send options \['serializer'\] ",
    ),
    "stored-request-names-pickle": (
        {"request": PICKLED_SNAPSHOT},
        StoreError,
        r"is corrupt \(request: ValueError\(\"refused request snapshot with content type "
        r"'application/x-python-serialize': only JSON is ever decoded from the store\"\)\)",
    ),
    "stored-request-legacy-envelope-missing-nothing-but-wrong-wrap": (
        {
            "request": '{"content_type": "application/json", "encoding": "utf-8", '
            '"body": "e30=", "wrap": "base64"}'
        },
        StoreError,
        r"refused request snapshot with content type 'application/json'",
    ),
    "stored-method-renamed-since": (
        {"method": "finish_v1"},
        InvalidDeferral,
        "^task 'bad.subject' has no method 'finish_v1' to resume into$",
    ),
    "stored-kwargs-the-method-no-longer-takes": (
        {"kwargs": '{"tag":"x","retries_left":3}'},
        TypeError,
        r"finish\(\) got an unexpected keyword argument 'retries_left'",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGED_DEFERRALS))
def test_a_damaged_deferral_fails_its_task_only(live: Live, case: str) -> None:
    damage, error, message = DAMAGED_DEFERRALS[case]
    bad = live.defer("good", tag=case)
    before = live.defer("good", tag="before")
    stored(live, bad)
    stored(live, before)
    corrupt(live, bad, **damage)
    with live.triggerer() as triggerer:
        with pytest.raises(error, match=message):
            bad.get(timeout=10, interval=0.02)
        assert bad.state == "FAILURE"
        assert live.store.get_deferral(bad.id) is None  # forgotten, not re-sent forever
        assert_untouched(live, triggerer, before)
    assert EXECUTED == []  # no stored row chose a decoder that ran code


def test_an_unknown_task_name_fails_as_celery_fails_unknown_tasks(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    """A resume no worker knows (the task was renamed or removed by a deploy) is what Celery
    makes of any unregistered task: an ERROR log naming it, and FAILURE with NotRegistered.
    The deferral is forgotten with it, not re-sent for ever by the sweep."""
    bad = live.defer("good", tag="renamed")
    before = live.defer("good", tag="before")
    stored(live, bad)
    stored(live, before)
    corrupt(live, bad, task_name="bad.subject_v0")
    consumer_log = caplog.at_level(logging.ERROR, logger="celery.worker.consumer.consumer")
    with consumer_log, live.triggerer() as triggerer:
        with pytest.raises(NotRegistered, match=r"bad.subject_v0"):
            bad.get(timeout=10, interval=0.02)
        assert bad.state == "FAILURE"
        assert_untouched(live, triggerer, before)
    assert any(
        "Received unregistered task of type 'bad.subject_v0'" in r.getMessage()
        for r in caplog.records
    )
    assert live.store.get_deferral(bad.id) is None

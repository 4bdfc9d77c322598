"""FileTrigger in a plain event loop: fires once the path exists, not before, and never stats
on the event loop. A task resuming on a file is in tests/inprocess/triggers/test_file_trigger.py.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncGenerator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import pytest

from celery_defer import TriggerFailed
from celery_defer.exceptions import InvalidDeferral
from celery_defer.serialization import dumps, loads
from celery_defer.triggers import FileTrigger, TriggerEvent, filesystem
from celery_defer.triggers.execution import first_event

pytestmark = pytest.mark.timeout(30)


def test_it_round_trips_with_the_path_as_text(tmp_path: Path) -> None:
    classpath, kwargs = FileTrigger(tmp_path / "a.csv", poll_interval=0.5).serialize()
    assert classpath == "celery_defer.triggers.FileTrigger"
    assert kwargs == {"path": str(tmp_path / "a.csv"), "poll_interval": 0.5}
    assert FileTrigger(**loads(dumps(kwargs))).serialize() == (classpath, kwargs)


@pytest.mark.parametrize(
    ("path", "interval", "message"),
    [
        ("", 1.0, "non-empty path"),
        (42, 1.0, "needs a path"),
        ("/x", 0, "positive and finite"),
        ("/x", None, "number of seconds"),
    ],
)
def test_bad_arguments_are_refused(path: Any, interval: Any, message: str) -> None:
    with pytest.raises(InvalidDeferral, match=message):
        FileTrigger(path, poll_interval=interval)


def test_it_fires_after_the_file_appears_and_not_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "export.csv"
    stat_threads: set[str] = set()
    real_stat = filesystem._stat

    def recording_stat(path: str) -> os.stat_result | None:
        stat_threads.add(threading.current_thread().name)
        return real_stat(path)

    monkeypatch.setattr(filesystem, "_stat", recording_stat)

    async def scenario() -> tuple[bool, TriggerEvent]:
        stream = cast(
            AsyncGenerator[TriggerEvent, None], FileTrigger(str(target), poll_interval=0.02).run()
        )
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.2)
        early = first.done()
        target.write_bytes(b"a,b\n1,2\n")
        event = await asyncio.wait_for(first, timeout=2)
        await stream.aclose()
        return early, event

    early, event = asyncio.run(scenario())
    assert early is False
    assert event.payload["path"] == str(target)
    assert event.payload["size"] == 8
    mtime = event.payload["mtime"]
    assert mtime.tzinfo is not None
    assert abs((mtime - datetime.now(timezone.utc)).total_seconds()) < 60
    assert stat_threads and threading.main_thread().name not in stat_threads


def test_a_stat_error_other_than_missing_fails_the_trigger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(path: str) -> os.stat_result:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "stat", denied)  # the os module FileTrigger stats through
    with pytest.raises(TriggerFailed, match="FileTrigger raised PermissionError"):
        asyncio.run(first_event(FileTrigger(str(tmp_path / "x"))))

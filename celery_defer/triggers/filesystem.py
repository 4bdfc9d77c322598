""":class:`FileTrigger`: wait for a file to appear.

The commonest sensor in batch pipelines ("the export has landed"). Each check
is one ``stat()``, made on a worker thread (``asyncio.to_thread``) because a
network filesystem can block for seconds and the triggerer's event loop must
never block.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from celery_defer.exceptions import InvalidDeferral
from celery_defer.triggers.base import BaseTrigger, TriggerEvent
from celery_defer.triggers.task_result import positive_interval

__all__ = ["FileTrigger"]

_CLASSPATH = "celery_defer.triggers.FileTrigger"


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


class FileTrigger(BaseTrigger):
    """Fire when ``path`` exists, checking every ``poll_interval`` seconds.

    The path is checked on the triggerer's machine, so it must be visible
    there. The payload is a dict: ``path`` (as given), ``size`` in bytes and
    ``mtime`` (an aware UTC datetime). It fires as soon as the path exists,
    so a producer should write the file under another name and rename it
    into place (atomic on one filesystem); a file written in place may be
    seen before it is complete. Any other error of ``stat()`` (say, a
    permission denied) fails the waiting tasks with ``TriggerFailed``.
    """

    def __init__(self, path: str | os.PathLike[str], poll_interval: float = 5.0) -> None:
        super().__init__()
        if not isinstance(path, (str, os.PathLike)):
            raise InvalidDeferral(f"FileTrigger needs a path, got {type(path).__name__}")
        self.path = os.fspath(path)
        if not self.path:
            raise InvalidDeferral("FileTrigger needs a non-empty path")
        self.poll_interval = positive_interval("FileTrigger", poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Return the public classpath, the path (a str) and the interval."""
        return (_CLASSPATH, {"path": self.path, "poll_interval": self.poll_interval})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Stat the path off the loop until it exists, then yield its size and mtime."""
        while (found := await asyncio.to_thread(_stat, self.path)) is None:
            await asyncio.sleep(self.poll_interval)
        yield TriggerEvent(
            {
                "path": self.path,
                "size": found.st_size,
                "mtime": datetime.fromtimestamp(found.st_mtime, tz=timezone.utc),
            }
        )

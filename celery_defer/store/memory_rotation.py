"""Key rotation in the in-memory store: rows rewritten a batch at a time, as the SQL store does.

The rewrite (sealing under a new key) runs outside the store's lock, as the
SQL store runs it outside any transaction: it may be slow, and it may itself
use the store.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = ["rewrite_in_batches"]


#: The primary key of a rewritten "table": a task id or a trigger id.
Key = TypeVar("Key", str, int)


def rewrite_in_batches(
    lock: threading.Lock,
    read: Callable[[], Iterable[tuple[Key, str, int]]],
    write: Callable[[Key, int, str], bool],
    rewrite: Callable[[str], str | None],
    batch_size: int,
) -> int:
    """Walk (key, kwargs, version) rows in key order, a batch at a time; rewrite each.

    ``read`` and ``write`` run under ``lock``; ``rewrite`` outside it (it may be
    slow, and may itself use the store). Returns how many rows were rewritten.
    """
    rewritten = 0
    last: Key | None = None
    while True:
        with lock:
            batch = sorted(row for row in read() if last is None or row[0] > last)
        batch = batch[:batch_size]
        if not batch:
            return rewritten
        last = batch[-1][0]
        changed = [(row, new) for row in batch if (new := rewrite(row[1])) is not None]
        with lock:
            rewritten += sum(write(key, version, new) for (key, _, version), new in changed)
        if len(batch) < batch_size:
            return rewritten

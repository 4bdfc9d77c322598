"""A crash-safe ``filesystem://`` broker for the embedded default.

kombu's filesystem transport creates a message file and then writes it, while
a consumer in another process may already move and read that file: it reads
it empty, the JSON fails to decode, and the message is lost (seen on a loaded
machine: kombu/transport/filesystem.py ``Channel._put`` and ``_get``). This
transport writes each message under a name consumers ignore, then renames it
into place, which is atomic on POSIX.

Use it as ``broker="defer-filesystem://"`` with the same transport options as
``filesystem://``; importing :mod:`celery_defer` registers the alias.
"""

from __future__ import annotations

import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

ALIAS = "defer-filesystem"


class Channel(filesystem.Channel):  # type: ignore[misc]
    """A filesystem channel whose messages appear whole or not at all."""

    def _put(self, queue: str, payload: Any, **_kwargs: Any) -> None:
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # A leading dot and no ".msg" suffix: _get skips the file until renamed.
        partial = os.path.join(self.data_folder_out, f".partial-{uuid.uuid4()}")
        try:
            with open(partial, "wb") as handle:
                handle.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):  # type: ignore[misc]
    """kombu's filesystem transport with atomic message writes."""

    Channel = Channel


TRANSPORT_ALIASES.setdefault(ALIAS, f"{__name__}:Transport")

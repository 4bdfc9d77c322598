"""The codec of stored user values: typed JSON, sealed when keys are configured.

A deferral's kwargs and its trigger's kwargs are written by the task side and
read by the triggerer and by the worker that resumes the task, possibly after
an upgrade or a key rotation. One object per app does both steps — typed JSON
(:mod:`celery_defer.serialization`) and sealing (:mod:`celery_defer.encryption`)
— so no caller pairs them by hand, and the keyring is built once.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any

from celery_defer import encryption, serialization
from celery_defer.settings import Settings

if TYPE_CHECKING:
    from celery import Celery

__all__ = ["Codec", "codec_for"]


class Codec:
    """Turns user values into the text the store keeps, and back.

    ``keyring`` is None when no ``defer_encryption_keys`` are set: values are
    stored as clear typed JSON, and a sealed value read back raises
    :class:`~celery_defer.exceptions.EncryptionError`.
    """

    def __init__(self, keyring: encryption.Keyring | None) -> None:
        self.keyring = keyring

    def seal(self, text: str) -> str:
        """What to store for clear typed-JSON ``text``."""
        return encryption.seal(self.keyring, text)

    def unseal(self, text: str, *, where: str = "value") -> str:
        """The clear typed-JSON text of stored ``text``."""
        return encryption.unseal(self.keyring, text, where=where)

    def dumps(self, value: Any, *, where: str = "value") -> str:
        """The stored text of ``value`` (refused with a message naming ``where``)."""
        return self.seal(serialization.dumps(value, where=where))

    def loads(self, text: str, *, where: str = "value") -> Any:
        """The value stored ``text`` holds (opened first when sealed)."""
        return encryption.loads(self.keyring, text, where=where)

    def loads_data(self, data: Any, *, where: str = "value") -> Any:
        """The value of already-parsed JSON ``data`` (resume messages of releases before 0.2)."""
        return serialization.decode(
            encryption.unseal_data(self.keyring, data, where=where), where=where
        )


_codecs: weakref.WeakKeyDictionary[Any, Codec] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def codec_for(app: Celery) -> Codec:
    """The app's codec, built (and its keys checked) on first use."""
    try:
        return _codecs[app]
    except KeyError:
        pass
    keyring = encryption.keyring_from_setting(Settings.from_app(app).encryption_keys)
    with _lock:
        return _codecs.setdefault(app, Codec(keyring))

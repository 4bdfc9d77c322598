"""Encryption at rest of the user values a deferral stores: its kwargs and its trigger's kwargs.

Both may hold credentials (an API token a trigger polls with, a password the resumed
method needs), and the store is often a database many people can read. With the
``defer_encryption_keys`` setting, both are sealed with Fernet (AES-128-CBC plus
HMAC-SHA256, from the ``cryptography`` package) before they reach the store, and opened
only where they are used: by the triggerer when it rebuilds a trigger, and by the worker
when it calls the resumed method. The resume message carries the sealed text, so secrets
never cross the broker or land in a result backend's ``result_extended`` kwargs.

A sealed value is text in the same column, in the form of a typed-JSON tag::

    {"__cd__": "sealed", "v": "<Fernet token>"}

:mod:`celery_defer.serialization` escapes any user dict holding the ``"__cd__"`` key, so
clear typed JSON can never look like this: a store may hold clear rows (written before
encryption was turned on) next to sealed ones, and both keep working.

Several keys may be configured: the first seals, every one opens (``MultiFernet``). That
is key rotation: put the new key first, run ``celery -A proj defer rotate-keys``, and drop
the old key once nothing sealed with it is left (see README.md, "Secrets at rest").
``cryptography`` is imported only when keys are configured, so it stays an optional extra.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celery_defer import serialization
from celery_defer.exceptions import ConfigurationError, EncryptionError

if TYPE_CHECKING:
    from cryptography.fernet import Fernet, MultiFernet

__all__ = [
    "PLACEHOLDER",
    "SETTING",
    "Keyring",
    "is_sealed",
    "keyring_from_setting",
    "loads",
    "reseal",
    "seal",
    "unseal",
    "unseal_data",
]

#: The setting holding the keys.
SETTING = "defer_encryption_keys"

#: What inspection shows instead of a sealed value: it never prints decrypted secrets.
PLACEHOLDER = "<encrypted>"

_SEALED_TAG = "sealed"
_PREFIX = json.dumps({serialization.TAG: _SEALED_TAG, "v": ""}, separators=(",", ":"))[:-2]

_INSTALL_HINT = "pip install 'celery-defer[encryption]'"


class Keyring:
    """The configured Fernet keys: the first seals, every one opens.

    Its ``repr`` names how many keys it holds, never a key, so a logged
    :class:`~celery_defer.settings.Settings` cannot leak one.
    """

    def __init__(self, fernets: Sequence[Fernet]) -> None:
        from cryptography.fernet import MultiFernet

        self._primary = fernets[0]
        self._all: MultiFernet = MultiFernet(list(fernets))
        self.size = len(fernets)

    def __repr__(self) -> str:
        """How many keys, never the keys themselves."""
        return f"<Keyring of {self.size} key{'s' if self.size != 1 else ''}>"

    def seal(self, text: str) -> str:
        """Encrypt ``text`` with the first key; return the sealed form."""
        token = self._primary.encrypt(text.encode("utf-8")).decode("ascii")
        return json.dumps({serialization.TAG: _SEALED_TAG, "v": token}, separators=(",", ":"))

    def open(self, token: str, where: str) -> str:
        """Decrypt a Fernet ``token`` with whichever configured key sealed it."""
        from cryptography.fernet import InvalidToken

        try:
            return self._all.decrypt(token.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError) as exc:
            raise EncryptionError(
                f"{where} are encrypted and none of the {self.size} key(s) in {SETTING} opens "
                "them: the key that sealed them was removed, or this process has other keys "
                "than the one that deferred"
            ) from exc

    def rotate(self, token: str) -> str | None:
        """The sealed form of ``token`` under the first key, or None if it already is.

        Raises :class:`~celery_defer.exceptions.EncryptionError` when no
        configured key opens it.
        """
        from cryptography.fernet import InvalidToken

        try:
            self._primary.decrypt(token.encode("ascii"))
            return None
        except InvalidToken:
            pass
        return self.seal(self.open(token, "the stored values"))


def keyring_from_setting(value: Any) -> Keyring | None:
    """Build the keyring ``defer_encryption_keys`` describes (None: values stay in clear).

    ``value`` is a list or tuple of keys, or one string of comma-separated
    keys. A key that is not a Fernet key is refused naming its position,
    never its text: a configuration error must not print a secret.
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes)):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        keys: list[Any] = [part.strip() for part in text.split(",")]
    elif isinstance(value, (list, tuple)):
        keys = list(value)
    else:
        raise ConfigurationError(
            f"{SETTING} must be a list of Fernet keys or a comma-separated string of them, "
            f"got {type(value).__name__}"
        )
    if not keys or keys == [""]:
        raise ConfigurationError(
            f"{SETTING} holds no key: set None to store values in clear, or at least one key"
        )
    try:
        from cryptography.fernet import Fernet
    except ImportError:
        raise ConfigurationError(
            f"{SETTING} is set but the cryptography package is not installed: {_INSTALL_HINT}"
        ) from None
    fernets = []
    for position, key in enumerate(keys, start=1):
        try:
            if not isinstance(key, (str, bytes)) or not key:
                raise TypeError
            fernets.append(Fernet(key))
        except (TypeError, ValueError):
            # Not chained: the cause's message could quote the key.
            raise ConfigurationError(
                f"{SETTING}: entry {position} of {len(keys)} is not a valid Fernet key "
                "(32 url-safe base64-encoded bytes; make one with "
                "`python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())'`)"
            ) from None
    return Keyring(fernets)


def _token(data: Any) -> str | None:
    """The Fernet token of a parsed sealed value, or None if ``data`` is not one."""
    if (
        isinstance(data, dict)
        and data.get(serialization.TAG) == _SEALED_TAG
        and set(data) == {serialization.TAG, "v"}
        and isinstance(data["v"], str)
    ):
        return data["v"]
    return None


def _sealed_token(text: str) -> str | None:
    if not isinstance(text, str) or not text.startswith(_PREFIX):
        return None  # clear typed JSON: the cheap common case when encryption is off
    try:
        return _token(json.loads(text))
    except ValueError:
        return None


def is_sealed(text: str) -> bool:
    """Whether stored ``text`` is a sealed value (rather than clear typed JSON)."""
    return _sealed_token(text) is not None


def seal(keyring: Keyring | None, text: str) -> str:
    """What to store for clear typed-JSON ``text``: sealed with a keyring, as is without."""
    return text if keyring is None else keyring.seal(text)


def unseal(keyring: Keyring | None, text: str, *, where: str = "values") -> str:
    """The clear typed-JSON text of stored ``text`` (clear text comes back unchanged).

    A sealed value with no keyring, or one no configured key opens, raises
    :class:`~celery_defer.exceptions.EncryptionError` naming ``where``.
    """
    token = _sealed_token(text)
    return text if token is None else _open(keyring, token, where)


def unseal_data(keyring: Keyring | None, data: Any, *, where: str = "values") -> Any:
    """Like :func:`unseal`, for a value already parsed from JSON (a resume message's kwargs)."""
    token = _token(data)
    return data if token is None else json.loads(_open(keyring, token, where))


def loads(keyring: Keyring | None, text: str, *, where: str = "value") -> Any:
    """Open stored ``text`` if sealed, then decode it (:func:`celery_defer.serialization.loads`)."""
    return serialization.loads(unseal(keyring, text, where=where), where=where)


def reseal(keyring: Keyring, text: str, *, seal_clear: bool = False) -> str | None:
    """Stored ``text`` sealed under the keyring's first key, or None if nothing is to change.

    Clear text is sealed only with ``seal_clear``. Raises
    :class:`~celery_defer.exceptions.EncryptionError` when no configured key
    opens a sealed value.
    """
    token = _sealed_token(text)
    if token is None:
        return keyring.seal(text) if seal_clear else None
    return keyring.rotate(token)


def _open(keyring: Keyring | None, token: str, where: str) -> str:
    if keyring is None:
        raise EncryptionError(
            f"{where} are encrypted at rest but {SETTING} is not set in this process: "
            "configure the keys they were sealed with"
        )
    return keyring.open(token, where)

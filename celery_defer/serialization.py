"""Typed JSON: how celery-defer stores task kwargs, trigger kwargs and event payloads.

A deferral outlives the process that made it, and its data is read back by
another process (a triggerer, a worker) possibly after an upgrade. Pickle would
let a database row run code and breaks across versions, so we use JSON plus a
small set of tagged types that tasks commonly pass (datetimes, UUIDs,
decimals...). A value we cannot store is refused *before* anything is written,
with a message naming where it sits (``kwargs['when'][2]``) and what it is.

Tagged values look like ``{"__cd__": "<type>", "v": <plain JSON>}``. A user's
dict that happens to have a ``"__cd__"`` key is stored as a ``"dict"`` tag
holding ``[key, value]`` pairs, so every supported value round-trips exactly.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from celery_defer.exceptions import SerializationError

__all__ = ["SUPPORTED", "TAG", "decode", "dumps", "encode", "loads"]

#: The key marking a tagged value.
TAG = "__cd__"

#: Human-readable list of what :func:`encode` accepts, quoted in its errors.
SUPPORTED = (
    "None, bool, int, float, str, list, tuple, dict with str keys, datetime, date, "
    "time, timedelta, UUID, Decimal, bytes"
)


def _tagged(tag: str, value: Any) -> dict[str, Any]:
    return {TAG: tag, "v": value}


def encode(value: Any, *, where: str = "value") -> Any:
    """Turn ``value`` into a plain JSON-compatible structure.

    ``where`` names the value in error messages (callers pass ``"kwargs"``,
    ``"trigger kwargs"``...), so a refusal says exactly which item is at
    fault. Subclasses of ``str``, ``int`` and ``float`` (``IntEnum``, a
    ``str`` enum) are stored as their base type; other enums, sets, objects,
    non-string dict keys and non-finite floats raise
    :class:`~celery_defer.exceptions.SerializationError`.
    """
    try:
        return _encode(value, where, set())
    except RecursionError:
        raise SerializationError(f"{where}: nested too deeply to store") from None


def _encode(value: Any, path: str, seen: set[int]) -> Any:
    # Order matters: bool is an int, datetime is a date.
    if value is None:
        return None
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        # int.__int__ gives an exact int even if a subclass overrides __int__.
        return int.__int__(value)
    if isinstance(value, float):
        number = float.__float__(value)
        if not math.isfinite(number):
            raise SerializationError(
                f"{path}: float {number!r} cannot be stored (JSON has no NaN or infinity)"
            )
        return number
    if isinstance(value, str):
        # Not str(value): a (str, Enum) member's __str__ returns "Cls.NAME".
        return str.__str__(value)
    if isinstance(value, datetime):
        return _tagged("datetime", value.isoformat())
    if isinstance(value, date):
        return _tagged("date", value.isoformat())
    if isinstance(value, time):
        return _tagged("time", value.isoformat())
    if isinstance(value, timedelta):
        return _tagged("timedelta", [value.days, value.seconds, value.microseconds])
    if isinstance(value, uuid.UUID):
        return _tagged("uuid", str(value))
    if isinstance(value, Decimal):
        return _tagged("decimal", str(value))
    if isinstance(value, bytes):
        return _tagged("bytes", base64.b64encode(value).decode("ascii"))
    if isinstance(value, (list, tuple, dict)):
        if id(value) in seen:
            raise SerializationError(f"{path}: {type(value).__qualname__} contains itself")
        seen.add(id(value))
        try:
            return _encode_container(value, path, seen)
        finally:
            seen.discard(id(value))
    raise SerializationError(
        f"{path}: object of type {type(value).__qualname__} is not JSON-serializable "
        f"(supported: {SUPPORTED})"
    )


def _encode_container(
    value: list[Any] | tuple[Any, ...] | dict[Any, Any], path: str, seen: set[int]
) -> Any:
    if isinstance(value, dict):
        items: list[tuple[str, Any]] = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise SerializationError(
                    f"{path}: dict key {key!r} of type {type(key).__qualname__} is not a str "
                    "(JSON object keys must be strings)"
                )
            items.append((str.__str__(key), _encode(item, f"{path}[{key!r}]", seen)))
        if any(key == TAG for key, _ in items):
            return _tagged("dict", [[key, item] for key, item in items])
        return dict(items)
    encoded = [_encode(item, f"{path}[{index}]", seen) for index, item in enumerate(value)]
    if isinstance(value, tuple):
        return _tagged("tuple", encoded)
    return encoded


def decode(data: Any, *, where: str = "value") -> Any:
    """Rebuild the value :func:`encode` turned into ``data``.

    Tuples come back as tuples, datetimes with their exact UTC offset, and so
    on. An unknown tag or a malformed tagged value raises
    :class:`~celery_defer.exceptions.SerializationError` naming its path.
    """
    try:
        return _decode(data, where)
    except RecursionError:
        raise SerializationError(f"{where}: nested too deeply to decode") from None


def _decode(data: Any, path: str) -> Any:
    if isinstance(data, list):
        return [_decode(item, f"{path}[{index}]") for index, item in enumerate(data)]
    if isinstance(data, dict):
        if TAG in data:
            return _decode_tagged(data, path)
        return {key: _decode(item, f"{path}[{key!r}]") for key, item in data.items()}
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    raise SerializationError(
        f"{path}: cannot decode object of type {type(data).__qualname__} (not plain JSON)"
    )


def _decode_tagged(data: dict[Any, Any], path: str) -> Any:
    tag = data[TAG]
    if set(data) != {TAG, "v"}:
        raise SerializationError(f"{path}: malformed tagged value {data!r}")
    raw = data["v"]
    if tag in ("tuple", "dict"):
        if not isinstance(raw, list):
            raise SerializationError(f"{path}: malformed {tag} value {raw!r}: expected a list")
        if tag == "dict":
            return _decode_pairs(raw, path)
        return tuple(_decode(item, f"{path}[{index}]") for index, item in enumerate(raw))
    parse = _PARSERS.get(tag) if isinstance(tag, str) else None
    if parse is None:
        raise SerializationError(f"{path}: unknown type tag {tag!r}")
    try:
        return parse(raw)
    except (TypeError, ValueError, OverflowError, InvalidOperation, binascii.Error) as exc:
        raise SerializationError(f"{path}: malformed {tag} value {raw!r}: {exc}") from exc


def _decode_pairs(raw: list[Any], path: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for pair in raw:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
            raise SerializationError(f"{path}: malformed dict entry {pair!r}")
        key, item = pair
        result[key] = _decode(item, f"{path}[{key!r}]")
    return result


def _str(raw: Any) -> str:
    if not isinstance(raw, str):
        raise TypeError(f"expected a string, got {type(raw).__name__}")
    return raw


def _timedelta(raw: Any) -> timedelta:
    if not (isinstance(raw, list) and len(raw) == 3):
        raise TypeError("expected [days, seconds, microseconds]")
    if not all(isinstance(part, int) and not isinstance(part, bool) for part in raw):
        raise TypeError("expected three integers")
    days, seconds, microseconds = raw
    return timedelta(days=days, seconds=seconds, microseconds=microseconds)


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "datetime": lambda raw: datetime.fromisoformat(_str(raw)),
    "date": lambda raw: date.fromisoformat(_str(raw)),
    "time": lambda raw: time.fromisoformat(_str(raw)),
    "timedelta": _timedelta,
    "uuid": lambda raw: uuid.UUID(_str(raw)),
    "decimal": lambda raw: Decimal(_str(raw)),
    "bytes": lambda raw: base64.b64decode(_str(raw).encode("ascii"), validate=True),
}


def dumps(value: Any, *, where: str = "value") -> str:
    """Encode ``value`` and return it as compact JSON text (see :func:`encode`).

    Non-ASCII characters are escaped, so the text is plain ASCII whatever the
    database's encoding, and lone surrogates in a string still round-trip.
    """
    return json.dumps(encode(value, where=where), separators=(",", ":"), allow_nan=False)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def loads(text: str, *, where: str = "value") -> Any:
    """Parse JSON text written by :func:`dumps` and decode it.

    Corrupt text raises :class:`~celery_defer.exceptions.SerializationError`
    naming ``where``, so a damaged row is reported, not a bare ``JSONDecodeError``.
    """
    if not isinstance(text, (str, bytes, bytearray)):
        raise SerializationError(f"{where}: expected JSON text, got {type(text).__qualname__}")
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SerializationError(f"{where}: corrupt JSON: {exc}") from exc
    except RecursionError:
        raise SerializationError(f"{where}: nested too deeply to decode") from None
    return decode(data, where=where)

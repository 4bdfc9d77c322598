"""Typed JSON: every supported type round-trips, every refusal names its path."""

from __future__ import annotations

import enum
import json
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, NamedTuple

import pytest

from celery_defer.exceptions import InvalidDeferral, SerializationError
from celery_defer.serialization import TAG, decode, dumps, encode, loads

pytestmark = pytest.mark.timeout(10)

IST = timezone(timedelta(hours=5, minutes=30))
ODD = timezone(timedelta(hours=-3, minutes=-7, seconds=-11, microseconds=-13))


class Colour(str, enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Plain(enum.Enum):
    A = 1


class Foo:
    pass


class Pair(NamedTuple):
    a: int
    b: str


SAMPLES: list[Any] = [
    None,
    True,
    False,
    0,
    -7,
    10**30,
    1.5,
    -0.0,
    "",
    "héllo \ud800 \x00",
    [],
    [1, "two", None],
    (),
    (1, (2, 3)),
    {},
    {"a": 1, "b": [1, 2]},
    datetime(2024, 5, 6, 7, 8, 9, 123456),
    datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc),
    datetime(2024, 5, 6, 7, 8, 9, tzinfo=IST),
    datetime(2024, 5, 6, 7, 8, 9, 1, tzinfo=ODD),
    date(1999, 12, 31),
    time(23, 59, 59, 999999),
    time(1, 2, tzinfo=IST),
    timedelta(days=-3, seconds=5, microseconds=7),
    timedelta(0),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    Decimal("3.14159265358979323846264338327950288"),
    Decimal("-0E-7"),
    b"",
    b"\x00\xffbytes",
    {TAG: "datetime", "v": "not a date"},
    {TAG: 1, "x": {TAG: "tuple"}},
]


@pytest.mark.parametrize("value", SAMPLES, ids=repr)
def test_roundtrip_every_type(value: Any) -> None:
    text = dumps(value)
    back = loads(text)
    assert back == value
    assert type(back) is type(value)
    json.loads(text)  # plain JSON on the wire


def test_roundtrip_nested_keeps_types_and_offsets() -> None:
    value = {
        "when": [datetime(2030, 1, 1, tzinfo=IST), (date(2030, 1, 2), timedelta(hours=1))],
        "ids": {"u": uuid.uuid4(), "raw": b"abc", "d": Decimal("1.10")},
        "escaped": {TAG: {"inner": (1, 2)}},
    }
    back = loads(dumps(value))
    assert back == value
    assert back["when"][0].utcoffset() == timedelta(hours=5, minutes=30)
    assert isinstance(back["when"][1], tuple)
    assert isinstance(back["escaped"][TAG]["inner"], tuple)
    assert str(back["ids"]["d"]) == "1.10"


def test_naive_datetime_stays_naive_and_aware_keeps_exact_offset() -> None:
    assert loads(dumps(datetime(2024, 1, 1))).tzinfo is None
    assert loads(dumps(datetime(2024, 1, 1, tzinfo=ODD))).utcoffset() == ODD.utcoffset(None)


def test_user_dict_with_tag_key_is_escaped() -> None:
    value = {TAG: "tuple", "v": [1]}
    encoded = encode(value)
    assert encoded == {TAG: "dict", "v": [[TAG, "tuple"], ["v", [1]]]}
    assert decode(encoded) == value


def test_encode_is_plain_json_with_tags() -> None:
    assert encode((1, b"\x01")) == {TAG: "tuple", "v": [1, {TAG: "bytes", "v": "AQ=="}]}
    assert dumps({"a": (1,)}) == '{"a":{"__cd__":"tuple","v":[1]}}'


def test_subclasses_stored_as_base_type() -> None:
    assert dumps(Colour.RED) == '"red"'
    assert type(loads(dumps(Colour.RED))) is str
    assert loads(dumps(Level.HIGH)) == 3
    assert type(loads(dumps(Level.HIGH))) is int
    assert loads(dumps(Pair(1, "x"))) == (1, "x")
    assert loads(dumps(True)) is True  # bool is not turned into int


@pytest.mark.parametrize(
    ("value", "where", "expected"),
    [
        ({"when": [1, 2, Foo()]}, "kwargs", "kwargs['when'][2]: object of type Foo "),
        ({1, 2}, "value", "value: object of type set "),
        (Plain.A, "trigger kwargs", "trigger kwargs: object of type Plain "),
        ([lambda: 1], "kwargs", "kwargs[0]: object of type function "),
        ((0, bytearray(b"x")), "v", "v[1]: object of type bytearray "),
        ({"a": {1: "x"}}, "kwargs", "kwargs['a']: dict key 1 of type int is not a str"),
        ({"x": float("nan")}, "kwargs", "kwargs['x']: float nan cannot be stored"),
        ([float("inf")], "kwargs", "kwargs[0]: float inf cannot be stored"),
        ((-float("inf"),), "kwargs", "kwargs[0]: float -inf cannot be stored"),
    ],
)
def test_refusals_name_path_and_type(value: Any, where: str, expected: str) -> None:
    with pytest.raises(SerializationError) as info:
        dumps(value, where=where)
    assert str(info.value).startswith(expected)
    assert isinstance(info.value, InvalidDeferral)


def test_refusal_lists_supported_types() -> None:
    with pytest.raises(SerializationError, match=r"\(supported: None, bool, .*bytes\)"):
        encode(object())


def test_self_containing_value_is_refused() -> None:
    loop: list[Any] = [1]
    loop.append({"again": loop})
    with pytest.raises(SerializationError, match=r"^kwargs\[1\]\['again'\]: list contains itself"):
        encode(loop, where="kwargs")


def test_shared_not_cyclic_value_is_accepted() -> None:
    shared = [1]
    assert loads(dumps([shared, shared])) == [[1], [1]]


@pytest.mark.parametrize("text", ["", "{", '{"a": 1', "not json", "NaN", "[Infinity]"])
def test_corrupt_json_names_where(text: str) -> None:
    with pytest.raises(SerializationError, match=r"^trigger kwargs: corrupt JSON"):
        loads(text, where="trigger kwargs")


def test_loads_refuses_non_text() -> None:
    with pytest.raises(SerializationError, match=r"^kwargs: expected JSON text, got NoneType"):
        loads(None, where="kwargs")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({TAG: "pickle", "v": "x"}, "value: unknown type tag 'pickle'"),
        ({TAG: "datetime", "v": "yesterday"}, "value: malformed datetime value"),
        ({TAG: "bytes", "v": "!!"}, "value: malformed bytes value"),
        ({TAG: "timedelta", "v": [1, 2]}, "value: malformed timedelta value"),
        ({TAG: "uuid", "v": 5}, "value: malformed uuid value"),
        ({TAG: "decimal", "v": "abc"}, "value: malformed decimal value"),
        ({TAG: "tuple", "v": "abc"}, "value: malformed tuple value"),
        ({TAG: "dict", "v": [[1, 2]]}, "value: malformed dict entry"),
        ({TAG: "tuple", "v": [], "extra": 1}, "value: malformed tagged value"),
        ([{"k": {TAG: "nope", "v": 1}}], "value[0]['k']: unknown type tag 'nope'"),
    ],
)
def test_decode_refuses_unknown_or_malformed_tags(data: Any, expected: str) -> None:
    with pytest.raises(SerializationError) as info:
        decode(data)
    assert str(info.value).startswith(expected)


def test_loads_reports_bad_tag_with_where() -> None:
    with pytest.raises(SerializationError, match=r"^kwargs\['a'\]: unknown type tag 'x'"):
        loads('{"a": {"__cd__": "x", "v": 1}}', where="kwargs")


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def test_a_value_nested_too_deeply_is_refused_with_a_clear_error() -> None:
    with pytest.raises(SerializationError, match=r"^kwargs: nested too deeply to store$"):
        dumps({"deep": _nested(5000)}, where="kwargs")


def test_stored_text_nested_too_deeply_is_a_clear_error_not_a_recursion_error() -> None:
    text = "[" * 100_000 + "]" * 100_000
    with pytest.raises(SerializationError, match=r"^kwargs: nested too deeply to decode$"):
        loads(text, where="kwargs")

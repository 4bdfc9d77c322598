"""Encryption primitives: the keyring setting, sealing and opening values, the app's codec.

The end-to-end cases (sealed rows, resumes, rotation) are in tests/inprocess/test_encryption.py.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from celery import Celery

from celery_defer.codec import Codec, codec_for
from celery_defer.encryption import (
    is_sealed,
    reseal,
    seal,
    unseal,
    unseal_data,
)
from celery_defer.exceptions import ConfigurationError, EncryptionError
from celery_defer.serialization import dumps, loads
from celery_defer.settings import Settings
from tests.support.keys import KEY_A, KEY_B, KEY_C, SECRET, ring

pytestmark = pytest.mark.timeout(90)


# -- the setting ----------------------------------------------------------------------------


def app_with(value: Any) -> Celery:
    app = Celery("enc", set_as_current=False)
    app.conf.defer_encryption_keys = value
    return app


def codec_of(value: Any) -> Codec:
    """The codec of an app with ``defer_encryption_keys = value`` (where keys are checked)."""
    return codec_for(app_with(value))


def test_no_keys_means_values_stay_in_clear() -> None:
    assert codec_of(None).keyring is None
    assert seal(None, '{"a":1}') == '{"a":1}'


@pytest.mark.parametrize(
    "value",
    [[KEY_A, KEY_B], (KEY_A, KEY_B), f"{KEY_A}, {KEY_B}", [KEY_A.encode(), KEY_B]],
    ids=["list", "tuple", "comma-string", "bytes-entry"],
)
def test_the_first_key_seals_and_every_key_opens(value: Any) -> None:
    keyring = codec_of(value).keyring
    assert keyring is not None and keyring.size == 2
    sealed = keyring.seal('{"password":"x"}')
    assert unseal(ring(KEY_A), sealed) == '{"password":"x"}'  # sealed with the first
    with pytest.raises(EncryptionError):
        unseal(ring(KEY_B), sealed)
    assert unseal(keyring, ring(KEY_B).seal("{}")) == "{}"  # the second opens too


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([KEY_A, "not-a-fernet-key"], "entry 2 of 2 is not a valid Fernet key"),
        (f"{KEY_A},,{KEY_B}", "entry 2 of 3 is not a valid Fernet key"),
        (["short"], "entry 1 of 1 is not a valid Fernet key"),
        ([KEY_A, 42], "entry 2 of 2 is not a valid Fernet key"),
        ("", "holds no key"),
        ([], "holds no key"),
        (42, "must be a list of Fernet keys"),
    ],
)
def test_a_bad_key_is_refused_when_the_codec_is_built_naming_the_entry(
    value: Any, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as raised:
        codec_of(value)
    assert "defer_encryption_keys" in str(raised.value)
    assert "not-a-fernet-key" not in str(raised.value)  # never the key itself
    assert raised.value.__cause__ is None


def test_keys_without_cryptography_say_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.fernet", None)  # import fails
    with pytest.raises(ConfigurationError, match=r"pip install 'celery-defer\[encryption\]'"):
        codec_of([KEY_A])


def test_settings_never_show_a_key() -> None:
    app = app_with([KEY_A, KEY_B])
    settings, keyring = Settings.from_app(app), codec_for(app).keyring
    assert KEY_A not in repr(settings) and KEY_A not in repr(keyring)
    assert repr(keyring) == "<Keyring of 2 keys>"


# -- sealed values --------------------------------------------------------------------------


def test_a_sealed_value_hides_the_secret_and_round_trips() -> None:
    clear = dumps({"password": SECRET}, where="kwargs")
    sealed = seal(ring(KEY_A), clear)
    assert SECRET not in sealed and is_sealed(sealed) and not is_sealed(clear)
    assert unseal(ring(KEY_A), sealed) == clear
    assert unseal(ring(KEY_A), clear) == clear  # rows written in clear keep working


def test_a_user_dict_that_looks_like_the_marker_is_never_taken_for_sealed() -> None:
    lookalike = {"__cd__": "sealed", "v": ring(KEY_A).seal("{}").split('"v":"')[1][:-2]}
    clear = dumps(lookalike, where="kwargs")
    assert not is_sealed(clear)
    assert loads(unseal(None, clear)) == lookalike


def test_opening_without_keys_or_with_other_keys_names_the_problem() -> None:
    sealed = ring(KEY_A).seal("{}")
    with pytest.raises(EncryptionError, match="defer_encryption_keys is not set"):
        unseal(None, sealed, where="trigger kwargs")
    with pytest.raises(EncryptionError, match="trigger kwargs are encrypted and none of the 2"):
        unseal(ring(KEY_B, KEY_C), sealed, where="trigger kwargs")
    with pytest.raises(EncryptionError):
        unseal_data(None, {"__cd__": "sealed", "v": sealed.split('"v":"')[1][:-2]})


def test_reseal_moves_values_to_the_first_key_once() -> None:
    old = ring(KEY_A).seal('{"n":1}')
    both = ring(KEY_B, KEY_A)
    moved = reseal(both, old)
    assert moved is not None and unseal(ring(KEY_B), moved) == '{"n":1}'
    assert reseal(both, moved) is None  # already under the first key
    assert reseal(both, '{"n":1}') is None  # clear stays clear unless asked
    sealed_clear = reseal(both, '{"n":1}', seal_clear=True)
    assert sealed_clear is not None and unseal(ring(KEY_B), sealed_clear) == '{"n":1}'
    with pytest.raises(EncryptionError):
        reseal(ring(KEY_B), ring(KEY_C).seal("{}"))

"""Fernet keys and secrets shared by the encryption tests (unit and in-process)."""

from __future__ import annotations

from cryptography.fernet import Fernet

from celery_defer.encryption import Keyring, keyring_from_setting

SECRET = "s3cret-password-of-the-task"
TRIGGER_SECRET = "s3cret-api-token-of-the-trigger"
KEY_A = Fernet.generate_key().decode()
KEY_B = Fernet.generate_key().decode()
KEY_C = Fernet.generate_key().decode()


def ring(*keys: str) -> Keyring:
    """The keyring of ``keys`` (the first seals, every one opens)."""
    keyring = keyring_from_setting(list(keys))
    assert keyring is not None
    return keyring

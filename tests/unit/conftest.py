"""The unit layer: no worker thread, no subprocess, no store but the in-memory one.

A unit test that needs an app with a store gets ``memory://`` from the root conftest's ``app``
fixture, through this ``store_url``; the whole layer runs in seconds.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def store_url() -> str:
    """The in-memory store (``memory://``): one per app, gone with it."""
    return "memory://"

"""Shared fixtures: fake UNIX users for every test that runs a real sipd."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .unixusers import FakeUnix, fake_unix


@pytest.fixture(scope="session")
def unix() -> Iterator[FakeUnix]:
    """alice (sip, supplementary), bob (sip, primary), carol (not in sip)."""
    with fake_unix() as u:
        yield u

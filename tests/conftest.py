"""Shared fixtures: fake UNIX users for every test that runs a real sipd, and an installed sipd."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.installed import Installed, installed_prefix
from tests.sipclient import Daemon, mount_point
from tests.unixusers import FakeUnix, fake_unix


@pytest.fixture(scope="session")
def unix() -> Iterator[FakeUnix]:
    """alice (sip, supplementary), bob (sip, primary), carol (not in sip)."""
    with fake_unix() as u:
        yield u


@pytest.fixture
def mnt() -> Iterator[Path]:
    """A mount point for the state filesystem, removed (and unmounted) after."""
    with mount_point() as path:
        yield path


@pytest.fixture(scope="session")
def installed() -> Iterator[Installed]:
    """sipd as ``make install`` puts it in a prefix of its own, once per session."""
    with installed_prefix() as where:
        yield where


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that ran a sipd shows the end of its log beside the failure."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        if isinstance(value, Daemon):
            try:
                tail = value.log.splitlines()[-60:]
            except OSError:
                continue
            report.sections.append((f"sipd log ({name}), last lines", "\n".join(tail)))

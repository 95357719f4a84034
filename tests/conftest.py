"""Shared fixtures: fake UNIX users for every test that runs a real sipd."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .unixusers import FakeUnix, fake_unix


@pytest.fixture(scope="session")
def unix() -> Iterator[FakeUnix]:
    """alice (sip, supplementary), bob (sip, primary), carol (not in sip)."""
    with fake_unix() as u:
        yield u


@pytest.fixture
def mnt() -> Iterator[Path]:
    """A mount point for the state filesystem, removed (and unmounted) after."""
    # Not under pytest's 0700 tmp_path: other uids must reach the mount.
    base = Path(tempfile.mkdtemp(prefix="srfs-mnt-"))
    base.chmod(0o755)
    try:
        yield base / "sr"
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(base / "sr")], capture_output=True)
        subprocess.run(["rm", "-rf", str(base)])

"""sipp, a real SIP peer, sending OPTIONS to a running sipd over UDP and TCP."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import TESTS
from tests.sipclient import Daemon, free_port, running_sipd
from tests.unixusers import FakeUnix

SCENARIO = TESTS / "sipp" / "options.xml"

pytestmark = pytest.mark.sipp


@pytest.fixture(scope="module")
def sipd(tmp_path_factory: pytest.TempPathFactory, unix: FakeUnix) -> Iterator[Daemon]:
    if shutil.which("sipp") is None:
        pytest.fail("sipp is not installed: run 'make setup' (Debian package sip-tester)")
    with running_sipd(tmp_path_factory.mktemp("sipp"), unix=unix) as daemon:
        yield daemon


@pytest.mark.parametrize(
    ("transport", "host"),
    [("u1", "127.0.0.1"), ("t1", "127.0.0.1"), ("u1", "::1"), ("t1", "::1")],
)
def test_sipp_options(sipd: Daemon, tmp_path: Path, transport: str, host: str) -> None:
    target = f"[{host}]:{sipd.port}" if ":" in host else f"{host}:{sipd.port}"
    cmd = [
        "sipp", target, "-sf", str(SCENARIO), "-t", transport,
        "-i", host, "-p", str(free_port()),
        "-m", "50", "-r", "100", "-l", "20",
        "-timeout", "20s", "-timeout_error", "-recv_timeout", "3000",
        "-trace_err", "-error_file", str(tmp_path / "err.log"),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       stdin=subprocess.DEVNULL)
    errors = (tmp_path / "err.log").read_text() if (tmp_path / "err.log").exists() else ""
    assert p.returncode == 0, f"sipp exit {p.returncode}\n{p.stdout[-2000:]}\n{errors[-2000:]}"
    assert sipd.alive()

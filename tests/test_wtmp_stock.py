"""utmp/wtmp on the stock paths, as a Debian host has them, read by the real who and last.

Everything else tests other files (SIPD_UTMP/SIPD_WTMP), which glibc opens
differently: for exactly ``/var/run/utmp`` and ``/var/log/wtmp`` it probes
for ``utmpx``/``wtmpx`` first and leaves that probe's ENOENT in errno even
when the file then opens. Here those paths are bind mounts of test files
in a private mount namespace (see :mod:`tests.stockhost`).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from srfs import wtmp
from srfs.wtmp import DEAD_PROCESS, USER_PROCESS, iter_records

from .sipclient import ROOT
from .stockhost import StockHost, stock_host

pytestmark = pytest.mark.skipif(
    wtmp.UNAVAILABLE_REASON is not None, reason=f"wtmp unavailable: {wtmp.UNAVAILABLE_REASON}"
)

T0 = 1_700_000_000.0


@pytest.fixture
def host(tmp_path: Path) -> Iterator[StockHost]:
    with stock_host(tmp_path) as h:
        yield h


def _recorder(host: StockHost, script: str) -> str:
    """Run ``script`` with a default LoginRecorder ``rec`` in the namespace; its output."""
    code = (
        "from srfs.wtmp import LoginRecorder\n"
        "rec = LoginRecorder()\n"
        "assert (rec.utmp_path, rec.wtmp_path) == ('/var/run/utmp', '/var/log/wtmp')\n"
        + script
    )
    r = subprocess.run(
        [*host.command(), sys.executable, "-c", code],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"},
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_recorder_on_the_stock_paths(host: StockHost) -> None:
    # A login the process never logs out: for the next one, a crash.
    assert _recorder(host, f"print(rec.login('jan', '192.0.2.10', {T0}))") == "sip/1\n"
    assert [(r.ut_type, r.line, r.user) for r in iter_records(host.utmp)] == [
        (USER_PROCESS, "sip/1", "jan")
    ]
    # Reading utmp to its end, rewriting a slot, appending to wtmp.
    out = _recorder(host, f"""
print(rec.close_stale({T0 + 3600}))
line = rec.login('jan', '192.0.2.10', {T0 + 3601})
rec.logout(line, {T0 + 3660})
print(line)
""")
    assert out.split() == ["1", "sip/1"]
    assert [(r.ut_type, r.line) for r in iter_records(host.utmp)] == [(DEAD_PROCESS, "sip/1")]
    assert [(r.ut_type, r.line, r.user, int(r.time)) for r in iter_records(host.wtmp)] == [
        (USER_PROCESS, "sip/1", "jan", int(T0)),
        (DEAD_PROCESS, "sip/1", "", int(T0) + 3600),
        (USER_PROCESS, "sip/1", "jan", int(T0) + 3601),
        (DEAD_PROCESS, "sip/1", "", int(T0) + 3660),
    ]

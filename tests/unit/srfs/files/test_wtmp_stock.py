"""utmp/wtmp on the stock paths, as a Debian host has them, read by the real who and last.

Everything else tests other files (SIPD_UTMP/SIPD_WTMP), which glibc opens
differently: for exactly ``/var/run/utmp`` and ``/var/log/wtmp`` it probes
for ``utmpx``/``wtmpx`` first and leaves that probe's ENOENT in errno even
when the file then opens. Here those paths are bind mounts of test files
in a private mount namespace (see :mod:`tests.stockhost`).
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from srfs.files import wtmp
from srfs.files.wtmp import DEAD_PROCESS, USER_PROCESS, iter_records
from tests.e2e.test_register_e2e import REALM, Phone
from tests.sipclient import ROOT, Daemon, running_sipd, status_of, wait_for
from tests.stockhost import StockHost, stock_host
from tests.unixusers import FakeUnix, give_passwords

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
        "from srfs.files.wtmp import LoginRecorder\n"
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


# A /var/log of the script's own (a tmpfs in the namespace), so that wtmp
# can be renamed or fill its file system, which the bind mount cannot.
_OWN_LOG = """
import ctypes, os, subprocess
from srfs.files import wtmp
subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size={size}', 'own-log', '/var/log'], check=True)
open('/var/log/wtmp', 'wb').close()
"""

# A logrotate ("create" mode) at the worst moments: between the recorder's
# look at wtmp and updwtmp, and right after updwtmp.
_ROTATING = """
def rotate(create=True):
    os.rename('/var/log/wtmp', '/var/log/wtmp.1')
    if create:
        open('/var/log/wtmp', 'wb').close()

class Rotating(wtmp._Libc):
    when = 'before'
    def append_wtmp(self, path, rec):
        if self.when == 'before':
            rotate()
        elif self.when == 'instead':
            rotate(create=False)
        err = super().append_wtmp(path, rec)
        if self.when == 'after':
            rotate()
        return err

rec._libc = libc = Rotating(ctypes.CDLL('libc.so.6', use_errno=True))
def users(path):
    return [(r.ut_type, r.user) for r in wtmp.iter_records(path)]
"""


def test_wtmp_rotated_during_the_append(host: StockHost) -> None:
    out = _recorder(host, _OWN_LOG.format(size="1m") + _ROTATING + f"""
libc.when = 'before'
line = rec.login('jan', '192.0.2.10', {T0})
print(users('/var/log/wtmp'), users('/var/log/wtmp.1'))
libc.when = 'after'
rec.logout(line, {T0 + 60})
print(users('/var/log/wtmp'), users('/var/log/wtmp.1'))
libc.when = 'instead'
try:
    rec.login('jan', '192.0.2.10', {T0 + 120})
except wtmp.WtmpError as e:
    print(e)
""")
    # The record is found wherever glibc put it; only a missing file fails.
    assert out.splitlines() == [
        "[(7, 'jan')] []",
        "[] [(7, 'jan'), (8, '')]",
        "cannot append to /var/log/wtmp: No such file or directory",
    ]


def test_full_wtmp_file_system(host: StockHost) -> None:
    # One page: ten records fit, the eleventh is written short and glibc
    # takes it back, setting no errno of its own.
    out = _recorder(host, _OWN_LOG.format(size="4k") + f"""
with open('/var/log/wtmp', 'wb') as f:
    f.write(bytes(wtmp.make_record(wtmp.DEAD_PROCESS, 'pts/0', '', '', 1, {T0})) * 10)
try:
    rec.login('jan', '192.0.2.10', {T0})
except wtmp.WtmpError as e:
    print(e)
print(os.stat('/var/log/wtmp').st_size, rec.lines_in_use())
""")
    assert out.splitlines() == [
        "cannot append to /var/log/wtmp: No space left on device",
        f"{10 * wtmp.UTMP_SIZE} []",
    ]
    assert [r.ut_type for r in iter_records(host.utmp)] == [DEAD_PROCESS]


# -- the daemon -------------------------------------------------------------


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("alice",))


def _who(unix: FakeUnix, daemon: Daemon) -> str:
    return _inside(unix, daemon, "who")


def _last(unix: FakeUnix, daemon: Daemon) -> str:
    return _inside(unix, daemon, "last", "-w")


def _inside(unix: FakeUnix, daemon: Daemon, *argv: str) -> str:
    # Under the fake users' NSS, as on a host where alice is a real user:
    # last's "gone - no logout" depends on finding her.
    assert daemon.alive(), daemon.log
    cmd, env = unix.command(argv, StockHost.inside(daemon.proc.pid))
    env = {k: v for k, v in env.items() if k != "PAM_WRAPPER"}  # see running_sipd
    r = subprocess.run(cmd, env={**env, "TZ": "UTC", "LC_ALL": "C"}, capture_output=True,
                       text=True, timeout=30, check=False)
    assert r.returncode == 0, f"{argv[0]} failed ({r.returncode}): {r.stderr}"
    return r.stdout


def test_who_and_last_list_registrations(
    host: StockHost, tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]
) -> None:
    session = r"^alice\s+sip/1\s+127\.0\.0\.1\s"
    # A session with its logout. Within the second of the logout, last
    # says "still running" instead; waiting for this form waits that out.
    ended = r".* - \d\d:\d\d\s+\(00:0\d\)$"
    try:
        with running_sipd(tmp_path, unix=unix, stock=host) as daemon:
            assert "wtmp disabled" not in daemon.log
            phone = Phone(daemon, "alice", passwords["alice"])
            try:
                assert status_of(phone.register(expires=600)) == 200
                wait_for(lambda: "alice" in _who(unix, daemon), "alice in who")
                assert re.search(r"^alice\s+sip/1\s.*\(127\.0\.0\.1\)$", _who(unix, daemon), re.M)
                last = _last(unix, daemon)
                assert re.search(session + r".*gone - no logout$", last, re.M), last

                assert status_of(phone.register(expires=0)) == 200
                wait_for(lambda: "alice" not in _who(unix, daemon), "alice gone from who")
                wait_for(lambda: re.search(session + ended, _last(unix, daemon), re.M),
                         "alice's logout in last")

                assert status_of(phone.register(expires=600)) == 200
                wait_for(lambda: "alice" in _who(unix, daemon), "alice back in who")
            finally:
                phone.close()
            assert "wtmp disabled" not in daemon.log
            daemon.proc.kill()  # a crash: nothing logs alice out
            daemon.proc.wait()

        # The next start closes the line the crash left open, then logs the
        # reloaded registration in again.
        with running_sipd(tmp_path, unix=unix, stock=host) as daemon:
            assert "closed 1 utmp line(s) left open by an earlier run" in daemon.log
            wait_for(lambda: "alice" in _who(unix, daemon), "the reloaded alice in who")
            wait_for(lambda: len(re.findall(session + ended, _last(unix, daemon), re.M)) == 2,
                     "the crashed session closed in last")
            last = _last(unix, daemon)
            sessions = re.findall(session + r".*$", last, re.M)
            assert len(sessions) == 3, last
            assert sessions[0].endswith("gone - no logout"), last
            assert "wtmp disabled" not in daemon.log
        # A clean stop logs the reloaded registration out again.
        assert [(r.ut_type, r.line, r.user) for r in iter_records(host.wtmp)] == [
            (USER_PROCESS, "sip/1", "alice"),
            (DEAD_PROCESS, "sip/1", ""),  # REGISTER with expires 0
            (USER_PROCESS, "sip/1", "alice"),
            (DEAD_PROCESS, "sip/1", ""),  # closed at the start after the crash
            (USER_PROCESS, "sip/1", "alice"),  # reloaded from usrloc
            (DEAD_PROCESS, "sip/1", ""),  # SIGTERM
        ]
        assert [r.ut_type for r in iter_records(host.utmp)] == [DEAD_PROCESS]
    finally:
        (unix["alice"].home / ".sr" / "usrloc").unlink(missing_ok=True)

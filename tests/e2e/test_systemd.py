"""sipd under systemd: the unit as systemd-analyze reads it, and sd_notify from a real daemon.

``systemd-analyze verify`` loads the unit offline, as systemd would, and
checks it: directives, the ExecStart= command (the installed sipd), the
man page of Documentation=. It needs no running systemd. The notify
protocol is tested against a datagram socket of the test's own, as
``Type=notify`` would see it.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from sipd.io.capabilities import NAMES, STARTUP
from tests import REPO
from tests.installed import Installed, run
from tests.sipclient import running_sipd
from tests.unixusers import FakeUnix

UNIT = REPO / "contrib" / "systemd" / "sipd.service"


def directive(unit: str, name: str) -> str:
    found = re.findall(rf"^{name}=(.*)$", unit, re.M)
    assert len(found) == 1, f"{name}= given {len(found)} times"
    return found[0]


def test_the_installed_unit_passes_systemd_analyze_verify(installed: Installed) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze is missing (Debian package systemd; "
                    "tools/system-setup.sh installs it)")
    # MANPATH: Documentation=man:sipd(8) is checked with man(1).
    done = run([tool, "verify", str(installed.unit)],
               env={**os.environ, "MANPATH": str(installed.man)})
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
    assert directive(installed.unit.read_text(), "ExecStart") == f"{installed.prefix}/sbin/sipd"


def test_the_bounding_set_is_what_start_up_needs() -> None:
    unit = UNIT.read_text()
    assert set(directive(unit, "CapabilityBoundingSet").split()) == {NAMES[c] for c in STARTUP}
    assert directive(unit, "Type") == "notify"
    assert directive(unit, "NoNewPrivileges") == "yes"
    # A mount namespace of the unit's own would hide /run/sr from the host.
    for hiding in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateMounts",
                   "PrivateDevices", "ReadOnlyPaths"):
        assert not re.search(rf"^{hiding}=", unit, re.M), hiding


def test_the_journal_takes_the_lines_of_a_busy_site() -> None:
    # Three lines a call at the default log level: journald's own limit
    # (10,000 in 30 s) would drop lines from about 110 calls a second,
    # among them the auth failures fail2ban bans on.
    unit = UNIT.read_text()
    interval = directive(unit, "LogRateLimitIntervalSec")
    assert interval.endswith("s")
    lines_a_second = int(directive(unit, "LogRateLimitBurst")) / float(interval[:-1])
    assert lines_a_second >= 3 * 1000


class Notifications:
    """The datagrams sipd sends to $NOTIFY_SOCKET, with what held when each came."""

    def __init__(self, path: Path, mnt: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.mnt = mnt
        self.seen: list[tuple[str, float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            mounted = f" {self.mnt} " in Path("/proc/self/mountinfo").read_text()
            self.seen.append((data.decode(), time.monotonic(), mounted))

    def states(self) -> list[str]:
        return [s for s, _, _ in self.seen]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                    reason="needs /dev/fuse and root to mount the state filesystem")
def test_ready_after_mount_then_watchdog_then_stopping(tmp_path: Path, unix: FakeUnix,
                                                      mnt: Path) -> None:
    listener = Notifications(tmp_path / "notify", mnt)
    conf = tmp_path / "sipd.toml"
    conf.write_text(f'mount = "{mnt}"\n')
    try:
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"}
        with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True,
                          extra_env=env) as daemon:
            deadline = time.monotonic() + 5
            while listener.states().count("WATCHDOG=1") < 3:
                assert time.monotonic() < deadline, listener.seen
                time.sleep(0.05)
            daemon.proc.send_signal(signal.SIGTERM)
            assert daemon.proc.wait(10) == 0
        time.sleep(0.3)
    finally:
        listener.close()
    states = listener.states()
    assert states[0] == "READY=1", states
    # READY=1 came once the tree was mounted (and the sockets, bound before it, answered).
    assert listener.seen[0][2]
    assert "STOPPING=1" in states
    pings = [t for s, t, _ in listener.seen if s == "WATCHDOG=1"]
    # Every half of WatchdogSec (0.2 s): 0.1 s apart, give or take a loaded machine.
    assert all(0.05 < b - a < 0.5 for a, b in zip(pings, pings[1:], strict=False)), pings
    assert set(states) == {"READY=1", "WATCHDOG=1", "STOPPING=1"}


def test_no_watchdog_when_it_is_meant_for_another_process(tmp_path: Path, unix: FakeUnix) -> None:
    listener = Notifications(tmp_path / "notify", tmp_path / "none")
    try:
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "100000",
               "WATCHDOG_PID": "1"}
        with running_sipd(tmp_path, unix=unix, extra_env=env):
            time.sleep(0.5)
    finally:
        listener.close()
    assert "WATCHDOG=1" not in listener.states()
    assert listener.states()[0] == "READY=1"

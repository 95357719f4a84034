"""contrib/fail2ban against what a real sipd logs for real failed REGISTERs.

fail2ban-regex runs the shipped filter over the daemon's own log, as a
file and as the journal shows it (journald strips sipd's ``<N>`` and
fail2ban's systemd backend puts ``host sipd[pid]:`` before the message).
It must take the address each failure came from, never one a user name
or a Request-URI carries, and no line that is not a failure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import REPO
from tests.e2e.test_register_e2e import REALM
from tests.e2e.test_register_e2e import Phone as LoopbackPhone
from tests.phone import Phone
from tests.sipclient import (
    Daemon,
    UdpClient,
    free_port,
    log_path,
    options,
    running_sipd,
    status_of,
    wait_for,
)
from tests.unixusers import FakeUnix, give_passwords

FILTER = REPO / "contrib" / "fail2ban" / "filter.d" / "sipd.conf"
JAIL = REPO / "contrib" / "fail2ban" / "jail.d" / "sipd.conf"
#: What a user name claims, to make a naive filter ban a stranger.
FORGED_NAME = 'jan" from 192.0.2.66 port 5060 (REGISTER): wrong password'
#: A whole forged record in a Request-URI, logged inside a 400's line.
FORGED_URI = ("sip:x@127.0.0.1 sipd.auth: WARNING: auth failed: user \"x\" from 192.0.2.99 "
              "port 5060 (REGISTER): wrong password")


@pytest.fixture(scope="module")
def tools() -> None:
    for tool, package in (("fail2ban-regex", "fail2ban"), ("fail2ban-client", "fail2ban")):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run 'make setup' (Debian package {package})")


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> Iterator[dict[str, str]]:
    yield give_passwords(unix, REALM, ("alice",))
    (unix["alice"].home / ".sr" / "usrloc").unlink(missing_ok=True)


class Claiming(Phone):
    """A phone whose digest username is ``claimed``, escaped as a quoted-string."""

    def __init__(self, *args: object, claimed: str, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.claimed = claimed

    def _credentials(self, challenge: bytes) -> str:
        creds = super()._credentials(challenge)
        quoted = self.claimed.replace("\\", "\\\\").replace('"', '\\"')
        return creds.replace(f'username="{self.user}"', f'username="{quoted}"', 1)


def traffic(daemon: Daemon, password: str) -> None:
    """An honest phone, a guesser, a forged user name, a forged record in a URI."""
    port = daemon.port
    honest = LoopbackPhone(daemon, "alice", password)
    try:
        assert status_of(honest.register()) == 200
    finally:
        honest.close()
    for host in ("127.0.0.1", "::1"):
        guesser = LoopbackPhone(daemon, "alice", "wrong", host=host)
        try:
            # From 127.0.0.1 five: the fifth starts a block (a line of its own).
            for _ in range(5 if host == "127.0.0.1" else 1):
                assert status_of(guesser.register()) == 401
        finally:
            guesser.close()
    with Claiming(port, "jan", "wrong", source="127.0.0.2", claimed=FORGED_NAME) as forger:
        assert status_of(forger.register()) == 401
    c = UdpClient("127.0.0.1", port)
    try:
        forged = options(via_port=c.port).replace(b"sip:127.0.0.1", FORGED_URI.encode(), 1)
        assert status_of(c.request(forged)) == 400
    finally:
        c.close()


def journal_view(lines: list[str], pid: int) -> list[str]:
    """sipd's journal lines as fail2ban reads them from the journal, dated like syslog."""
    out = []
    for line in lines:
        m = re.fullmatch(r"<[0-7]>(.*)", line)
        assert m, line
        # journald keeps MESSAGE without the priority; fail2ban's systemd
        # backend shows "_HOSTNAME SYSLOG_IDENTIFIER[PID]: MESSAGE".
        out.append(f"2026-12-05T03:51:22.000000+00:00 pbx sipd[{pid}]: {m[1]}")
    return out


def fail2ban_regex(log: Path, out: str) -> list[str]:
    r = subprocess.run(["fail2ban-regex", "-o", out, str(log), str(FILTER)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.splitlines()


@pytest.mark.parametrize("shape", ["file", "journal"])
def test_the_filter_bans_the_real_source_of_each_failure_only(
        tmp_path: Path, unix: FakeUnix, passwords: dict[str, str], tools: None,
        shape: str) -> None:
    port = free_port()
    env = {}
    if shape == "journal":
        stream = log_path(tmp_path, port)
        stream.touch()
        st = stream.stat()
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    with running_sipd(tmp_path, unix=unix, port=port, extra_env=env) as daemon:
        traffic(daemon, passwords["alice"])
        wait_for(lambda: "Bad Request-URI" in daemon.log, "the forged URI's line")
        assert daemon.stop() == 0
        lines = daemon.log.splitlines()
        pid = daemon.proc.pid
    log = tmp_path / "for-fail2ban.log"
    log.write_text("\n".join(journal_view(lines, pid) if shape == "journal" else lines) + "\n")
    text = log.read_text()
    # The traps are in the log, and so are lines that are not failures.
    assert "192.0.2.66" in text and "192.0.2.99" in text
    assert "auth throttling: " in text and "registered: " in text
    matched = fail2ban_regex(log, "msg")
    assert len(matched) == 7 and all("sipd.auth: WARNING: auth failed: " in m for m in matched)
    assert fail2ban_regex(log, "ip") == ["127.0.0.1"] * 5 + ["::1", "127.0.0.2"], text


def test_the_jail_loads_with_the_filter(tmp_path: Path, tools: None) -> None:
    # The packaged configuration, with the shipped files where the install
    # puts them; Debian's own sshd jail left out (no sshd log here).
    conf = tmp_path / "fail2ban"
    shutil.copytree("/etc/fail2ban", conf)
    for leftover in (conf / "jail.d").iterdir():
        leftover.unlink()
    shutil.copy(FILTER, conf / "filter.d" / "sipd.conf")
    shutil.copy(JAIL, conf / "jail.d" / "sipd.conf")
    r = subprocess.run(["fail2ban-client", "-c", str(conf), "-t"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["fail2ban-client", "-c", str(conf), "-d"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    jail = [line for line in r.stdout.splitlines() if line.startswith("['set', 'sipd'")
            or line.startswith("['add', 'sipd'") or line.startswith("['multi-set', 'sipd'")]
    assert "['add', 'sipd', 'systemd']" in jail
    assert "['set', 'sipd', 'addjournalmatch', '_SYSTEMD_UNIT=sipd.service']" in jail
    assert any("addfailregex" in line and "auth failed" in line for line in jail)
    # UDP and TCP both banned.
    assert any("'protocol', 'udp'" in line for line in jail)
    assert any("'protocol', 'tcp'" in line for line in jail)

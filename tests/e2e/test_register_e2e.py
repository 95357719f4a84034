"""Registration against a real sipd on the fake UNIX users: sipp, restarts, homes, wtmp."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipd.sip.digest import ha1, response
from tests import TESTS
from tests.sipclient import (
    Daemon,
    TcpClient,
    UdpClient,
    free_port,
    running_sipd,
    status_of,
    wait_for,
)
from tests.unixusers import FakeUnix, give_passwords

REALM = "test.invalid"
SCENARIO = TESTS / "sipp" / "register.xml"


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("alice", "bob", "carol"))


@pytest.fixture
def sipd(tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]) -> Iterator[Daemon]:
    with running_sipd(tmp_path, unix=unix) as daemon:
        yield daemon
    for name in ("alice", "bob"):
        usrloc = unix[name].home / ".sr" / "usrloc"
        usrloc.unlink(missing_ok=True)


def usrloc(unix: FakeUnix, name: str) -> str:
    path = unix[name].home / ".sr" / "usrloc"
    return path.read_text() if path.exists() else ""


class Phone:
    """A minimal UA speaking REGISTER over UDP or TCP with digest auth."""

    def __init__(self, daemon: Daemon, user: str, password: str, transport: str = "udp",
                 host: str = "127.0.0.1") -> None:
        self.user, self.password, self.transport = user, password, transport
        self.conn: UdpClient | TcpClient = (
            UdpClient(host, daemon.port) if transport == "udp" else TcpClient(host, daemon.port)
        )
        self.call_id = secrets.token_hex(8)
        self.cseq = 0

    def request(self, expires: int | None = 600, auth_from: bytes | None = None,
                aor: str | None = None, contact: str | None = None,
                password: str | None = None) -> bytes:
        self.cseq += 1
        aor = aor or self.user
        port = self.conn.port
        contact = contact if contact is not None else f"<sip:{self.user}@127.0.0.1:{port};transport={self.transport}>"
        lines = [
            f"REGISTER sip:{REALM} SIP/2.0",
            f"Via: SIP/2.0/{self.transport.upper()} 127.0.0.1:{port};branch=z9hG4bK{secrets.token_hex(6)};rport",
            "Max-Forwards: 70",
            f"From: <sip:{aor}@{REALM}>;tag={secrets.token_hex(4)}",
            f"To: <sip:{aor}@{REALM}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
        ]
        if contact:
            lines.append(f"Contact: {contact}")
        if expires is not None:
            lines.append(f"Expires: {expires}")
        if auth_from is not None:
            lines.append("Authorization: " + self._credentials(auth_from, password or self.password))
        return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()

    def _credentials(self, challenge: bytes, password: str) -> str:
        m = re.search(rb'WWW-Authenticate: Digest realm="([^"]+)", nonce="([^"]+)", algorithm=MD5', challenge)
        assert m, challenge
        realm, nonce = m.group(1).decode(), m.group(2).decode()
        uri = f"sip:{REALM}"
        r = response(ha1(self.user, realm, password, "MD5"), nonce, "REGISTER", uri, "MD5",
                     qop="auth", nc="00000001", cnonce="c0ffee")
        return (f'Digest username="{self.user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
                f'response="{r}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"')

    def exchange(self, data: bytes) -> bytes:
        self.conn.send(data)
        if isinstance(self.conn, TcpClient):
            return self.conn.recv_message()
        return self.conn.recv()

    def register(self, **kw: object) -> bytes:
        first = self.exchange(self.request(**kw))  # type: ignore[arg-type]
        if status_of(first) != 401:
            return first
        return self.exchange(self.request(auth_from=first, **kw))  # type: ignore[arg-type]

    def close(self) -> None:
        self.conn.close()


@pytest.mark.sipp
def test_sipp_register_with_auth_udp_and_tcp(sipd: Daemon, unix: FakeUnix,
                                             passwords: dict[str, str], tmp_path: Path) -> None:
    inf = tmp_path / "users.inf"
    inf.write_text(f"SEQUENTIAL\nalice;[authentication username=alice password={passwords['alice']}];\n"
                   f"bob;[authentication username=bob password={passwords['bob']}];\n")
    for transport in ("u1", "t1"):
        p = subprocess.run(
            ["sipp", f"127.0.0.1:{sipd.port}", "-sf", str(SCENARIO), "-t", transport,
             "-inf", str(inf), "-key", "domain", REALM, "-key", "expires", "600",
             "-m", "2", "-i", "127.0.0.1", "-p", str(free_port()), "-nostdin",
             "-timeout", "15s", "-timeout_error", "-trace_err", "-error_file", str(tmp_path / "err.log")],
            cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )
        errors = (tmp_path / "err.log").read_text() if (tmp_path / "err.log").exists() else ""
        assert p.returncode == 0, f"{transport}: {p.stderr[-1500:]}\n{errors[-1500:]}"
    assert "aor=alice" in usrloc(unix, "alice")
    assert "aor=bob" in usrloc(unix, "bob")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_register_fetch_unregister(sipd: Daemon, unix: FakeUnix, passwords: dict[str, str],
                                   transport: str) -> None:
    phone = Phone(sipd, "alice", passwords["alice"], transport)
    try:
        ok = phone.register(expires=600)
        assert status_of(ok) == 200, ok
        assert re.search(rb"Contact: <sip:alice@127\.0\.0\.1:\d+;transport=" + transport.encode()
                         + rb">;expires=(600|599)", ok)
        line = usrloc(unix, "alice")
        assert f"received={transport}:127.0.0.1:{phone.conn.port}" in line
        st = (unix["alice"].home / ".sr" / "usrloc").stat()
        assert (st.st_uid, st.st_mode & 0o777) == (unix["alice"].uid, 0o600)
        fetched = phone.register(contact="")
        assert status_of(fetched) == 200 and b"Contact: <sip:alice@127.0.0.1" in fetched
        gone = phone.register(expires=0)
        assert status_of(gone) == 200 and b"Contact:" not in gone
        assert "aor=alice" not in usrloc(unix, "alice")
    finally:
        phone.close()


def test_refusals_are_alike_and_logged(sipd: Daemon, unix: FakeUnix, passwords: dict[str, str]) -> None:
    answers = []
    for user, pw in (("alice", "wrong"), ("nosuchuser", "x"), ("carol", passwords["carol"])):
        phone = Phone(sipd, user, pw)
        try:
            resp = phone.register()
        finally:
            phone.close()
        assert status_of(resp) == 401, resp
        answers.append(sorted(re.findall(rb"^([A-Za-z-]+):", resp, re.M)))
    assert answers[0] == answers[1] == answers[2]
    logged = (r'auth failed: user "alice" from 127\.0\.0\.1 port \d+ \(REGISTER\): wrong password',
              r'auth failed: user "nosuchuser" from 127\.0\.0\.1 port \d+ \(REGISTER\): unknown user',
              r'auth failed: user "carol" .*not a member of group sip')
    wait_for(lambda: all(re.search(line, sipd.log) for line in logged), "the three failures logged")
    assert usrloc(unix, "carol") == ""


def test_other_users_aor_forbidden_and_423(sipd: Daemon, passwords: dict[str, str]) -> None:
    phone = Phone(sipd, "alice", passwords["alice"])
    try:
        assert status_of(phone.register(aor="bob")) == 403
        brief = phone.register(expires=10)
        assert status_of(brief) == 423 and b"Min-Expires: 60" in brief
    finally:
        phone.close()


def test_new_password_counts_at_once(sipd: Daemon, unix: FakeUnix, passwords: dict[str, str]) -> None:
    r = unix.sippasswd("-r", REALM, "--stdin", "bob", input="brand-new\n")
    assert r.returncode == 0
    try:
        old = Phone(sipd, "bob", passwords["bob"])
        new = Phone(sipd, "bob", "brand-new")
        try:
            assert status_of(old.register()) == 401
            assert status_of(new.register()) == 200
        finally:
            old.close()
            new.close()
    finally:
        unix.sippasswd("-r", REALM, "--stdin", "bob", input=passwords["bob"] + "\n")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_restart_keeps_bindings(tmp_path: Path, unix: FakeUnix, passwords: dict[str, str],
                                how: signal.Signals) -> None:
    port = free_port()
    with running_sipd(tmp_path, unix=unix, port=port) as daemon:
        phone = Phone(daemon, "alice", passwords["alice"])
        try:
            assert status_of(phone.register(expires=3600)) == 200
        finally:
            phone.close()
        daemon.proc.send_signal(how)
        daemon.proc.wait(10)
    try:
        with running_sipd(tmp_path, unix=unix, port=port) as again:
            phone = Phone(again, "alice", passwords["alice"])
            try:
                fetched = phone.register(contact="")
            finally:
                phone.close()
            assert status_of(fetched) == 200
            assert re.search(rb"Contact: <sip:alice@127\.0\.0\.1:\d+;transport=udp>;expires=3[56]\d\d", fetched)
            assert "reloaded 1 registration(s)" in again.log
    finally:
        (unix["alice"].home / ".sr" / "usrloc").unlink(missing_ok=True)


def test_symlinks_in_sr_are_never_followed(sipd: Daemon, unix: FakeUnix,
                                           passwords: dict[str, str], tmp_path: Path) -> None:
    secret = tmp_path / "root-only"
    secret.write_text("bob:test.invalid:" + "0" * 32 + "\n")
    secret.chmod(0o600)
    sr = unix["bob"].home / ".sr"
    passwd = sr / "passwd"
    saved = passwd.read_bytes()
    target_before = secret.read_bytes()
    try:
        # usrloc as a link to a root file: the write replaces the link.
        link = sr / "usrloc"
        link.unlink(missing_ok=True)
        os.symlink(secret, link)
        phone = Phone(sipd, "bob", passwords["bob"])
        try:
            assert status_of(phone.register()) == 200
        finally:
            phone.close()
        assert secret.read_bytes() == target_before
        assert not link.is_symlink() and "aor=bob" in link.read_text()
        # passwd as a link: ignored (never read), so bob cannot log in.
        passwd.unlink()
        os.symlink(secret, passwd)
        phone = Phone(sipd, "bob", passwords["bob"])
        try:
            assert status_of(phone.register()) == 401
        finally:
            phone.close()
        assert secret.read_bytes() == target_before
        assert "symlink" in sipd.log
    finally:
        passwd.unlink(missing_ok=True)
        passwd.write_bytes(saved)
        os.chown(passwd, unix["bob"].uid, unix["bob"].gid)
        passwd.chmod(0o600)


def test_wtmp_and_utmp_record_registrations(tmp_path: Path, unix: FakeUnix,
                                            passwords: dict[str, str]) -> None:
    if shutil.which("last") is None:
        pytest.fail("last(1) is missing (util-linux)")
    with running_sipd(tmp_path, unix=unix) as daemon:
        phone = Phone(daemon, "alice", passwords["alice"])
        try:
            assert status_of(phone.register(expires=600)) == 200
            wait_for(lambda: "alice" in _who(tmp_path), "alice in utmp", timeout=5)
            assert re.search(r"alice\s+sip/1", _who(tmp_path))
            assert status_of(phone.register(expires=0)) == 200
            wait_for(lambda: "alice" not in _who(tmp_path), "alice out of utmp", timeout=5)
        finally:
            phone.close()
        assert "alice" not in _who(tmp_path)
    last = subprocess.run(["last", "-f", str(tmp_path / "wtmp")], capture_output=True, text=True).stdout
    assert re.search(r"alice\s+sip/1\s+127\.0\.0\.1", last), last
    (unix["alice"].home / ".sr" / "usrloc").unlink(missing_ok=True)


def _who(tmp: Path) -> str:
    utmp = tmp / "utmp"
    if not utmp.exists():
        return ""
    return subprocess.run(["who", str(utmp)], capture_output=True, text=True).stdout


def test_write_back_flushes_on_interval_and_at_exit(tmp_path: Path, unix: FakeUnix,
                                                    passwords: dict[str, str]) -> None:
    conf = tmp_path / "wb.toml"
    conf.write_text('sync = "write-back"\nflush_interval = 1.5\n')
    try:
        with running_sipd(tmp_path, "-c", str(conf), unix=unix) as daemon:
            phone = Phone(daemon, "alice", passwords["alice"])
            try:
                assert status_of(phone.register(expires=600)) == 200
                # Not on disk at once: write-back waits for the interval...
                assert "aor=alice" not in usrloc(unix, "alice")
                wait_for(lambda: "aor=alice" in usrloc(unix, "alice"),
                         "the write-back flush", timeout=5)
                # ...and a change just before SIGTERM is written at exit.
                second = Phone(daemon, "alice", passwords["alice"])
                try:
                    assert status_of(second.register(expires=600)) == 200
                finally:
                    second.close()
            finally:
                phone.close()
            assert daemon.stop() == 0
        assert usrloc(unix, "alice").count("aor=alice") == 2
    finally:
        (unix["alice"].home / ".sr" / "usrloc").unlink(missing_ok=True)


def test_pam_account_check(tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]) -> None:
    # The shipped stack (pam_unix + pam_succeed_if ingroup sip) admits alice...
    with running_sipd(tmp_path, unix=unix, pam=True) as daemon:
        phone = Phone(daemon, "alice", passwords["alice"])
        try:
            assert status_of(phone.register()) == 200
        finally:
            phone.close()
    (unix["alice"].home / ".sr" / "usrloc").unlink(missing_ok=True)
    # ...and a service that refuses every account refuses her like a bad password.
    unix.add_pam_service("sipd-locked", "account required pam_deny.so\nauth required pam_deny.so\n")
    with running_sipd(tmp_path, "--pam-service", "sipd-locked", unix=unix, pam=True) as daemon:
        phone = Phone(daemon, "alice", passwords["alice"])
        try:
            resp = phone.register()
        finally:
            phone.close()
        assert status_of(resp) == 401 and b"stale" not in resp
        wait_for(lambda: re.search(r'auth failed: user "alice" .*PAM account check failed',
                                   daemon.log), "the PAM refusal logged")


def test_idle_daemon_with_timers_pending_does_not_spin(sipd: Daemon, passwords: dict[str, str]) -> None:
    # A registration keeps an expiry timer pending; waiting for it must
    # cost nothing (a timer loop that woke itself once spun a core here).
    phone = Phone(sipd, "alice", passwords["alice"])
    try:
        assert status_of(phone.register(expires=600)) == 200
    finally:
        phone.close()
    before = _cpu_seconds(sipd.proc.pid)
    time.sleep(2.0)  # the point: idle time passes, and what it costs is measured
    assert _cpu_seconds(sipd.proc.pid) - before < 0.5


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

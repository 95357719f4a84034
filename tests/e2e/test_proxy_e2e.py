"""Calls through a real sipd between real sipp processes on 127.0.0.1.

Callees are sipp UASs registered as a user first (register.xml from a sipp
on the same port, so the binding's contact is the UAS); the caller is a
sipp UAC authenticating with 407. Every sipp is killed and every file in
the homes removed after each test, whatever happened.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests import TESTS
from tests.sipclient import Daemon, free_port, listening, running_sipd, stop_process, wait_for
from tests.unixusers import FakeUnix, UserSpec, fake_unix, give_passwords

REALM = "test.invalid"
SIPP = TESTS / "sipp"

pytestmark = pytest.mark.sipp

USERS = (
    UserSpec("alice", groups=("sip",)),
    UserSpec("bob", primary="sip"),
    UserSpec("carol", groups=("sip",)),
    UserSpec("dave"),
)


@pytest.fixture(scope="module")
def unix() -> Iterator[FakeUnix]:
    """alice, bob and carol in the SIP group; dave outside it."""
    if shutil.which("sipp") is None:
        pytest.fail("sipp is not installed: run 'make setup' (Debian package sip-tester)")
    with fake_unix(USERS) as u:
        yield u


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("alice", "bob", "carol"))


class Calls:
    """One sipd and the sipp processes of one test."""

    def __init__(self, daemon: Daemon, unix: FakeUnix, passwords: dict[str, str], tmp: Path) -> None:
        self.daemon = daemon
        self.unix = unix
        self.passwords = passwords
        self.tmp = tmp
        self.procs: list[subprocess.Popen[str]] = []
        self.uas_ports: list[int] = []

    def _inf(self, name: str, *fields: str) -> Path:
        path = self.tmp / f"{name}-{secrets.token_hex(3)}.inf"
        path.write_text("SEQUENTIAL\n" + ";".join(fields) + ";\n")
        return path

    def _auth(self, user: str) -> str:
        return f"[authentication username={user} password={self.passwords[user]}]"

    def set_config(self, user: str, text: str) -> None:
        u = self.unix[user]
        path = u.home / ".sr" / "config"
        path.write_text(text)
        os.chown(path, u.uid, u.gid)
        path.chmod(0o600)

    def register(self, user: str, port: int, transport: str = "u1", aor: str | None = None) -> None:
        """Register ``user`` (or ``aor`` with ``user``'s credentials) with contact
        127.0.0.1:``port`` (where a UAS will listen)."""
        inf = self._inf("reg", aor or user, self._auth(user))
        r = subprocess.run(
            ["sipp", f"127.0.0.1:{self.daemon.port}", "-sf", str(SIPP / "register.xml"),
             "-t", transport, "-i", "127.0.0.1", "-p", str(port), "-inf", str(inf),
             "-key", "domain", REALM, "-key", "expires", "600", "-m", "1",
             "-timeout", "10s", "-timeout_error", "-recv_timeout", "3000"],
            capture_output=True, text=True, timeout=30, cwd=self.tmp, stdin=subprocess.DEVNULL,
        )
        assert r.returncode == 0, f"register {user}: {r.stdout[-1500:]}"

    def uas(self, scenario: str, user: str, transport: str = "u1",
            aor: str | None = None) -> subprocess.Popen[str]:
        """A sipp UAS registered as ``user`` (or as ``aor`` with ``user``'s
        credentials), serving one call in the background."""
        port = free_port()
        self.register(user, port, transport, aor)
        self.uas_ports.append(port)
        proc = subprocess.Popen(
            ["sipp", "-sf", str(SIPP / scenario), "-t", transport, "-i", "127.0.0.1",
             "-p", str(port), "-m", "1", "-timeout", "40s", "-timeout_error",
             "-trace_err", "-error_file", str(self.tmp / f"uas-{port}.err"),
             "-trace_msg", "-message_file", str(self.tmp / f"uas-{port}.msg")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=self.tmp,
            stdin=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        wait_until_listening(proc, port, transport)
        return proc

    def call(self, scenario: str, callee: str, caller: str = "alice", status: int | None = None,
             timeout: float = 40, transport: str = "u1",
             callee_domain: str = REALM) -> subprocess.CompletedProcess[str]:
        path = SIPP / scenario
        if status is not None:
            path = self.tmp / f"uac-{status}.xml"
            path.write_text((SIPP / scenario).read_text().replace("@STATUS@", str(status)))
        inf = self._inf("uac", callee, caller, self._auth(caller), callee_domain)
        return subprocess.run(
            ["sipp", f"127.0.0.1:{self.daemon.port}", "-sf", str(path), "-t", transport,
             "-i", "127.0.0.1", "-p", str(free_port()), "-inf", str(inf),
             "-key", "domain", REALM, "-m", "1", "-timeout", f"{int(timeout)}s",
             "-timeout_error", "-recv_timeout", "30000",
             "-trace_err", "-error_file", str(self.tmp / "uac.err")],
            capture_output=True, text=True, timeout=timeout + 20, cwd=self.tmp,
            stdin=subprocess.DEVNULL,
        )

    def received(self, port: int) -> str:
        """What the UAS on ``port`` received and sent (sipp's message trace)."""
        path = self.tmp / f"uas-{port}.msg"
        return path.read_text(errors="replace") if path.exists() else ""

    @staticmethod
    def finished(proc: subprocess.Popen[str], timeout: float = 15) -> int:
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return -1

    def stop_all(self) -> None:
        for proc in self.procs:
            stop_process(proc)
            if proc.stdout is not None:
                proc.stdout.close()


@contextmanager
def _calls(tmp: Path, unix: FakeUnix, passwords: dict[str, str], config: str = "",
           mount: bool = False) -> Iterator[Calls]:
    calls: Calls | None = None
    conf = tmp / "sipd.toml"
    conf.write_text(config)
    try:
        with running_sipd(tmp, "-v", "-c", str(conf), unix=unix, mount=mount) as daemon:
            calls = Calls(daemon, unix, passwords, tmp)
            try:
                yield calls
            finally:
                calls.stop_all()
            assert daemon.alive(), daemon.log
            assert "Traceback" not in daemon.log, daemon.log
    finally:
        for name in ("alice", "bob", "carol"):
            for leftover in ("usrloc", "config", "acc"):
                (unix[name].home / ".sr" / leftover).unlink(missing_ok=True)


@pytest.fixture
def calls(tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]) -> Iterator[Calls]:
    with _calls(tmp_path, unix, passwords) as c:
        yield c


def ok(r: subprocess.CompletedProcess[str], what: str, calls: Calls) -> None:
    assert r.returncode == 0, (
        f"{what}: sipp exit {r.returncode}\n{r.stdout[-2500:]}\n{r.stderr[-1000:]}\n"
        f"sipd log:\n{calls.daemon.log[-3000:]}"
    )


def wait_until_listening(proc: subprocess.Popen[str], port: int, transport: str = "u1") -> None:
    """Until the sipp ``proc`` has its socket on ``port``, so a request sent there arrives."""
    kind = "tcp" if transport.startswith("t") else "udp"
    wait_for(lambda: proc.poll() is not None or listening(port, kind),
             f"sipp to listen on {kind} port {port}")


def acc_events(unix: FakeUnix, user: str, want: int, timeout: float = 5.0) -> list[dict[str, str]]:
    """The records in ``user``'s ~/.sr/acc, once there are ``want`` of them."""
    path = unix[user].home / ".sr" / "acc"

    def lines() -> list[str]:
        return path.read_text().splitlines() if path.exists() else []

    wait_for(lambda: len(lines()) >= want, f"{want} records in {user}'s acc", timeout)
    return [dict(f.split("=", 1) for f in line.split()[1:]) for line in lines()]


@pytest.mark.parametrize(("caller", "callee"), [("u1", "u1"), ("t1", "u1"), ("u1", "t1"), ("t1", "t1")])
def test_call_answered_and_hung_up(calls: Calls, caller: str, callee: str) -> None:
    bob = calls.uas("uas_answer.xml", "bob", transport=callee)
    ok(calls.call("uac_answer.xml", "bob", transport=caller), "caller", calls)
    assert calls.finished(bob) == 0, "the callee did not see ACK and BYE"
    # Both parties get start, answer and end, with the same Call-ID.
    for user, direction in (("alice", "out"), ("bob", "in")):
        records = acc_events(calls.unix, user, 3)
        assert [r["event"] for r in records] == ["start", "answer", "end"], records
        assert {r["direction"] for r in records} == {direction}
        assert len({r["call-id"] for r in records}) == 1
        assert int(records[-1]["duration"]) >= 0


def test_busy_callee_gives_486(calls: Calls) -> None:
    bob = calls.uas("uas_busy.xml", "bob")
    ok(calls.call("uac_reject.xml", "bob", status=486), "caller", calls)
    assert calls.finished(bob) == 0, "the callee's 486 was not ACKed"
    records = acc_events(calls.unix, "alice", 2)
    assert [(r["event"], r.get("status")) for r in records] == [("start", None), ("failure", "486")]


def test_caller_cancel_gives_487(calls: Calls) -> None:
    bob = calls.uas("uas_ring.xml", "bob")
    ok(calls.call("uac_cancel.xml", "bob"), "caller", calls)
    assert calls.finished(bob) == 0, "the callee was not CANCELled"


@pytest.mark.slow
def test_no_answer_goes_to_forward_noanswer(calls: Calls) -> None:
    calls.set_config("bob", f"forward_noanswer = sip:carol@{REALM}\nring_timeout = 2\n")
    bob = calls.uas("uas_ring.xml", "bob")
    carol = calls.uas("uas_answer.xml", "carol")
    started = time.monotonic()
    ok(calls.call("uac_answer.xml", "bob"), "caller", calls)
    assert time.monotonic() - started >= 2.0
    assert calls.finished(bob) == 0, "bob's phone was not CANCELled"
    assert calls.finished(carol) == 0, "carol's phone did not get the call"


def test_forking_one_answers_the_other_is_cancelled(calls: Calls) -> None:
    ringing = calls.uas("uas_ring.xml", "bob")
    answering = calls.uas("uas_answer.xml", "bob")
    ok(calls.call("uac_answer.xml", "bob"), "caller", calls)
    assert calls.finished(answering) == 0
    assert calls.finished(ringing) == 0, "the other binding was not CANCELled"


def test_dnd_gives_486_without_ringing(calls: Calls) -> None:
    calls.set_config("bob", "dnd = yes\n")
    bob = calls.uas("uas_answer.xml", "bob")
    ok(calls.call("uac_reject.xml", "bob", status=486), "caller", calls)
    assert calls.finished(bob, timeout=1) == -1, "a dnd callee's phone rang"


def test_unknown_user_gives_404(calls: Calls) -> None:
    ok(calls.call("uac_reject.xml", "nobody", status=404), "caller", calls)
    # Outside the SIP group is the same as unknown.
    ok(calls.call("uac_reject.xml", "dave", status=404), "caller", calls)


def test_user_without_registration_gives_480(calls: Calls) -> None:
    ok(calls.call("uac_reject.xml", "carol", status=480), "caller", calls)


def test_calls_to_other_domains_are_refused_without_outbound_proxy(calls: Calls) -> None:
    ok(calls.call("uac_reject.xml", "someone", status=403, callee_domain="example.org"),
       "caller", calls)


def test_calls_to_other_domains_go_to_outbound_proxy(
    tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]
) -> None:
    gateway_port = free_port()
    with _calls(tmp_path, unix, passwords,
                f'outbound_proxy = "sip:127.0.0.1:{gateway_port}"\n') as calls:
        gateway = subprocess.Popen(
            ["sipp", "-sf", str(SIPP / "uas_answer.xml"), "-t", "u1", "-i", "127.0.0.1",
             "-p", str(gateway_port), "-m", "1", "-timeout", "40s", "-timeout_error",
             "-trace_msg", "-message_file", str(tmp_path / "gateway.msg")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
            stdin=subprocess.DEVNULL,
        )
        calls.procs.append(gateway)
        wait_until_listening(gateway, gateway_port)
        ok(calls.call("uac_answer.xml", "someone", callee_domain="example.org"), "caller", calls)
        assert calls.finished(gateway) == 0
        seen = (tmp_path / "gateway.msg").read_text()
        assert "INVITE sip:someone@example.org SIP/2.0" in seen
        assert f"Route: <sip:127.0.0.1:{gateway_port};lr>" in seen


def test_forward_sends_the_call_elsewhere(calls: Calls) -> None:
    calls.set_config("bob", f"forward = sip:carol@{REALM}\n")
    bob = calls.uas("uas_answer.xml", "bob")
    carol = calls.uas("uas_answer.xml", "carol")
    ok(calls.call("uac_answer.xml", "bob"), "caller", calls)
    assert calls.finished(carol) == 0, "carol's phone did not get the call"
    assert calls.finished(bob, timeout=1) == -1, "bob's phone rang despite forward"


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                    reason="needs /dev/fuse and root to mount the state filesystem")
@pytest.mark.slow
def test_a_call_shows_in_both_parties_calls_files_while_it_lasts(
    tmp_path: Path, unix: FakeUnix, passwords: dict[str, str], mnt: Path
) -> None:
    config = f'mount = "{mnt}"\nmount_enabled = true\n'
    with _calls(tmp_path, unix, passwords, config, mount=True) as calls:
        bob = calls.uas("uas_answer.xml", "bob")
        # uac_answer.xml, holding the call for 4 s instead of 0.3 s.
        held = tmp_path / "uac_held.xml"
        held.write_text((SIPP / "uac_answer.xml").read_text()
                        .replace('<pause milliseconds="300"/>', '<pause milliseconds="4000"/>'))
        inf = calls._inf("uac", "bob", "alice", calls._auth("alice"), REALM)
        caller = subprocess.Popen(
            ["sipp", f"127.0.0.1:{calls.daemon.port}", "-sf", str(held), "-t", "u1",
             "-i", "127.0.0.1", "-p", str(free_port()), "-inf", str(inf), "-key", "domain", REALM,
             "-m", "1", "-timeout", "30s", "-timeout_error"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
            stdin=subprocess.DEVNULL,
        )
        calls.procs.append(caller)
        wait_for(lambda: "state=answered" in (mnt / "bob" / "calls").read_text(),
                 "the answered call in bob's calls file")
        mine, theirs = (mnt / "alice" / "calls").read_text(), (mnt / "bob" / "calls").read_text()
        assert mine.count("\n") == 1 and theirs.count("\n") == 1
        assert "direction=out" in mine and "direction=in" in theirs
        assert mine.split()[0] == theirs.split()[0]  # the same Call-ID
        # bob's calls are not alice's business.
        r = subprocess.run(["setpriv", f"--reuid={unix['alice'].uid}", f"--regid={unix['alice'].gid}",
                            "--clear-groups", "cat", str(mnt / "bob" / "calls")],
                           capture_output=True, text=True)
        assert r.returncode != 0 and "Permission denied" in r.stderr
        assert caller.wait(20) == 0
        assert calls.finished(bob) == 0
        wait_for(lambda: not (mnt / "alice" / "calls").read_text()
                 and not (mnt / "bob" / "calls").read_text(),
                 "the call to leave the calls files", timeout=5)

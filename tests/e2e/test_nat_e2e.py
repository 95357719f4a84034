"""Phones behind NAT on a real sipd: keep-alive probes, reachability in /run/sr, calls.

The NAT is played the simple way: a sipp phone registers a Contact at a
private address (192.168.77.10:5060) from its own socket on 127.0.0.1,
which sipd takes for the NAT's mapping, and answers sipd's OPTIONS there
(an out-of-call scenario). sipd runs on its defaults but for a one-second
``keepalive_interval`` and the mount. Every sipp is killed and every file
in the homes removed after each test, whatever happened.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from sipd.sip.message import Request, make_response, parse
from tests import netns
from tests.e2e.test_proxy_e2e import REALM, SIPP, USERS, Calls, _calls, ok, wait_until_listening
from tests.phone import Phone
from tests.sipclient import free_port, running_sipd, status_of, stop_process, wait_for
from tests.unixusers import FakeUnix, fake_unix, give_passwords

pytestmark = [pytest.mark.sipp, pytest.mark.slow]
needs_fuse = pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                                reason="needs /dev/fuse and root to mount the state filesystem")

PRIVATE = "192.168.77.10"


@pytest.fixture(scope="module")
def unix() -> Iterator[FakeUnix]:
    if shutil.which("sipp") is None:
        pytest.fail("sipp is not installed: run 'make setup' (Debian package sip-tester)")
    with fake_unix(USERS) as u:
        yield u


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("alice", "bob", "carol"))


@pytest.fixture(autouse=True)
def clean_homes(unix: FakeUnix) -> Iterator[None]:
    """Whatever a test's sipd wrote in the homes goes with it: the next one starts clean."""
    yield
    for name in ("alice", "bob", "carol"):
        for leftover in ("usrloc", "config", "acc"):
            (unix[name].home / ".sr" / leftover).unlink(missing_ok=True)


@contextmanager
def nat_phone(calls: Calls, user: str) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """A sipp phone of ``user`` behind a "NAT", registered and answering OPTIONS."""
    port = free_port()
    inf = calls.tmp / f"nat-{port}.inf"
    inf.write_text(f"SEQUENTIAL\n{user};[authentication username={user} "
                   f"password={calls.passwords[user]}];\n")
    proc = subprocess.Popen(
        ["sipp", f"127.0.0.1:{calls.daemon.port}", "-sf", str(SIPP / "nat_phone.xml"),
         "-oocsf", str(SIPP / "ooc_options.xml"), "-t", "u1", "-i", "127.0.0.1",
         "-p", str(port), "-inf", str(inf), "-key", "domain", REALM, "-key", "expires", "600",
         "-key", "contact_host", PRIVATE, "-d", "120000", "-m", "1", "-nostdin",
         "-trace_err", "-error_file", str(calls.tmp / f"nat-{port}.err")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=calls.tmp,
        stdin=subprocess.DEVNULL,
    )
    try:
        wait_until_listening(proc, port)
        yield proc, port
    finally:
        stop_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def line_of(mnt: Path, user: str, port: int) -> str | None:
    """The contacts line of ``user``'s phone registered from 127.0.0.1:``port``."""
    text = (mnt / user / "contacts").read_text()
    for line in text.splitlines():
        if f"received=udp:127.0.0.1:{port} " in line + " ":
            return line
    return None


def shows(mnt: Path, user: str, port: int, pattern: str) -> bool:
    line = line_of(mnt, user, port)
    return line is not None and re.search(pattern, line) is not None


@pytest.fixture
def nat_calls(tmp_path: Path, unix: FakeUnix, passwords: dict[str, str],
              mnt: Path) -> Iterator[Calls]:
    config = f'keepalive_interval = 1\nmount_enabled = true\nmount = "{mnt}"\n'
    with _calls(tmp_path, unix, passwords, config, mount=True) as calls:
        wait_for(lambda: (mnt / "alice").exists(), "the mount")
        yield calls


@needs_fuse
def test_a_phone_behind_nat_is_probed_skipped_once_gone_and_dropped(
        nat_calls: Calls, tmp_path: Path, mnt: Path) -> None:
    calls = nat_calls
    with nat_phone(calls, "alice") as (phone, port):
        # Probed where the REGISTER came from, answered there: reachable, timed.
        wait_for(lambda: shows(mnt, "alice", port, r" reachable=yes rtt=\d+ms$"),
                 "the phone to show reachable with its rtt")
        line = line_of(mnt, "alice", port)
        assert line is not None and line.startswith(f"sip:alice@{PRIVATE}:5060 aor=alice ")
        # A second phone of alice's, registered from where its Contact says: not probed.
        busy = calls.uas("uas_busy.xml", "alice")
        other = calls.uas_ports[-1]
        assert shows(mnt, "alice", other, r" reachable=unknown$")
        # The phone goes away (its NAT mapping with it).
        phone.send_signal(signal.SIGKILL)
        phone.wait(5)
    wait_for(lambda: shows(mnt, "alice", port, r" reachable=no rtt=\d+ms$"),
             "the phone to show unreachable")
    wait_for(lambda: 'of user "alice" is unreachable' in calls.daemon.log,
             "the log line of the unreachable contact")
    # Whatever comes to the phone's old address from now on is caught here.
    catcher = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        catcher.bind(("127.0.0.1", port))
        # A call to alice skips the dead phone: the busy one answers at once.
        r = calls.call("uac_reject.xml", "alice", caller="bob", status=486)
        ok(r, "call to alice", calls)
        assert Calls.finished(busy) == 0
        catcher.setblocking(False)
        caught = []
        while True:
            try:
                caught.append(catcher.recv(70000))
            except BlockingIOError:
                break
        assert all(data.startswith(b"OPTIONS ") for data in caught), caught[:1]
        assert not any(data.startswith(b"INVITE ") for data in caught)
        # Dropped once unanswered long enough (live on SIGHUP), like an expiry.
        conf = tmp_path / "sipd.toml"
        conf.write_text(conf.read_text() + "keepalive_drop_after = 1\n")
        calls.daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: line_of(mnt, "alice", port) is None, "the contact to be dropped")
    finally:
        catcher.close()
    log = calls.daemon.log
    assert "contact dropped, unreachable (keepalive_drop_after)" in log
    assert f"contact \"sip:alice@{PRIVATE}:5060\"" in log
    usrloc = (calls.unix["alice"].home / ".sr" / "usrloc")
    wait_for(lambda: PRIVATE not in usrloc.read_text(), "usrloc to lose the dropped contact")
    metrics = (mnt / "metrics").read_text()
    for name in ("sipd_keepalive_probes_total", "sipd_keepalive_answers_total",
                 "sipd_keepalive_timeouts_total"):
        value = re.search(rf"^{name} (\d+)$", metrics, re.M)
        assert value is not None and int(value.group(1)) > 0, name
    assert re.search(r"^sipd_keepalive_dropped_total 1$", metrics, re.M)
    assert re.search(r"^sipd_contacts_unreachable 0$", metrics, re.M)


@needs_fuse
def test_the_callees_bye_reaches_a_caller_behind_nat(nat_calls: Calls) -> None:
    """The caller's Contact is private; the callee hangs up through the dialog's flow."""
    calls = nat_calls
    callee = calls.uas("uas_hangup.xml", "bob")
    r = calls.call("uac_natted_callee_hangs_up.xml", "bob", caller="alice")
    ok(r, "the natted caller's call, hung up by the callee", calls)
    assert Calls.finished(callee) == 0, calls.received(calls.uas_ports[-1])
    trace = calls.received(calls.uas_ports[-1])
    # The callee saw the caller's Contact as written: sipd did not rewrite it.
    assert "Contact: <sip:alice@192.168.77.20:5060>" in trace
    assert "BYE sip:alice@192.168.77.20:5060 SIP/2.0" in trace


class NattedPhone(Phone):
    """tests.phone's phone, with the private Contact of a phone behind a NAT."""

    def request(self, challenge: bytes | None = None, expires: int = 600) -> bytes:
        data = super().request(challenge, expires)
        own = f"@{self.source}:{self.port};transport=udp>".encode()
        return data.replace(own, b"@192.168.77.30:5060>")


def test_probes_leave_from_the_socket_the_phone_registered_to(
        tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]) -> None:
    """RFC 5626 flows over UDP: a NAT lets in only what comes from where the phone sent."""
    second = free_port()
    conf = tmp_path / "sipd.toml"
    conf.write_text("keepalive_interval = 1\n")
    with running_sipd(tmp_path, "-c", str(conf), "-l", f"udp:127.0.0.2:{second}",
                      unix=unix) as daemon:
        # The phone registers to sipd's second address, not the first of the family.
        with NattedPhone(second, "alice", passwords["alice"], server="127.0.0.2") as phone:
            assert status_of(phone.register()) == 200
            for _ in range(2):
                data, source = phone.sock.recvfrom(65536)
                assert data.startswith(b"OPTIONS sip:alice@192.168.77.30:5060 SIP/2.0"), data
                assert source == ("127.0.0.2", second)
                probe = parse(data)
                assert isinstance(probe, Request)
                phone.sock.sendto(make_response(probe, 200).to_bytes(), source)
        assert daemon.alive()
    assert "Traceback" not in daemon.log


@needs_fuse
@pytest.mark.skipif(netns.missing() is not None, reason=str(netns.missing()))
def test_a_phone_behind_a_real_nat_stays_reachable_through_the_probes(
        tmp_path: Path, unix: FakeUnix, passwords: dict[str, str], mnt: Path) -> None:
    """A phone in a namespace behind iptables MASQUERADE whose UDP mappings
    expire after 2 idle seconds: sipd's probes keep its mapping, so a call
    reaches it long after its REGISTER; once it is gone, it shows unreachable."""
    conf = tmp_path / "sipd.toml"
    conf.write_text(f'keepalive_interval = 1\nmount_enabled = true\nmount = "{mnt}"\n')
    with netns.masquerade(udp_timeout=2) as nat, ExitStack() as stack:
        port = free_port()
        daemon = stack.enter_context(running_sipd(
            tmp_path, "-c", str(conf), "-l", f"udp:{nat.host_address}:{port}", unix=unix,
            mount=True, port=port))
        wait_for(lambda: (mnt / "alice").exists(), "the mount")
        calls = Calls(daemon, unix, passwords, tmp_path)
        stack.callback(calls.stop_all)
        inf = tmp_path / "phone.inf"
        inf.write_text(f"SEQUENTIAL\nalice;[authentication username=alice "
                       f"password={passwords['alice']}];\n")
        # A phone that tells the truth: its Contact is its LAN address.
        phone = subprocess.Popen(
            nat.in_lan("sipp", f"{nat.host_address}:{port}", "-sf", str(SIPP / "nat_phone.xml"),
                       "-oocsf", str(SIPP / "ooc_options.xml"), "-t", "u1",
                       "-i", nat.phone_address, "-p", "5060", "-inf", str(inf),
                       "-key", "domain", REALM, "-key", "expires", "600",
                       "-key", "contact_host", nat.phone_address, "-d", "120000", "-m", "1",
                       "-nostdin"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
            stdin=subprocess.DEVNULL)
        calls.procs.append(phone)  # type: ignore[arg-type]

        def line() -> str:
            return next((t for t in (mnt / "alice" / "contacts").read_text().splitlines()
                         if t.startswith(f"sip:alice@{nat.phone_address}:5060 ")), "")

        def metric(name: str) -> int:
            found = re.search(rf"^{name} (\d+)$", (mnt / "metrics").read_text(), re.M)
            return int(found.group(1)) if found else -1

        wait_for(lambda: re.search(r" reachable=yes rtt=\d+ms$", line()),
                 "the phone behind the NAT to answer a probe")
        # Seen from the NAT's public address, not the phone's own.
        assert f" received=udp:{nat.public_address}:" in line()
        # Many times the NAT's idle timeout: only the probes keep the mapping.
        answered = metric("sipd_keepalive_answers_total")
        wait_for(lambda: metric("sipd_keepalive_answers_total") >= answered + 6,
                 "six more answers", timeout=20)
        assert metric("sipd_keepalive_timeouts_total") == 0
        assert " reachable=yes " in line() + " "
        # A call gets through the NAT to the phone, which refuses it.
        r = calls.call("uac_reject.xml", "alice", caller="bob", status=486)
        ok(r, "a call to the phone behind the NAT", calls)
        phone.send_signal(signal.SIGKILL)
        phone.wait(5)
        wait_for(lambda: re.search(r" reachable=no rtt=\d+ms$", line()),
                 "the phone to show unreachable")
    assert "Traceback" not in daemon.log

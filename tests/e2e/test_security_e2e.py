"""An attacker's view of a running sipd: a local user with a shell, a SIP account, a stranger.

Each test is a hole that was open once: a user's own ``~/.sr/usrloc``
taking another user's calls, contacts that loop back into the proxy, a
reflection amplifier, timing that tells who exists, and changes that were
acknowledged and then lost because the home was full.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipd.auth.authenticator import AUTH_FAILURE_DELAY
from sipd.sip.digest import ha1, response
from tests.e2e.test_register_e2e import REALM, Phone
from tests.sipclient import (
    Daemon,
    UdpClient,
    free_port,
    reason_of,
    running_sipd,
    status_of,
    wait_for,
)
from tests.unixusers import FakeUnix, give_passwords

needs_mount = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0,
    reason="needs /dev/fuse and root to mount the state filesystem",
)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs")

#: 198.51.100.7, bob's trunk, written as the resolver also reads it (octal).
TRUNK_SPELLED = "198.51.100.007"


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("alice", "bob", "carol"))


@pytest.fixture
def admin(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "aliases").write_text("2000: bob\n")
    (etc / "trunks").write_text("bob: 198.51.100.7/32\n")
    for name in ("aliases", "trunks"):
        (etc / name).chmod(0o644)
    return etc


@pytest.fixture(autouse=True)
def clean_homes(unix: FakeUnix) -> Iterator[None]:
    yield
    for name in ("alice", "bob"):
        for leftover in ("usrloc", "config", "acc"):
            (unix[name].home / ".sr" / leftover).unlink(missing_ok=True)


def config_file(tmp_path: Path, admin: Path, mnt: Path | None = None) -> Path:
    conf = tmp_path / "sipd.toml"
    text = f'aliases = "{admin / "aliases"}"\ntrunks = "{admin / "trunks"}"\n'
    if mnt is not None:
        text += f'mount = "{mnt}"\n'
    conf.write_text(text)
    return conf


def write_as(unix: FakeUnix, user: str, name: str, text: str) -> None:
    """A file in ``user``'s ~/.sr, as the user would write it."""
    path = unix[user].home / ".sr" / name
    path.write_text(text)
    os.chown(path, unix[user].uid, unix[user].gid)
    path.chmod(0o600)


def invite(uri: str, via_port: int, source: str = "127.0.0.1") -> bytes:
    """An INVITE from a stranger: a From in another domain, no credentials."""
    return (
        f"INVITE {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {source}:{via_port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:stranger@elsewhere.example>;tag={secrets.token_hex(4)}\r\n"
        f"To: <{uri}>\r\n"
        f"Call-ID: {secrets.token_hex(8)}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:stranger@{source}:{via_port}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def final_status(client: UdpClient, data: bytes) -> int:
    client.send(data)
    while True:
        status = status_of(client.recv())
        if status >= 200:
            return status


def contacts_of(answer: bytes) -> list[str]:
    return re.findall(r"Contact: <([^>]+)>", answer.decode())


# ------------------------------------------------------- ~/.sr/usrloc as a weapon


def test_a_users_own_usrloc_cannot_take_other_users_calls_or_numbers(
    tmp_path: Path, unix: FakeUnix, passwords: dict[str, str], admin: Path
) -> None:
    phone = UdpClient("127.0.0.1", 9)  # alice's "phone": where stolen calls would ring
    port = free_port()
    now = time.time()
    later = now + 3600
    lines = [
        f"sip:alice@127.0.0.1:{phone.port} aor=bob expires_at={later:.0f} "
        f"received=udp:127.0.0.1:{phone.port}",
        f"sip:alice@127.0.0.1:{phone.port};did=1 aor=2000 expires_at={later:.0f} "
        f"received=udp:127.0.0.1:{phone.port}",
        f"sip:pbx@{TRUNK_SPELLED}:5060 aor=alice",
        f"sip:loop@127.0.0.1:{port};ttl=1 aor=alice",
        f"sip:loop@127.0.0.1:{port};ttl=2 aor=alice expires_at={later:.0f}",
        *(f"sip:x{i}@192.0.2.{i % 250 + 1}:{5000 + i} aor=alice registered=1000"
          for i in range(2000)),
        f"sip:alice@127.0.0.1:{phone.port};own=1 aor=alice expires_at={later:.0f} "
        f"registered={now:.0f} received=udp:127.0.0.1:{phone.port}",
    ]
    write_as(unix, "alice", "usrloc", "\n".join(lines) + "\n")
    conf = config_file(tmp_path, admin)
    try:
        with running_sipd(tmp_path, "-c", str(conf), unix=unix, port=port) as sipd:
            log = sipd.log
            refused = [line for line in log.splitlines() if "alice's usrloc" in line]
            assert len(refused) == 1, log
            # 5 refused (bob's name, bob's number, the trunk, this server twice)
            # and 1991 over max_contacts.
            assert re.search(r"\b1996 line\(s\) not loaded", refused[0]), refused[0]
            assert "does not own AOR 'bob'" in refused[0]
            stranger = UdpClient("127.0.0.1", sipd.port)
            try:
                for victim in ("bob", "2000"):
                    assert final_status(stranger, invite(f"sip:{victim}@{REALM}",
                                                         stranger.port)) == 480
                phone.expect_nothing(0.5)
            finally:
                stranger.close()
            me = Phone(sipd, "alice", passwords["alice"])
            try:
                listed = contacts_of(me.register(contact=""))
            finally:
                me.close()
            assert len(listed) == 10
            assert f"sip:alice@127.0.0.1:{phone.port};own=1" in listed
            assert not [c for c in listed if "loop@" in c or TRUNK_SPELLED in c]
    finally:
        phone.close()


# ------------------------------------------------------- loops and amplification


def test_a_contact_at_this_server_is_refused(
    tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]
) -> None:
    hosts = ["127.0.0.1", "127.000.000.001", "127.0.0.2", "[::1]", "[::ffff:127.0.0.1]",
             "[::ffff:7f00:1]", "localhost", "LocalHost", "0.0.0.0", "[::]", "test.invalid"]
    with running_sipd(tmp_path, unix=unix) as sipd:
        phone = Phone(sipd, "alice", passwords["alice"])
        try:
            for host in hosts:
                answer = phone.register(contact=f"<sip:x@{host}:{sipd.port};ttl=1>")
                assert (status_of(answer), reason_of(answer)) == (
                    403, "Contact points at this server"), host
            # maddr is where a request for the contact goes.
            maddr = phone.register(contact=f"<sip:x@192.0.2.1:{sipd.port};maddr=127.0.0.1>")
            assert status_of(maddr) == 403
            # The same host on another port is a phone on this host, and fine.
            assert status_of(phone.register(contact=f"<sip:x@127.0.0.1:{sipd.port + 1}>")) == 200
        finally:
            phone.close()


def test_one_invite_cannot_make_the_proxy_loop_or_fork_without_bound(
    tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]
) -> None:
    """Three contacts pointing back here over TCP once made 192 messages of one INVITE."""
    with running_sipd(tmp_path, unix=unix) as sipd:
        phone = Phone(sipd, "alice", passwords["alice"], transport="tcp")
        try:
            loops = ", ".join(f"<sip:x@127.0.0.1:{sipd.port};ttl={i};transport=tcp>"
                              for i in range(3))
            answer = phone.register(contact=loops)
            assert status_of(answer) == 403, answer
        finally:
            phone.close()
        stranger = UdpClient("127.0.0.1", sipd.port)
        try:
            assert final_status(stranger, invite(f"sip:alice@{REALM}", stranger.port)) == 480
        finally:
            stranger.close()
        assert "proxy error" not in sipd.log


# ------------------------------------------------------- who exists


def _failed_register(sipd: Daemon, user: str, source: str) -> float:
    """Seconds from a REGISTER with a wrong password to its answer (a 401)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(5)
        port = s.getsockname()[1]

        def request(auth: str = "") -> bytes:
            return (
                f"REGISTER sip:{REALM} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {source}:{port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:{user}@{REALM}>;tag={secrets.token_hex(4)}\r\n"
                f"To: <sip:{user}@{REALM}>\r\n"
                f"Call-ID: {secrets.token_hex(8)}\r\n"
                "CSeq: 1 REGISTER\r\n"
                f"Contact: <sip:{user}@{source}:{port}>\r\n"
                f"{auth}Content-Length: 0\r\n\r\n"
            ).encode()

        s.sendto(request(), ("127.0.0.1", sipd.port))
        challenge = s.recv(65536)
        assert status_of(challenge) == 401
        nonce = re.search(rb'nonce="([^"]+)"', challenge)
        assert nonce
        uri = f"sip:{REALM}"
        r = response(ha1(user, REALM, "wrong", "MD5"), nonce.group(1).decode(), "REGISTER", uri,
                     "MD5", qop="auth", nc="00000001", cnonce="c0ffee")
        auth = (f'Authorization: Digest username="{user}", realm="{REALM}", '
                f'nonce="{nonce.group(1).decode()}", uri="{uri}", response="{r}", '
                'algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"\r\n')
        started = time.monotonic()
        s.sendto(request(auth), ("127.0.0.1", sipd.port))
        answer = s.recv(65536)
        took = time.monotonic() - started
        assert status_of(answer) == 401, answer
        return took


@pytest.mark.slow
def test_failed_authentication_takes_the_same_time_whoever_the_name_is(
    tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]
) -> None:
    """A member (PAM, group and ~/.sr/passwd looked at), a non-member and an unknown name."""
    with running_sipd(tmp_path, unix=unix, pam=True) as sipd:
        times: dict[str, list[float]] = {}
        for i, user in enumerate(("alice", "carol", f"nobody{secrets.token_hex(3)}")):
            times[user] = [_failed_register(sipd, user, f"127.0.1.{i + 1}") for _ in range(3)]
    for user, took in times.items():
        assert all(AUTH_FAILURE_DELAY <= t < AUTH_FAILURE_DELAY + 0.25 for t in took), (user, took)
    medians = [statistics.median(t) for t in times.values()]
    print("failed-authentication answer times (s):",
          {u: [round(t, 4) for t in took] for u, took in times.items()})
    assert max(medians) - min(medians) < 0.05, times


def test_strangers_get_one_answer_for_members_non_members_and_unknown_names(
    tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]
) -> None:
    with running_sipd(tmp_path, unix=unix) as sipd:
        stranger = UdpClient("127.0.0.1", sipd.port)
        try:
            for name in ("alice", "carol", "nobody"):
                assert final_status(stranger, invite(f"sip:{name}@{REALM}", stranger.port)) == 480
        finally:
            stranger.close()


# ------------------------------------------------------- the tree refuses alike


def sh(cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30)


@needs_mount
def test_the_tree_refuses_what_register_refuses(
    tmp_path: Path, unix: FakeUnix, passwords: dict[str, str], admin: Path, mnt: Path
) -> None:
    conf = config_file(tmp_path, admin, mnt)
    with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True) as sipd:
        contacts = mnt / "alice" / "contacts"
        wait_for(contacts.exists, "the mount")
        refused = {
            f"sip:x@127.0.0.1:{sipd.port}": "Permission denied",
            f"sip:x@127.000.000.001:{sipd.port}": "Permission denied",
            f"sip:pbx@{TRUNK_SPELLED}": "Permission denied",
            "sip:pbx@[::ffff:198.51.100.7]": "Permission denied",
            # Forms the resolver reads but a SIP URI may not hold.
            "sip:pbx@3325256711": "Invalid argument",
            f"sip:x@127.3:{sipd.port}": "Invalid argument",
            "sip:x@224.0.0.1": "Permission denied",
            "sip:a\\x01b@192.0.2.1": "Invalid argument",
            "sip:a\\x7fb@192.0.2.1": "Invalid argument",
            "sip:" + "a" * 30000 + "@192.0.2.1": "Invalid argument",
        }
        for line, error in refused.items():
            r = sh(f"printf '{line}\\n' >> {contacts}")
            assert r.returncode != 0 and error in r.stderr, (line[:60], r.stderr)
        assert contacts.read_text() == ""
        phone = Phone(sipd, "alice", passwords["alice"])
        try:
            long = phone.register(contact=f"<sip:{'a' * 30000}@192.0.2.1>")
            assert status_of(long) == 400 and "longer than" in reason_of(long), reason_of(long)
            trunk = phone.register(contact=f"<sip:pbx@{TRUNK_SPELLED}>")
            assert (status_of(trunk), reason_of(trunk)) == (403, "Contact points at a trunk address")
        finally:
            phone.close()


# ------------------------------------------------------- a full home


@pytest.fixture
def full_sr(unix: FakeUnix) -> Iterator[Path]:
    """alice's ~/.sr on a tiny tmpfs that is full: every write there fails with ENOSPC."""
    alice = unix["alice"]
    sr = alice.home / ".sr"
    passwd = (sr / "passwd").read_bytes()
    subprocess.run(["mount", "-t", "tmpfs", "-o",
                    f"size=64k,mode=0700,uid={alice.uid},gid={alice.gid}", "tmpfs", str(sr)],
                   check=True)
    try:
        (sr / "passwd").write_bytes(passwd)
        filler = sr / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"x" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        for path in (sr / "passwd", filler):
            os.chown(path, alice.uid, alice.gid)
            path.chmod(0o600)
        yield sr
    finally:
        subprocess.run(["umount", "-l", str(sr)], check=False)


@needs_root
@needs_mount
@pytest.mark.slow
def test_nothing_is_acknowledged_that_the_disk_did_not_take(
    tmp_path: Path, unix: FakeUnix, passwords: dict[str, str], mnt: Path, full_sr: Path
) -> None:
    conf = tmp_path / "fs.toml"
    conf.write_text(f'mount = "{mnt}"\n')
    with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True) as sipd:
        node = mnt / "alice" / "config"
        wait_for(node.exists, "the mount")
        phone = Phone(sipd, "alice", passwords["alice"])
        try:
            answer = phone.register()
            assert (status_of(answer), reason_of(answer)) == (500, "Cannot save the registration")
            # Not in force either: no binding listed, none routed to.
            assert contacts_of(phone.register(contact="")) == []
            assert (mnt / "alice" / "contacts").read_text() == ""
        finally:
            phone.close()
        # The shell hears the disk's answer, and nothing is in force.
        r = sh(f"echo yes > {node}/dnd")
        assert r.returncode != 0 and "No space left on device" in r.stderr, r
        with pytest.raises(OSError) as refused:  # noqa: PT012 - the error comes at close
            with open(mnt / "alice" / "contacts", "a") as f:
                f.write("sip:pbx@192.0.2.9\n")
        assert refused.value.errno == errno.ENOSPC
        assert not (node / "dnd").exists()
        assert (mnt / "alice" / "contacts").read_text() == ""
        # Room again: both go through, and the poll keeps what was acknowledged.
        (full_sr / "filler").unlink()
        assert sh(f"echo yes > {node}/dnd").returncode == 0
        phone = Phone(sipd, "alice", passwords["alice"])
        try:
            assert status_of(phone.register()) == 200
        finally:
            phone.close()
        assert "dnd = yes" in (full_sr / "config").read_text()
        # A hand edit after it: once the poll has shown it, the poll has run
        # and must not have undone what the tree acknowledged.
        with open(full_sr / "config", "a") as f:
            f.write("ring_timeout = 15\n")
        wait_for((node / "ring_timeout").exists, "the poll to pick up the hand edit", 15)
        assert (node / "dnd").read_text() == "yes\n"

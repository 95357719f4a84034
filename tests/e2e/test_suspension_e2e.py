"""Suspending a customer stops everything: registrations and its trusted PBX's calls.

A real sipd on 127.0.0.1 with PAM on (pam_wrapper), the DID
``01727221221`` of acme and acme's PBX trusted at 127.0.0.2 (any 127/8
address is the host's own). acme is suspended by each means an
administrator has: an expired account (``usermod -e 1``), removal from the
SIP group (``gpasswd -d``), a locked password (``usermod -L``) and a PAM
module's refusal (pam_listfile here; sssd or LDAP on a host). The file
changes are made as those tools make them, a new file renamed over the old.

What "stopped" means: acme's REGISTER is refused, and an INVITE from the
PBX's address is no longer taken as acme's (it is challenged, 407, like
any request claiming a local From). Before the change both work; the
account was cached by then, so the refusal proves the cache was dropped.
"""

from __future__ import annotations

import secrets
import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.phone import REALM, Phone
from tests.sipclient import Daemon, running_sipd, status_of, wait_for
from tests.unixusers import DEFAULT_PAM_SERVICE, FakeUnix, UserSpec, fake_unix, give_passwords

PBX_IP = "127.0.0.2"
DID = "01727221221"
USERS = (UserSpec("acme", groups=("sip",)), UserSpec("bob", primary="sip"))

#: sipd(8): a change of /etc/passwd, /etc/group or /etc/shadow counts within
#: a second (the stamps are compared once a second); a little room for a
#: busy machine.
FILE_DELAY = 1.0 + 1.5


@pytest.fixture(scope="module")
def unix() -> Iterator[FakeUnix]:
    with fake_unix(USERS) as u:
        deny = u.root / "sip-deny"
        deny.write_text("")
        deny.chmod(0o644)
        u.add_pam_service("sipd", DEFAULT_PAM_SERVICE + (
            f"account required pam_listfile.so item=user sense=deny file={deny} onerr=succeed\n"))
        yield u


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("acme", "bob"))


@pytest.fixture(autouse=True)
def restored(unix: FakeUnix) -> Iterator[None]:
    """Each test starts with acme in good standing and no phone registered, and leaves it so."""
    yield
    unix.set_shadow("acme")
    unix.set_groups("acme", ["sip"])
    (unix.root / "sip-deny").write_text("")
    for name in ("acme", "bob"):
        (unix[name].home / ".sr" / "usrloc").unlink(missing_ok=True)


@contextmanager
def sipd(tmp: Path, unix: FakeUnix, extra: str = "") -> Iterator[Daemon]:
    etc = tmp / "etc"
    etc.mkdir()
    (etc / "aliases").write_text(f"{DID}: acme\n")
    (etc / "trunks").write_text(f"acme: {PBX_IP}/32\n")
    for name in ("aliases", "trunks"):
        (etc / name).chmod(0o644)
    conf = tmp / "sipd.toml"
    conf.write_text(f'aliases = "{etc / "aliases"}"\ntrunks = "{etc / "trunks"}"\n{extra}')
    with running_sipd(tmp, "-v", "-c", str(conf), unix=unix, pam=True) as daemon:
        yield daemon
        assert daemon.alive(), daemon.log
        assert "Traceback" not in daemon.log, daemon.log


def register(daemon: Daemon, passwords: dict[str, str], user: str = "acme") -> int:
    with Phone(daemon.port, user, passwords[user]) as phone:
        return status_of(phone.register())


def trunk_invite(daemon: Daemon, callee: str = "bob", caller: str = DID) -> int:
    """An INVITE from the PBX's address with no credentials: the final status.

    bob has no phone registered, so a call taken as acme's ends in 480;
    one that is not is challenged (407). The non-2xx answer is ACKed.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind((PBX_IP, 0))
        port = sock.getsockname()[1]
        branch, tag, call_id = (f"z9hG4bK{secrets.token_hex(6)}", secrets.token_hex(4),
                                secrets.token_hex(8))
        head = [
            f"Via: SIP/2.0/UDP {PBX_IP}:{port};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:{caller}@{REALM}>;tag={tag}",
        ]
        invite = "\r\n".join([
            f"INVITE sip:{callee}@{REALM} SIP/2.0", *head,
            f"To: <sip:{callee}@{REALM}>", f"Call-ID: {call_id}", "CSeq: 1 INVITE",
            f"Contact: <sip:pbx@{PBX_IP}:{port}>", "Content-Length: 0", "", "",
        ]).encode()
        sock.sendto(invite, ("127.0.0.1", daemon.port))
        while True:
            data = sock.recv(65536)
            status = status_of(data)
            if status >= 200:
                break
        to = next(line for line in data.decode().split("\r\n") if line.lower().startswith("to:"))
        ack = "\r\n".join([
            f"ACK sip:{callee}@{REALM} SIP/2.0", *head, to, f"Call-ID: {call_id}",
            "CSeq: 1 ACK", "Content-Length: 0", "", "",
        ]).encode()
        sock.sendto(ack, ("127.0.0.1", daemon.port))
        return status


def suspend(unix: FakeUnix, means: str) -> None:
    if means == "expired":
        unix.set_shadow("acme", "$6$salt$hash", expire=1)  # usermod -e 1
    elif means == "group":
        unix.set_groups("acme", [])  # gpasswd -d acme sip
    elif means == "locked":
        unix.set_shadow("acme", "!$6$salt$hash")  # usermod -L
    else:
        (unix.root / "sip-deny").write_text("acme\n")  # the PAM module says no


def refused_within(daemon: Daemon, passwords: dict[str, str], limit: float) -> float:
    """Seconds until acme's REGISTER is refused; fails past ``limit``."""
    started = time.monotonic()
    wait_for(lambda: register(daemon, passwords) != 200, "acme's REGISTER refused", limit)
    return time.monotonic() - started


@pytest.mark.parametrize("means", ["expired", "group", "locked"])
def test_a_file_suspension_stops_registration_and_trusted_calls_within_a_second(
    tmp_path: Path, unix: FakeUnix, passwords: dict[str, str], means: str,
) -> None:
    with sipd(tmp_path, unix) as daemon:
        assert register(daemon, passwords) == 200
        assert trunk_invite(daemon) == 480  # trusted: routed as acme's call
        suspend(unix, means)
        refused_within(daemon, passwords, FILE_DELAY)
        assert trunk_invite(daemon) == 407
        wait_for(lambda: f'trunk of "acme" at {PBX_IP} not trusted' in daemon.log,
                 "the log line of the distrusted trunk")
        # Others are untouched.
        assert register(daemon, passwords, "bob") == 200


@pytest.mark.slow
def test_a_pam_refusal_counts_within_account_cache_ttl(
    tmp_path: Path, unix: FakeUnix, passwords: dict[str, str],
) -> None:
    ttl = 3
    with sipd(tmp_path, unix, f"account_cache_ttl = {ttl}\n") as daemon:
        assert register(daemon, passwords) == 200
        assert trunk_invite(daemon) == 480
        suspend(unix, "pam")
        refused_within(daemon, passwords, ttl + 1.5)
        assert trunk_invite(daemon) == 407


def test_sighup_counts_at_once_both_ways(
    tmp_path: Path, unix: FakeUnix, passwords: dict[str, str],
) -> None:
    with sipd(tmp_path, unix) as daemon:
        assert register(daemon, passwords) == 200
        suspend(unix, "pam")
        # Nothing sipd watches changed: the answer kept (account_cache_ttl,
        # a minute) still counts...
        assert register(daemon, passwords) == 200
        assert trunk_invite(daemon) == 480
        daemon.proc.send_signal(signal.SIGHUP)
        # ...until SIGHUP.
        refused_within(daemon, passwords, 1.5)
        assert trunk_invite(daemon) == 407
        (unix.root / "sip-deny").write_text("")
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: register(daemon, passwords) == 200, "acme back", 1.5)
        assert trunk_invite(daemon) == 480


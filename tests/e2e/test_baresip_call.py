"""Two baresip softphones call each other through sipd, over UDP and over TCP.

sipd runs on its built-in defaults, which offer baresip (a User-Agent sipd
does not know) MD5 alone, for REGISTER (401) and for calls (407) alike:
baresip 1.0.0 gives up on any challenge with another algorithm.

bob's phone answers by itself (``answermode=auto``); alice's dials bob's
AOR, authenticates with 407, talks for a moment and hangs up. What each
phone sent and received is read from its SIP trace (``-s``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_baresip import (
    PASSWORD,
    REALM,
    STEP_TIMEOUT,
    Baresip,
    baresip_install,
    bindings_at,
    running_baresip,
    set_password,
)
from tests.sipclient import Daemon, running_sipd
from tests.unixusers import FakeUnix

BOB_PASSWORD = "bob-secret"


@pytest.fixture(scope="module")
def sipd(tmp_path_factory: pytest.TempPathFactory, unix: FakeUnix) -> Iterator[Daemon]:
    """sipd on its built-in defaults."""
    baresip_install()
    tmp = tmp_path_factory.mktemp("baresip-call-sipd")
    set_password(unix)
    p = unix.sippasswd("-r", REALM, "--stdin", "bob", input=f"{BOB_PASSWORD}\n")
    assert p.returncode == 0, p.stderr
    with running_sipd(tmp, unix=unix) as daemon:
        yield daemon
    for name in ("alice", "bob"):
        (unix[name].home / ".sr" / "usrloc").unlink(missing_ok=True)


def wait_for(phone: Baresip, pattern: str, what: str, timeout: float = STEP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not re.search(pattern, phone.log, re.MULTILINE | re.IGNORECASE):
        if phone.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen ({pattern!r})\n{phone.tail(6000)}")
        time.sleep(0.05)


def wait_bound(unix: FakeUnix, user: str, phone: Baresip) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT
    while not [b for b in bindings_at(unix, phone.port) if b.attrs.get("aor") == user] and not any(
        f":{phone.port}" in line for line in _usrloc(unix, user).splitlines()
    ):
        phone.check_alive()
        if time.monotonic() > deadline:
            raise AssertionError(f"{user} did not register:\n{phone.tail()}")
        time.sleep(0.05)


def _usrloc(unix: FakeUnix, user: str) -> str:
    path = unix[user].home / ".sr" / "usrloc"
    return path.read_text() if path.exists() else ""


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_baresip_calls_baresip(sipd: Daemon, unix: FakeUnix, tmp_path: Path, transport: str) -> None:
    with running_baresip(tmp_path, sipd.port, transport, user="bob", password=BOB_PASSWORD,
                         account_params=";answermode=auto", modules=("menu.so",)) as bob, \
         running_baresip(tmp_path, sipd.port, transport, user="alice", password=PASSWORD,
                         modules=("menu.so",)) as alice:
        wait_bound(unix, "bob", bob)
        wait_bound(unix, "alice", alice)
        alice.command(f"/dial sip:bob@{REALM}")
        # The 407 was answered and the call reached bob's phone through sipd.
        wait_for(alice, r"^SIP/2\.0 407 ", "alice's INVITE challenged")
        wait_for(bob, r"^INVITE sip:", "bob's phone got the INVITE")
        wait_for(alice, r"established", "alice's call established")
        wait_for(bob, r"established", "bob's call established")
        time.sleep(0.5)
        alice.command("/hangup")
        wait_for(bob, r"^BYE sip:", "bob's phone got the BYE")
        wait_for(alice, r"^SIP/2\.0 200 OK\s*\n(?:[^\n]+\n)*?CSeq: \d+ BYE", "the BYE answered")
        # Both phones were offered MD5 alone: bob's 401, alice's 401 and 407.
        assert set(alice.challenged_with()) == {"MD5"}, alice.tail()
        assert set(bob.challenged_with()) == {"MD5"}, bob.tail()
        assert alice.quit() == 0, alice.tail()
        assert bob.quit() == 0, bob.tail()
    assert sipd.alive(), sipd.log
    assert "Traceback" not in sipd.log, sipd.log

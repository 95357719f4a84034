"""TCP under pressure, against a real sipd: floods, keep-alives, trickles, descriptor limits.

Loopback is all of 127.0.0.0/8, so "another address" is 127.0.0.2 and up.
"""

from __future__ import annotations

import dataclasses
import re
import select
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests import sipclient
from tests.phone import REALM, Phone
from tests.sipclient import Daemon, options, running_sipd, status_of
from tests.unixusers import FakeUnix, give_passwords

#: The default of tcp_max_connections_per_source.
PER_SOURCE_CAP = 128


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("alice", "bob"))


@contextmanager
def sipd_with(tmp: Path, unix: FakeUnix, config: str = "", *,
              nofile: str | None = None) -> Iterator[Daemon]:
    """A sipd with ``config`` as its file, under ``prlimit --nofile=SOFT:HARD`` if given."""
    path = tmp / "sipd.toml"
    path.write_text(config)
    saved = sipclient.SIPD
    if nofile:
        # The wrappers skip the launcher (see FakeUnix.command): pam_wrapper
        # leaves a directory in /tmp behind a process that execs.
        argv, env = unix.command(saved, ["prlimit", f"--nofile={nofile}"])
        sipclient.SIPD = argv
        unix = dataclasses.replace(unix, env=env)
    try:
        with running_sipd(tmp, "-c", str(path), unix=unix) as daemon:
            sipclient.SIPD = saved
            yield daemon
    finally:
        sipclient.SIPD = saved
        for name in ("alice", "bob"):
            (unix[name].home / ".sr" / "usrloc").unlink(missing_ok=True)


def connect_many(stack: ExitStack, port: int, count: int, source: str) -> list[socket.socket]:
    """``count`` connections from ``source``, each closed when ``stack`` closes."""
    out = []
    for _ in range(count):
        s = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        s.settimeout(5)
        s.bind((source, 0))
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionResetError:
            # Refused so fast that the reset came before connect() read the
            # socket's error (it does, with a timeout set): one of the
            # connections sipd closes, and counted as such below.
            pass
        out.append(s)
    return out


def wait_closed(socks: list[socket.socket], expected: int, timeout: float = 10.0) -> int:
    """How many of ``socks`` (which never sent anything) the server has closed.

    Waits until ``expected`` are closed or ``timeout`` passes, then checks
    that no more close in a short grace time.
    """
    poller = select.poll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
    closed: set[int] = set()
    deadline = time.monotonic() + timeout
    grace_until: float | None = None
    while True:
        now = time.monotonic()
        if len(closed) >= expected and grace_until is None:
            grace_until = now + 0.5
        end = grace_until if grace_until is not None else deadline
        if now >= end:
            return len(closed)
        for fd, _ in poller.poll(max(1, int((end - now) * 1000))):
            poller.unregister(fd)
            closed.add(fd)


def still_served(socks: list[socket.socket]) -> int:
    """How many of ``socks`` answer an OPTIONS."""
    served = 0
    for s in socks:
        s.sendall(options("sip:127.0.0.1", via_port=s.getsockname()[1], transport="TCP"))
        data = s.recv(65536)
        if data and status_of(data) == 200:
            served += 1
    return served


def closed_within(sock: socket.socket, limit: float, *, ping_every: float = 0.2) -> float | None:
    """Seconds until the server closes ``sock`` while it sends a CRLF ping
    every ``ping_every`` s; None if it is still open after ``limit`` s."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            sock.sendall(b"\r\n\r\n")
            sock.settimeout(ping_every)
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
        if not data:
            return time.monotonic() - start
        assert data.strip(b"\r\n") == b"", data[:200]
        time.sleep(ping_every)  # the point: keep-alives at the rate a phone sends them
    return None


# --- floods ------------------------------------------------------------------------


def test_a_flood_from_one_address_leaves_room_for_phones_elsewhere(
        tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]) -> None:
    flood = 1100
    with sipd_with(tmp_path, unix) as sipd, ExitStack() as stack:
        socks = connect_many(stack, sipd.port, flood, "127.0.0.1")
        assert wait_closed(socks, flood - PER_SOURCE_CAP) == flood - PER_SOURCE_CAP
        with Phone(sipd.port, "alice", passwords["alice"], transport="tcp",
                   source="127.0.0.2") as phone:
            assert status_of(phone.register()) == 200
        # A phone at the flooding address is reset at once, and the log says why.
        # The reset may come before connect() returns (see connect_many).
        with pytest.raises((ConnectionError, OSError)):
            with Phone(sipd.port, "bob", passwords["bob"], transport="tcp") as phone:
                phone.register()
        assert still_served(socks[:5]) == 5
    assert re.search(r"refusing tcp connection from 127\.0\.0\.1: 128 open from that address "
                     r"\(tcp_max_connections_per_source\)", sipd.log), sipd.log[-2000:]


def test_the_connection_cap_holds_exactly(tmp_path: Path, unix: FakeUnix) -> None:
    """Counted when accepted: a burst cannot hold one slot more than the cap."""
    with sipd_with(tmp_path, unix, "tcp_max_connections = 20\n") as sipd, ExitStack() as stack:
        socks = connect_many(stack, sipd.port, 40, "127.0.0.1")
        assert wait_closed(socks, 20) == 20
        open_ = [s for s in socks if _not_closed(s)]
        assert len(open_) == 20
        assert still_served(open_) == 20
    assert "tcp_max_connections" in sipd.log


def _not_closed(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except OSError:  # reset, or never connected (reset during connect())
        return False
    finally:
        s.setblocking(True)


def test_a_low_open_file_limit_lowers_the_cap_and_lookups_keep_working(
        tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]) -> None:
    """A service manager's hard limit of 512 descriptors, and 600 connections.

    The cap drops to 512 - 256 and the descriptors kept back serve the homes
    and NSS: a registration still reads ~/.sr/passwd and is saved.
    """
    flood, cap = 600, 256
    with sipd_with(tmp_path, unix, nofile="512:512") as sipd, ExitStack() as stack:
        socks: list[socket.socket] = []
        for i in range(6):
            socks += connect_many(stack, sipd.port, flood // 6, f"127.0.0.{i + 2}")
        assert wait_closed(socks, flood - cap) == flood - cap
        with Phone(sipd.port, "alice", passwords["alice"]) as phone:
            assert status_of(phone.register()) == 200
        assert (unix["alice"].home / ".sr" / "usrloc").exists()
    log = sipd.log
    assert "tcp_max_connections lowered from 1024 to 256" in log, log
    assert "open-file limit is 512" in log
    assert "accept failed" not in log and "auth failed" not in log, log


def test_the_open_file_limit_is_raised_to_the_hard_limit(tmp_path: Path, unix: FakeUnix) -> None:
    with sipd_with(tmp_path, unix, nofile="600:4096") as sipd:
        pid = sipd.proc.pid
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert re.search(r"Max open files\s+4096\s+4096", limits), limits
    assert "open-file limit raised from 600 to 4096" in sipd.log
    assert "lowered" not in sipd.log


# --- keep-alives ---------------------------------------------------------------------


@pytest.mark.slow
def test_keepalives_keep_only_connections_that_carry_a_registration(
        tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]) -> None:
    config = "tcp_unregistered_idle_timeout = 1\ntcp_idle_timeout = 60\n"
    with sipd_with(tmp_path, unix, config) as sipd, ExitStack() as stack:
        phone = stack.enter_context(Phone(sipd.port, "alice", passwords["alice"],
                                          transport="tcp", source="127.0.0.2"))
        assert status_of(phone.register()) == 200

        # Nothing but pings: closed after the short idle time, pings or not.
        # (The bound above is loose for loaded machines: what matters is
        # that the 1 s rule closed it, not the 60 s one.)
        idle = connect_many(stack, sipd.port, 1, "127.0.0.3")[0]
        took = closed_within(idle, limit=15.0)
        assert took is not None and 0.9 <= took <= 10, took

        # A SIP message counts; the pings after it do not.
        chatty = connect_many(stack, sipd.port, 1, "127.0.0.4")[0]
        chatty.sendall(options("sip:127.0.0.1", via_host="127.0.0.4",
                               via_port=chatty.getsockname()[1], transport="TCP"))
        assert status_of(chatty.recv(65536)) == 200
        took = closed_within(chatty, limit=15.0)
        assert took is not None and 0.9 <= took <= 10, took

        # The registered phone lived through the same pings, and is served.
        assert closed_within(phone.sock, limit=1.0) is None
        phone.sock.settimeout(5)
        phone.sock.sendall(options(f"sip:{REALM}", via_host="127.0.0.2", via_port=phone.port,
                                   transport="TCP"))
        assert status_of(phone.recv_message()) == 200
    assert "no registration" in sipd.log


# --- unfinished messages -----------------------------------------------------------------


@pytest.mark.slow
def test_an_unfinished_message_has_a_deadline_from_its_first_byte(
        tmp_path: Path, unix: FakeUnix) -> None:
    """One header line every 0.25 s never resets tcp_message_timeout."""
    timeout = 2.0
    with sipd_with(tmp_path, unix, f"tcp_message_timeout = {timeout}\n") as sipd, \
            socket.create_connection(("127.0.0.1", sipd.port), timeout=5) as c:
        lines = options("sip:127.0.0.1", via_port=c.getsockname()[1], transport="TCP").split(b"\r\n")
        start = time.monotonic()
        c.sendall(lines[0] + b"\r\n")
        took = None
        n = 0
        while time.monotonic() - start < 3 * timeout:
            try:
                c.sendall(f"X-Trickle-{n}: {'x' * 20}\r\n".encode())
                c.settimeout(0.25)
                if c.recv(65536) == b"":
                    took = time.monotonic() - start
                    break
            except TimeoutError:
                n += 1
            except (ConnectionResetError, BrokenPipeError):
                took = time.monotonic() - start
                break
        assert took is not None, "still open while the message trickles in"
        assert timeout - 0.1 <= took <= timeout + 1.0, took
        assert n >= 5
    assert "an unfinished message" in sipd.log

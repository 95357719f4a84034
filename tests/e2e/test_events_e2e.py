"""/run/sr/events and /run/sr/<user>/events on a running sipd, read by real tools.

``tail -f`` and ``cat``, as root and as the user, see registrations,
unregistrations, expiry, a call between sipp phones and authentication
failures as they happen; signals end a waiting read at once; a reader
that stops while thousands of events pass slows nothing down, costs no
memory beyond the ring, and is told what it lost.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests import default_signals
from tests.e2e.test_proxy_e2e import REALM, Calls, _calls, ok
from tests.phone import Phone
from tests.sipclient import Daemon, running_sipd, status_of, stop_process, wait_for
from tests.unixusers import FakeUnix, FakeUser, UserSpec, fake_unix, give_passwords

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0,
    reason="needs /dev/fuse and root to mount the state filesystem",
)

USERS = (
    UserSpec("alice", groups=("sip",)),
    UserSpec("bob", primary="sip"),
    UserSpec("carol", groups=("sip",)),
)

#: How long a line may take to reach a reader that waits in read(2) (cat).
PROMPT = 1.0
#: tail -f looks at the file's size once a second (FUSE is a remote
#: filesystem to it, so it polls instead of using inotify).
TAIL_PROMPT = PROMPT + 1.0


@pytest.fixture(scope="module")
def unix() -> Iterator[FakeUnix]:
    with fake_unix(USERS) as u:
        yield u


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("alice", "bob", "carol"))


@pytest.fixture
def sipd(tmp_path: Path, unix: FakeUnix, passwords: dict[str, str], mnt: Path) -> Iterator[Calls]:
    # Failures from loopback are never throttled: a flood of them is the test.
    config = (f'mount = "{mnt}"\nmount_enabled = true\nmin_expires = 1\n'
              'trusted_networks = ["127.0.0.0/8"]\n')
    with _calls(tmp_path, unix, passwords, config, mount=True) as calls:
        wait_for((mnt / "alice").exists, "the mount")
        yield calls


def as_user(user: FakeUser, argv: Sequence[str]) -> list[str]:
    return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--",
            *argv]


class Reader:
    """A process reading an events file, and each line it printed with when it came."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, preexec_fn=default_signals)
        self.lines: list[tuple[float, str]] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip("\n")))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def text(self) -> str:
        with self._changed:
            return "\n".join(line for _, line in self.lines)

    def wait_line(self, pattern: str, timeout: float = 10.0, start: int = 0) -> tuple[float, str]:
        """The first line from index ``start`` matching ``pattern``: (when it came, line)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for when, line in self.lines[start:]:
                    if re.search(pattern, line):
                        return when, line
                left = deadline - time.monotonic()
                assert left > 0, f"no line matching {pattern!r}; got:\n{self.text()}"
                self._changed.wait(min(left, 0.2))

    def stop(self) -> None:
        stop_process(self.proc)
        self._thread.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def readers() -> Iterator[list[Reader]]:
    """Readers started by a test; every one is stopped after it, whatever happened."""
    started: list[Reader] = []
    yield started
    for reader in started:
        reader.stop()


def read_as(readers: list[Reader], argv: Sequence[str]) -> Reader:
    reader = Reader(argv)
    readers.append(reader)
    return reader


def waiting_in_read(pid: int) -> bool:
    """Whether ``pid`` sleeps in a FUSE request (its read of an events file)."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text() in (
            "request_wait_answer", "fuse_request_send", "__fuse_simple_request")
    except OSError:
        return False


def test_root_and_user_follow_registrations_and_failures(
    sipd: Calls, unix: FakeUnix, passwords: dict[str, str], mnt: Path, readers: list[Reader]
) -> None:
    port = sipd.daemon.port
    root_tail = read_as(readers, ["tail", "-f", str(mnt / "events")])
    root_cat = read_as(readers, ["cat", str(mnt / "events")])
    alice = unix["alice"]
    own_tail = read_as(readers, as_user(alice, ["tail", "-f", str(mnt / "alice" / "events")]))
    for reader in (root_tail, root_cat, own_tail):
        reader.wait_line(r"^\S+Z start$")  # what is kept: a new stream's first line

    with Phone(port, "alice", passwords["alice"]) as phone:
        t = time.monotonic()
        assert status_of(phone.register(expires=600)) == 200
        contact = f"contact=sip:alice@127.0.0.1:{phone.port};transport=udp"
        for reader, limit in ((root_cat, PROMPT), (root_tail, TAIL_PROMPT),
                              (own_tail, TAIL_PROMPT)):
            when, line = reader.wait_line(rf" register user=alice aor=alice {re.escape(contact)} "
                                          rf"expires=600 received=udp:127\.0\.0\.1:{phone.port}")
            assert when - t < limit, line
        t = time.monotonic()
        assert status_of(phone.register(expires=0)) == 200
        for reader, limit in ((root_cat, PROMPT), (root_tail, TAIL_PROMPT),
                              (own_tail, TAIL_PROMPT)):
            when, line = reader.wait_line(rf" unregister user=alice .*{re.escape(contact)} "
                                          r"reason=request$")
            assert when - t < limit, line
        assert status_of(phone.register(expires=1)) == 200
        expiry = time.monotonic() + 1
        for reader, limit in ((root_cat, PROMPT), (root_tail, TAIL_PROMPT),
                              (own_tail, TAIL_PROMPT)):
            when, line = reader.wait_line(rf" expire user=alice aor=alice {re.escape(contact)}$")
            assert when - expiry < limit, line

    with Phone(port, "alice", "not-the-password") as intruder:
        t = time.monotonic()
        assert status_of(intruder.register()) == 401
        for reader, limit in ((root_cat, PROMPT), (root_tail, TAIL_PROMPT)):
            when, line = reader.wait_line(
                rf' auth-fail user=alice source=udp:127\.0\.0\.1:{intruder.port} method=REGISTER '
                r'reason="wrong password"$')
            assert when - t < limit, line
    # A failure names a user anybody can type: only root hears of it.
    assert "auth-fail" not in own_tail.text()
    # Each line once, in order, the same for every reader of a stream.
    assert root_tail.text() == root_cat.text()
    assert [line.split()[1] for _, line in own_tail.lines] == [
        "start", "register", "unregister", "register", "expire"]


@pytest.mark.sipp
def test_a_call_shows_in_both_parties_files(sipd: Calls, unix: FakeUnix, mnt: Path,
                                            readers: list[Reader]) -> None:
    root = read_as(readers, ["cat", str(mnt / "events")])
    mine = read_as(readers, as_user(unix["alice"], ["tail", "-f", str(mnt / "alice" / "events")]))
    theirs = read_as(readers, as_user(unix["bob"], ["cat", str(mnt / "bob" / "events")]))
    for reader in (root, mine, theirs):
        reader.wait_line(r"^\S+Z start$")
    bob = sipd.uas("uas_answer.xml", "bob")
    theirs.wait_line(" register user=bob ")
    ok(sipd.call("uac_answer.xml", "bob"), "caller", sipd)
    done = time.monotonic()
    assert sipd.finished(bob) == 0
    leg = r" user={} call-id=(\S+) direction={} peer=\S+"
    for reader, user, direction, limit in ((mine, "alice", "out", TAIL_PROMPT),
                                           (theirs, "bob", "in", PROMPT)):
        _, start = reader.wait_line(" call-start" + leg.format(user, direction) + "$")
        call_id = start.split()[3]
        reader.wait_line(f" call-answer user={user} {re.escape(call_id)} ")
        when, end = reader.wait_line(f" call-end user={user} {re.escape(call_id)} direction="
                                     rf"{direction} peer=\S+ duration=\d+ reason=bye$")
        assert when - done < limit, end
    for user in ("alice", "bob"):
        for name in ("call-start", "call-answer", "call-end"):
            root.wait_line(f" {name} user={user} ")
    # Each sees only their own leg.
    assert "user=bob" not in mine.text() and "user=alice" not in theirs.text()


def test_a_user_reads_only_their_own_events(sipd: Calls, unix: FakeUnix, mnt: Path) -> None:
    for path in (mnt / "bob" / "events", mnt / "events"):
        r = subprocess.run(as_user(unix["alice"], ["cat", str(path)]), capture_output=True,
                           text=True, timeout=10)
        assert r.returncode != 0 and "Permission denied" in r.stderr, (path, r)
    st = (mnt / "alice" / "events").stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o400, unix["alice"].uid)
    st = (mnt / "events").stat()
    assert (st.st_mode & 0o777, st.st_uid) == (0o400, 0)


def test_several_readers_each_get_every_event(sipd: Calls, passwords: dict[str, str], mnt: Path,
                                              readers: list[Reader]) -> None:
    cats = [read_as(readers, ["cat", str(mnt / "events")]) for _ in range(5)]
    for cat in cats:
        cat.wait_line(r"^\S+Z start$")
    with Phone(sipd.daemon.port, "alice", passwords["alice"]) as phone:
        for _ in range(3):
            assert status_of(phone.register()) == 200
            assert status_of(phone.register(expires=0)) == 200
    for cat in cats:
        cat.wait_line(" unregister .*", start=5)
        wait_for(lambda cat=cat: cat.text().count(" unregister ") == 3, "every unregister")
        assert cat.text() == cats[0].text()
        assert cat.text().count(" register ") == 3


def test_ctrl_c_ends_a_waiting_read_at_once(sipd: Calls, unix: FakeUnix, mnt: Path,
                                            readers: list[Reader]) -> None:
    """pyfuse3 does not act on FUSE_INTERRUPT: sipd must notice the signal itself."""
    alice = unix["alice"]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        cat = read_as(readers, as_user(alice, ["cat", str(mnt / "alice" / "events")]))
        cat.wait_line(r"^\S+Z start$")
        wait_for(lambda cat=cat: waiting_in_read(cat.proc.pid), "cat to wait in read(2)")
        t = time.monotonic()
        cat.proc.send_signal(sig)
        assert cat.proc.wait(5) == -sig
        assert time.monotonic() - t < PROMPT, sig
    # Python's Ctrl-C: a handled signal ends the read with EINTR, and the
    # handler raises KeyboardInterrupt.
    code = (f"import sys\nf = open({str(mnt / 'events')!r})\nprint(f.readline(), flush=True)\n"
            "try:\n    f.readline()\nexcept KeyboardInterrupt:\n    print('interrupted', flush=True)\n")
    py = read_as(readers, [unix.python, "-c", code])
    py.wait_line(r"^\S+Z start$")
    wait_for(lambda: waiting_in_read(py.proc.pid), "python to wait in read(2)")
    t = time.monotonic()
    py.proc.send_signal(signal.SIGINT)
    py.wait_line("^interrupted$", timeout=PROMPT)
    assert py.proc.wait(5) == 0 and time.monotonic() - t < PROMPT
    # Every one of those opens was released: alice may open her limit again.
    ok_ = subprocess.run(as_user(alice, ["bash", "-c", _open_many(mnt / "alice" / "events", 8)]),
                         capture_output=True, text=True, timeout=10)
    assert ok_.returncode == 0, ok_.stderr


def _open_many(path: Path, n: int) -> str:
    """bash that holds ``n`` descriptors of ``path`` open at once."""
    return " && ".join(f"exec {{fd{i}}}<{path}" for i in range(n))


def test_open_event_files_are_limited_per_user(sipd: Calls, unix: FakeUnix, mnt: Path) -> None:
    path = mnt / "alice" / "events"
    r = subprocess.run(as_user(unix["alice"], ["bash", "-c", _open_many(path, 9)]),
                       capture_output=True, text=True, timeout=10)
    assert r.returncode != 0 and "Device or resource busy" in r.stderr, r
    # Root's own allowance is apart from the users'.
    r = subprocess.run(["bash", "-c", _open_many(mnt / "events", 16)], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 0, r.stderr


def test_poll_and_select_say_when_a_line_is_there(sipd: Calls, unix: FakeUnix,
                                                   passwords: dict[str, str], mnt: Path,
                                                   readers: list[Reader]) -> None:
    code = f"""
import os, select, sys
fd = os.open({str(mnt / 'events')!r}, os.O_RDONLY)
while select.select([fd], [], [], 0.2)[0]:
    os.read(fd, 65536)
print("drained", flush=True)
ready, _, _ = select.select([fd], [], [], 10)
print("ready" if ready else "timeout", os.read(fd, 65536).decode().split()[1], flush=True)
p = select.poll()
p.register(fd, select.POLLIN)
print("poll", p.poll(200), flush=True)
nb = os.open({str(mnt / 'events')!r}, os.O_RDONLY | os.O_NONBLOCK)
while True:
    try:
        os.read(nb, 65536)
    except BlockingIOError:
        print("EAGAIN", flush=True)
        break
"""
    py = read_as(readers, [unix.python, "-c", code])
    py.wait_line("^drained$")
    with Phone(sipd.daemon.port, "alice", passwords["alice"]) as phone:
        t = time.monotonic()
        assert status_of(phone.register()) == 200
    when, _ = py.wait_line("^ready register$")
    assert when - t < PROMPT
    py.wait_line(r"^poll \[\]$")
    py.wait_line("^EAGAIN$")


def _flood(daemon: Daemon, contacts: Path, events: int) -> None:
    """``events`` registrations and removals of static contacts, written to ``contacts``.

    Ten contacts added in one write, then removed by the next: twenty
    events, no SIP transactions to hold memory of their own. After every
    thousand events SIP must answer an OPTIONS at once.
    """
    lines = "".join(f"sip:pbx{i}@198.51.100.{i + 1}:5060\n" for i in range(10))
    for n in range(events // 20):
        with open(contacts, "a") as f:
            f.write(lines)
        with open(contacts, "w"):
            pass
        if n % 50 == 49:
            t = time.monotonic()
            assert daemon.ping() == 200
            assert time.monotonic() - t < 0.5


def _rss_kib(pid: int) -> int:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert m
    return int(m.group(1))


def test_a_stopped_reader_slows_nothing_and_is_told_what_it_lost(
    sipd: Calls, mnt: Path, readers: list[Reader]
) -> None:
    port, pid = sipd.daemon.port, sipd.daemon.proc.pid
    stopped = read_as(readers, ["cat", str(mnt / "events")])
    stopped.wait_line(r"^\S+Z start$")
    # A reader that opens and never reads.
    idle = os.open(mnt / "events", os.O_RDONLY)
    try:
        counter = read_as(readers, ["cat", str(mnt / "events")])
        wait_for(lambda: waiting_in_read(stopped.proc.pid), "cat to wait in read(2)")
        stopped.proc.send_signal(signal.SIGSTOP)
        contacts = mnt / "alice" / "contacts"
        _flood(sipd.daemon, contacts, 5000)  # the ring is full from here on
        counter.wait_line(" unregister user=alice aor=alice contact=sip:pbx9@", start=4900)
        rss = _rss_kib(pid)
        _flood(sipd.daemon, contacts, 10000)
        counter.wait_line(" unregister user=alice aor=alice contact=sip:pbx9@", start=14900)
        # The ring holds what memory there is: 10,000 more lines cost nothing.
        assert _rss_kib(pid) - rss < 8 * 1024, (rss, _rss_kib(pid))
        stopped.proc.send_signal(signal.SIGCONT)
        _, lost = stopped.wait_line(r" lost events=\d+$")
        count = int(lost.rsplit("=", 1)[1])
        index = [line for _, line in stopped.lines].index(lost)
        kept = len(stopped.lines) - index - 1
        assert count > 10000 and kept <= 4096
        # And it goes on: the oldest line kept, then new ones as they come.
        with Phone(port, "alice", "wrong") as phone:
            phone.register()
        stopped.wait_line(" auth-fail user=alice ", start=index)
        # The reader that never read: the start of the stream is long gone.
        assert b" lost events=" in os.read(idle, 1 << 16).split(b"\n", 1)[0]
    finally:
        os.close(idle)
    assert "Traceback" not in sipd.daemon.log


def test_readers_get_end_of_file_when_sipd_stops(tmp_path: Path, unix: FakeUnix, mnt: Path,
                                                 readers: list[Reader]) -> None:
    conf = tmp_path / "fs.toml"
    conf.write_text(f'mount_enabled = true\nmount = "{mnt}"\n')
    with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True) as daemon:
        wait_for((mnt / "alice").exists, "the mount")
        cat = read_as(readers, ["cat", str(mnt / "events")])
        cat.wait_line(r"^\S+Z start$")
        wait_for(lambda: waiting_in_read(cat.proc.pid), "cat to wait in read(2)")
        t = time.monotonic()
        assert daemon.stop() == 0
        # End of file, and the close that follows still reaches sipd.
        assert cat.proc.wait(5) == 0
        assert time.monotonic() - t < 5

"""What a real sipd logs at its default level, and how it writes it for journald.

At info the log has one line per registration, unregistration and expiry,
per call start, answer and end, and per refused write to ``/run/sr``, and
nothing else for the quiet life of a phone. Under systemd every line
carries its ``<N>`` priority and no time of its own.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_proxy_e2e import Calls, ok
from tests.e2e.test_register_e2e import REALM, Phone
from tests.sipclient import Daemon, free_port, log_path, running_sipd, status_of, wait_for
from tests.unixusers import FakeUnix, give_passwords

#: sipd's record outside systemd: time, logger, level.
STAMPED = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<logger>[a-z][a-z0-9_.]*): "
                     r"(?P<level>[A-Z]+): (?P<message>.*)")
#: The same record for journald: sd-daemon(3) priority, no time.
JOURNAL = re.compile(r"<(?P<priority>[0-7])>(?P<logger>[a-z][a-z0-9_.]*): "
                     r"(?P<level>[A-Z]+): (?P<message>.*)")

needs_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0,
    reason="needs /dev/fuse and root to mount the state filesystem",
)


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("alice", "bob"))


@pytest.fixture(autouse=True)
def clean_homes(unix: FakeUnix) -> Iterator[None]:
    yield
    for name in ("alice", "bob"):
        for leftover in ("usrloc", "config", "acc"):
            (unix[name].home / ".sr" / leftover).unlink(missing_ok=True)


def serving(log: str) -> list[tuple[str, str, str]]:
    """(logger, level, message) of each record between "ready" and the stop signal,
    but for the line that ends the start's password check, which comes once
    sipd serves."""
    records = []
    for line in log.splitlines():
        m = STAMPED.fullmatch(line)
        assert m, f"not one record per line: {line!r}"
        if not m["message"].startswith("checked the passwords of "):
            records.append((m["logger"], m["level"], m["message"]))
    start = next(i for i, r in enumerate(records) if r[2].startswith("sipd ready"))
    end = next((i for i, r in enumerate(records) if r[2].endswith("shutting down")), len(records))
    return records[start + 1:end]


def stopped_log(daemon: Daemon) -> str:
    """The whole log, once the daemon has stopped (nothing more can come)."""
    assert daemon.stop() == 0
    return daemon.log


def test_registration_expiry_and_unregistration_are_one_line_each(
        tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]) -> None:
    conf = tmp_path / "sipd.toml"
    conf.write_text("min_expires = 1\n")
    with running_sipd(tmp_path, "-c", str(conf), unix=unix) as daemon:
        phone = Phone(daemon, "alice", passwords["alice"])
        try:
            assert status_of(phone.register(expires=600)) == 200
            # A refresh is a phone's normal life: not worth a line.
            assert status_of(phone.register(expires=600)) == 200
            assert status_of(phone.register(expires=0)) == 200
            assert status_of(phone.register(expires=1)) == 200
        finally:
            phone.close()
        wait_for(lambda: "registration expired" in daemon.log, "the expiry")
        log = stopped_log(daemon)
    contact = f'"sip:alice@127.0.0.1:{phone.conn.port};transport=udp"'
    assert serving(log) == [
        ("sipd.registrar", "INFO",
         f"registered: aor \"alice\" contact {contact} from udp:127.0.0.1:{phone.conn.port} "
         "for 600 s"),
        ("sipd.registrar", "INFO", f'unregistered: aor "alice" contact {contact}'),
        ("sipd.registrar", "INFO",
         f"registered: aor \"alice\" contact {contact} from udp:127.0.0.1:{phone.conn.port} "
         "for 1 s"),
        ("sipd.registrar", "INFO", f'registration expired: aor "alice" contact {contact}'),
    ], log


@pytest.mark.sipp
def test_a_call_is_three_lines(tmp_path: Path, unix: FakeUnix,
                               passwords: dict[str, str]) -> None:
    if shutil.which("sipp") is None:
        pytest.fail("sipp is not installed: run 'make setup' (Debian package sip-tester)")
    with running_sipd(tmp_path, unix=unix) as daemon:
        calls = Calls(daemon, unix, passwords, tmp_path)
        try:
            bob = calls.uas("uas_answer.xml", "bob")
            time.sleep(0.3)
            ok(calls.call("uac_answer.xml", "bob"), "caller", calls)
            assert calls.finished(bob) == 0, "the callee did not see ACK and BYE"
        finally:
            calls.stop_all()
        log = stopped_log(daemon)
    records = serving(log)
    assert [r[0] for r in records] == ["sipd.registrar"] + ["sipd.calltrack"] * 3, log
    assert records[0][2].startswith('registered: aor "bob" contact "sip:')
    lines = [r[2] for r in records[1:]]
    parties = f'"sip:alice@{REALM}" to "sip:bob@{REALM}", call-id "'
    assert [line.split(": ", 1)[0] for line in lines] == ["call started", "call answered",
                                                         "call ended"], lines
    assert all(line.split(": ", 1)[1].startswith(parties) for line in lines), lines
    assert len({re.search(r'call-id ("[^"]*")', line)[1] for line in lines}) == 1  # type: ignore[index]
    assert re.search(r', \d+ s, bye$', lines[2]), lines[2]


def sh(cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30)


@needs_fuse
def test_each_refused_write_to_the_tree_is_one_line_with_its_reason(
        tmp_path: Path, unix: FakeUnix, mnt: Path) -> None:
    conf = tmp_path / "sipd.toml"
    conf.write_text(f'mount = "{mnt}"\nmax_contacts = 1\n')
    with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True) as daemon:
        wait_for(lambda: (mnt / "alice").exists(), "the mount")
        # The tree answers a moment before sipd is ready (privileges are
        # given up after the mount); serving() reads what follows "ready".
        wait_for(lambda: "sipd ready" in daemon.log, "sipd to be ready")
        contacts = mnt / "alice" / "contacts"
        refused = {
            "EINVAL": f"echo 'not a contact' >> {contacts}",
            "EACCES": f"echo 'sip:pbx@198.51.100.7 aor=bob' >> {contacts}",
            "EDQUOT": f"printf 'sip:a@198.51.100.7\\nsip:b@198.51.100.8\\n' | tee {contacts}",
            "EINVAL dnd": f"echo maybe > {mnt}/alice/config/dnd",
            "EACCES status": f"echo 1 > {mnt}/status",
        }
        for what, cmd in refused.items():
            assert sh(cmd).returncode != 0, what
        # One that is taken: its line says what changed.
        assert sh(f"echo 'sip:pbx@198.51.100.7' >> {contacts}").returncode == 0
        log = stopped_log(daemon)
    lines = [r for r in serving(log) if r[0] != "srfs.fuse"]
    shown = f'"{contacts}"'
    assert lines == [
        ("sipd.statefs", "INFO", f"write to {shown} refused (EINVAL): line 1: not a sip: or "
                                 "sips: contact URI: 'not'"),
        ("sipd.statefs", "INFO", f"write to {shown} refused (EACCES): line 1: alice does not "
                                 "own AOR 'bob'"),
        ("sipd.statefs", "INFO", f"write to {shown} refused (EDQUOT): AOR 'alice' would have 2 "
                                 "contacts; max_contacts is 1"),
        ("sipd.statefs", "INFO", f'write to "{mnt}/alice/config/dnd" refused (EINVAL): dnd: '
                                 "expected yes or no, not 'maybe'"),
        ("sipd.statefs", "INFO", f'write to "{mnt}/status" refused (EACCES): /status is '
                                 "read-only"),
        ("sipd.registrar", "INFO", 'contact added: aor "alice" contact "sip:pbx@198.51.100.7" '
                                   "static"),
    ], log


def journal_run(tmp_path: Path, unix: FakeUnix, password: str,
                stream: str | None) -> list[str]:
    """The log lines of a sipd whose JOURNAL_STREAM is ``stream`` (None: its log file's)."""
    port = free_port()
    log = log_path(tmp_path, port)
    log.touch()
    st = log.stat()
    env = {"JOURNAL_STREAM": stream if stream is not None else f"{st.st_dev}:{st.st_ino}"}
    with running_sipd(tmp_path, unix=unix, port=port, extra_env=env) as daemon:
        phone = Phone(daemon, "alice", password)
        try:
            assert status_of(phone.register(password="wrong")) == 401
            assert status_of(phone.register()) == 200
        finally:
            phone.close()
        return stopped_log(daemon).splitlines()


def test_under_journald_each_line_has_its_priority_and_no_time(
        tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]) -> None:
    lines = journal_run(tmp_path, unix, passwords["alice"], None)
    records = []
    for line in lines:
        m = JOURNAL.fullmatch(line)
        assert m, f"not a journal record: {line!r}"
        records.append((int(m["priority"]), m["logger"], m["level"], m["message"]))
    assert {(p, level) for p, _, level, _ in records} <= {(6, "INFO"), (4, "WARNING")}
    failed = [r for r in records if r[3].startswith("auth failed: ")]
    assert [(p, logger) for p, logger, _, _ in failed] == [(4, "sipd.auth")], lines
    registered = [r for r in records if r[3].startswith("registered: ")]
    assert [(p, logger) for p, logger, _, _ in registered] == [(6, "sipd.registrar")], lines


def test_a_journal_stream_that_is_not_standard_error_is_ignored(
        tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]) -> None:
    # Inherited by a process whose standard error went elsewhere: the
    # variable names another stream, and lines keep their time.
    lines = journal_run(tmp_path, unix, passwords["alice"], "1:1")
    assert lines and all(STAMPED.fullmatch(line) for line in lines), lines


@needs_fuse
@pytest.mark.parametrize(("flag", "libraries"), [("-v", False), ("-vv", True)])
def test_library_debug_messages_need_a_second_v(tmp_path: Path, unix: FakeUnix, mnt: Path,
                                                flag: str, libraries: bool) -> None:
    conf = tmp_path / "sipd.toml"
    conf.write_text(f'mount = "{mnt}"\n')
    with running_sipd(tmp_path, "-c", str(conf), flag, unix=unix, mount=True) as daemon:
        wait_for(lambda: (mnt / "alice").exists(), "the mount")
        # A lookup of a node that is not there: sipd's own debug line.
        assert not (mnt / "nobody").exists()
        log = stopped_log(daemon)
    records = [(m["logger"], m["level"]) for line in log.splitlines()
               if (m := STAMPED.fullmatch(line))]
    assert ("srfs.fuse", "DEBUG") in records, log
    assert any(logger == "pyfuse3" for logger, _ in records) == libraries, log

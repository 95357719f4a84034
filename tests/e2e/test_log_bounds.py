"""The log stays readable and bounded: one line per record, outside values escaped,
a file of a million bad lines a few lines.

The escaping is tested on the formatter and helpers directly and then on a
real sipd, whose log is what fail2ban and people read.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipd.cli import setup_logging
from srfs.logtext import (
    OWN_LOGGERS,
    JournalFormatter,
    LineFormatter,
    Recurring,
    Tally,
    escape,
    log_problems,
    quote,
)
from tests.sipclient import (
    Daemon,
    TcpClient,
    UdpClient,
    options,
    running_sipd,
    status_of,
    tcp_refused,
    wait_for,
)
from tests.unixusers import FakeUnix

#: Every character class the log must never carry raw.
HOSTILE = "a\x00b\x01c\x7fd\x1be\x85f\u2028g\u2029h\u202ei\tj"
RAW = ("\x00", "\x01", "\x7f", "\x1b", "\x85", "\u2028", "\u2029", "\u202e", "\t")
ESCAPED = ("\\x00", "\\x01", "\\x7f", "\\x1b", "\\x85", "\\u2028", "\\u2029", "\\u202e", "\\x09")
#: The start of a record as sipd writes it outside systemd.
RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [a-z][a-z.]*: [A-Z]+: ")


# ------------------------------------------------------------------ helpers


def test_escape_leaves_printable_text_alone_and_escapes_the_rest() -> None:
    assert escape('user "jan" from 203.0.113.5 \\ ü €') == 'user "jan" from 203.0.113.5 \\ ü €'
    out = escape(HOSTILE)
    assert out.isprintable()
    for raw, esc in zip(RAW, ESCAPED, strict=True):
        assert raw not in out and esc in out
    # Bytes that were not UTF-8 (surrogateescape) and characters beyond the BMP.
    assert escape("x\udcff\U000e0001") == "x\\udcff\\U000e0001"
    assert escape("line one\nline two\r\n") == "line one\\x0aline two\\x0d\\x0a"


def test_quote_keeps_a_value_inside_its_field() -> None:
    assert quote("jan") == '"jan"'
    crafted = 'jan" from 1.2.3.4 port 5060 (REGISTER): wrong password\n'
    out = quote(crafted)
    # The only double quotes are the two around the value: no pattern of
    # the "[^"]*" kind can end the field early or start another.
    assert out.count('"') == 2 and out.startswith('"') and out.endswith('"')
    assert re.fullmatch(r'"[^"]*"', out)
    assert out == '"jan\\x22 from 1.2.3.4 port 5060 (REGISTER): wrong password\\x0a"'
    assert quote("a\\x22") == '"a\\\\x22"'  # a backslash of the value cannot fake an escape
    assert quote("x" * 200, limit=8) == '"xxxxxxxx"...'
    assert quote(HOSTILE).isprintable()


def _record(msg: str, *args: object, exc: bool = False) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LineFormatter("%(name)s: %(levelname)s: %(message)s"))
    logger = logging.getLogger("test.logbounds")
    logger.propagate = False
    logger.handlers[:] = [handler]
    try:
        if exc:
            try:
                raise ValueError("bad value\nsipd.auth: WARNING: auth failed: forged")
            except ValueError:
                logger.exception(msg, *args)
        else:
            logger.warning(msg, *args)
    finally:
        logger.handlers.clear()
    return stream.getvalue()


def test_formatter_makes_every_record_one_line() -> None:
    out = _record("request %s from %s", "sip:" + HOSTILE + "\nsipd.auth: WARNING: forged", "peer")
    assert out.count("\n") == 1 and out.endswith("\n")
    assert out.startswith("test.logbounds: WARNING: request sip:a\\x00b")
    assert "\\x0asipd.auth: WARNING: forged" in out
    for raw in RAW:
        assert raw not in out


def test_formatter_keeps_a_logged_traceback_but_marks_its_lines() -> None:
    out = _record("handler %s failed", "x\ny", exc=True)
    lines = out.rstrip("\n").split("\n")
    assert lines[0] == "test.logbounds: ERROR: handler x\\x0ay failed"
    assert len(lines) > 3
    # Every further line is a continuation, the exception's own text included.
    assert all(line.startswith("| ") for line in lines[1:])
    assert "| Traceback (most recent call last):" in lines
    assert "| sipd.auth: WARNING: auth failed: forged" in lines


def test_journal_records_carry_their_priority_on_every_line() -> None:
    fmt = JournalFormatter("%(name)s: %(levelname)s: %(message)s")
    for level, priority in ((logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4),
                            (logging.ERROR, 3), (logging.CRITICAL, 2)):
        record = logging.LogRecord("sipd.x", level, __file__, 1, "a %s", ("b\nc",), None)
        assert fmt.format(record) == f"<{priority}>sipd.x: {logging.getLevelName(level)}: a b\\x0ac"
    try:
        raise ValueError("one\ntwo")
    except ValueError:
        record = logging.LogRecord("sipd.x", logging.ERROR, __file__, 1, "failed", (),
                                   sys.exc_info())
    lines = fmt.format(record).split("\n")
    # A line without the prefix would be an info entry of its own in the journal.
    assert lines[0] == "<3>sipd.x: ERROR: failed"
    assert all(line.startswith("<3>| ") for line in lines[1:]) and lines[-1] == "<3>| two"


def test_a_traceback_another_handler_formatted_first_is_still_marked() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), None)
    try:
        raise ValueError("one\ntwo")
    except ValueError:
        record.exc_info = sys.exc_info()
    logging.Formatter().format(record)  # caches the plain traceback on the record
    out = LineFormatter("%(message)s").format(record)
    assert all(line.startswith("| ") for line in out.split("\n")[1:])
    assert out.endswith("| two")


def test_setup_logging_installs_the_formatter() -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    own = {name: logging.getLogger(name).level for name in OWN_LOGGERS}
    try:
        setup_logging("info")
        assert isinstance(root.handlers[0].formatter, LineFormatter)
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
        for name, own_level in own.items():
            logging.getLogger(name).setLevel(own_level)


def test_log_problems_logs_a_few_and_counts_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.problems")
    with caplog.at_level(logging.WARNING, logger="test.problems"):
        log_problems(logger, "jan's ~/.sr/config", (f"line {n}: bad" for n in range(1, 500_001)))
    assert [r.getMessage() for r in caplog.records] == [
        "jan's ~/.sr/config: line 1: bad",
        "jan's ~/.sr/config: line 2: bad",
        "jan's ~/.sr/config: line 3: bad",
        "jan's ~/.sr/config: 499997 more problem(s) not logged, 500000 in all",
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="test.problems"):
        log_problems(logger, "f", ["one", "two"], total=40)
        log_problems(logger, "g", ["one", "two"])
    assert [r.getMessage() for r in caplog.records] == [
        "f: one", "f: two", "f: 37 more problem(s) not logged, 40 in all", "g: one", "g: two",
    ]


def test_recurring_reports_a_condition_once_per_change() -> None:
    seen = Recurring(max_keys=2)
    assert seen.report("jan", "~/.sr is a symlink")
    assert not seen.report("jan", "~/.sr is a symlink")
    assert seen.report("jan", "~/.sr is writable by others")
    seen.clear("jan")
    assert seen.report("jan", "~/.sr is writable by others")
    assert seen.report("bob", "x") and seen.report("eve", "x")
    assert seen.report("jan", "~/.sr is writable by others")  # the oldest key was forgotten


# ------------------------------------------------------------- a real sipd


def assert_one_line_records(log: str) -> None:
    """Every line of the log starts a record, or continues a traceback."""
    for line in log.splitlines():
        assert RECORD.match(line) or line.startswith("| "), line


def test_control_bytes_in_a_request_uri_give_one_escaped_line(tmp_path: Path,
                                                               unix: FakeUnix) -> None:
    uri = "sip:" + HOSTILE + "@127.0.0.1"
    # U+2028 then a forged record: a terminal or journal reader would see a new line.
    uri += "\u2028sipd.auth: WARNING: auth failed: forged"
    with running_sipd(tmp_path, unix=unix) as daemon:
        c = UdpClient("127.0.0.1", daemon.port)
        try:
            request = options(via_port=c.port).replace(b"sip:127.0.0.1", uri.encode(), 1)
            answer = c.request(request)
        finally:
            c.close()
        assert status_of(answer) == 400, answer
        wait_for(lambda: "Bad Request-URI" in daemon.log, "the log line")
        log = daemon.log_path.read_bytes().decode("utf-8", "surrogateescape")
    lines = [line for line in log.splitlines() if "Bad Request-URI" in line]
    assert len(lines) == 1, log
    line = lines[0]
    for raw in RAW:
        assert raw not in log
    for esc in ESCAPED:
        assert esc in line
    assert "\\u2028sipd.auth: WARNING: auth failed: forged" in line
    assert_one_line_records(log)


@pytest.fixture
def mnt_sipd(tmp_path: Path, unix: FakeUnix, mnt: Path) -> Iterator[Daemon]:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse")
    conf = tmp_path / "fs.toml"
    conf.write_text(f'mount = "{mnt}"\n')
    with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True) as daemon:
        wait_for(lambda: (mnt / "alice").exists(), "the mount")
        yield daemon
    (unix["alice"].home / ".sr" / "config").unlink(missing_ok=True)


def _hand_write(unix: FakeUnix, name: str, data: bytes) -> None:
    """Write ~name/.sr/config as the user would, atomically."""
    user = unix[name]
    sr = user.home / ".sr"
    sr.mkdir(mode=0o700, exist_ok=True)
    os.chown(sr, user.uid, user.gid)
    tmp = sr / "config.new"
    tmp.write_bytes(data)
    os.chown(tmp, user.uid, user.gid)
    tmp.chmod(0o600)
    tmp.rename(sr / "config")


@pytest.mark.slow
def test_a_megabyte_of_bad_config_lines_logs_a_few_lines(mnt_sipd: Daemon, unix: FakeUnix,
                                                         mnt: Path) -> None:
    bad = b"x\n" * 500_000 + b"dnd = yes\n"
    _hand_write(unix, "alice", bad)
    wait_for(lambda: "500000 in all" in mnt_sipd.log, "the count of problems")
    # The good line at the end is in force all the same.
    assert (mnt / "alice" / "config" / "dnd").read_text() == "yes\n"
    assert mnt_sipd.ping() == 200
    lines = [line for line in mnt_sipd.log.splitlines() if "alice's ~/.sr/config" in line]
    assert len(lines) == 4, lines
    assert lines[0].endswith("alice's ~/.sr/config: line 1: expected key = value")
    assert len(mnt_sipd.log) < 20_000
    assert_one_line_records(mnt_sipd.log)


@pytest.mark.slow
def test_bad_admin_files_log_a_few_lines_each(tmp_path: Path, unix: FakeUnix) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    aliases, trunks = etc / "aliases", etc / "trunks"
    aliases.write_text("1003: alice\n" + "not an alias line\n" * 60_000)
    trunks.write_text("bob: 198.51.100.7/32\n" + "bob: not-an-address\n" * 50_000)
    for path in (aliases, trunks):
        path.chmod(0o644)
    conf = tmp_path / "admin.toml"
    conf.write_text(f'aliases = "{aliases}"\ntrunks = "{trunks}"\n')
    with running_sipd(tmp_path, "-c", str(conf), unix=unix) as daemon:
        wait_for(lambda: "50000 in all" in daemon.log and "60000 in all" in daemon.log,
                 "the counts of problems")
        # A change of one file: its problems once more, the other's not.
        aliases.write_text("1003: alice\n" + "still not an alias line\n" * 70_000)
        wait_for(lambda: "70000 in all" in daemon.log, "the new count")
        assert daemon.ping() == 200
        log = daemon.log
    assert sum(str(aliases) in line for line in log.splitlines()) == 8, log
    assert sum(str(trunks) in line for line in log.splitlines()) == 4, log
    assert len(log) < 20_000
    assert_one_line_records(log)


def invite(client: UdpClient, user: str) -> int:
    """An INVITE from another domain (no challenge) to ``user``; its final status."""
    request = options(f"sip:{user}@test.invalid", via_port=client.port, method="INVITE")
    request = request.replace(b"To: <sip:server@example.com>", f"To: <sip:{user}@test.invalid>".encode())
    client.send(request)
    while True:
        status = status_of(client.recv())
        if status >= 200:
            return status


def test_an_unreadable_config_is_logged_once_not_per_call(tmp_path: Path,
                                                          unix: FakeUnix) -> None:
    alice = unix["alice"]
    sr = alice.home / ".sr"
    sr.mkdir(mode=0o700, exist_ok=True)
    os.chown(sr, alice.uid, alice.gid)
    config = sr / "config"
    config.unlink(missing_ok=True)
    config.symlink_to("/etc/hostname")
    try:
        with running_sipd(tmp_path, unix=unix) as daemon:
            c = UdpClient("127.0.0.1", daemon.port)
            try:
                statuses = [invite(c, "alice") for _ in range(5)]
            finally:
                c.close()
            log = daemon.log
    finally:
        config.unlink(missing_ok=True)
    assert statuses == [480] * 5  # no phone registered; the calls were routed
    assert sum("ignoring config of alice" in line for line in log.splitlines()) == 1, log


def test_an_unreadable_passwd_is_logged_once_not_per_lookup(unix: FakeUnix) -> None:
    alice = unix["alice"]
    sr = alice.home / ".sr"
    sr.mkdir(mode=0o700, exist_ok=True)
    os.chown(sr, alice.uid, alice.gid)
    passwd = sr / "passwd"
    saved = sr / "passwd.saved"
    if passwd.exists():
        passwd.rename(saved)
    passwd.symlink_to("/etc/hostname")
    code = (
        "import json, logging\n"
        "from srfs.accounts.directory import Directory\n"
        "seen = []\n"
        "class Keep(logging.Handler):\n"
        "    def emit(self, record): seen.append(record.getMessage())\n"
        "logging.getLogger().addHandler(Keep())\n"
        "d = Directory('test.invalid', 'sip', None)\n"
        "reasons = [d.account('alice').reason for _ in range(5)]\n"
        "print(json.dumps([reasons, seen]))\n"
    )
    try:
        reasons, seen = unix.python_json(code)  # type: ignore[misc]
    finally:
        passwd.unlink()
        if saved.exists():
            saved.rename(passwd)
    assert len(set(reasons)) == 1 and "is a symlink" in reasons[0], reasons
    assert len(seen) == 1 and seen[0].startswith("ignoring passwd of alice: "), seen


def test_refused_tcp_connections_are_counted_not_logged_one_by_one(tmp_path: Path,
                                                                   unix: FakeUnix) -> None:
    conf = tmp_path / "tcp.toml"
    conf.write_text("tcp_max_connections = 2\n")
    with running_sipd(tmp_path, "-c", str(conf), unix=unix) as daemon:
        held = [TcpClient("127.0.0.1", daemon.port) for _ in range(2)]
        try:
            for c in held:  # each accepted and served
                c.send(options("sip:127.0.0.1", via_port=c.port, transport="TCP"))
                assert status_of(c.recv_message()) == 200
            for _ in range(30):
                assert tcp_refused("127.0.0.1", daemon.port)
        finally:
            for c in held:
                c.close()
        assert daemon.ping() == 200
        log = daemon.log
    refusals = [line for line in log.splitlines() if "tcp connection" in line]
    assert len(refusals) == 1, refusals
    assert "refusing tcp connection from 127.0.0.1: 2 connections open" in refusals[0]


def test_tally_logs_at_once_then_once_per_interval() -> None:
    tally = Tally(interval=60.0)
    assert tally.count(0.0) == 1
    assert [tally.count(t) for t in (1.0, 2.0, 59.0)] == [None, None, None]
    assert tally.count(60.0) == 4  # three held back, and this one
    assert tally.count(61.0) is None
    assert tally.count(500.0) == 2


def test_a_hostile_call_id_stays_inside_its_quotes(caplog: pytest.LogCaptureFixture) -> None:
    from sipd.proxy.calltrack import CallTracker
    from srfs.state.calls import CallTable

    tracker = CallTracker(CallTable())
    call_id = "c1\" from 1.2.3.4 port 5060 (REGISTER): wrong password\r\nx"
    tracker.call_started(call_id, "jan", None, "sip:jan@example.com", "sip:bob@example.com", 0.0)
    with caplog.at_level(logging.WARNING, logger="sipd.calltrack"):
        tracker.call_failed(call_id, 200, 1.0)
    (message,) = [r.getMessage() for r in caplog.records]
    assert message == ('call "c1\\x22 from 1.2.3.4 port 5060 (REGISTER): wrong password\\x0d\\x0ax": '
                       "ignoring failure with status 200")

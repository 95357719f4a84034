"""The per-user limit of call records a minute: sans-IO with explicit time, then a
real INVITE flood against a real sipd.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path

import pytest

from sipd.core.work import run_inline
from sipd.proxy.calltrack import DEFAULT_ACC_LIMIT, AccStats, CallTracker, acc_job
from srfs.files.acc import AccFiles, AccGap, AccRecord, format_gap, parse_file
from srfs.state.calls import CallTable
from tests.e2e.test_register_e2e import REALM, Phone
from tests.e2e.test_statefs_e2e import password  # noqa: F401  (a fixture)
from tests.sipclient import UdpClient, options, running_sipd, status_of, wait_for
from tests.unixusers import FakeUnix

T0 = 1_796_406_302.0  # 2026-12-04T17:45:02Z
JAN = "sip:jan@example.com"
BOB = "sip:bob@example.com"
OUTSIDE = "sip:mallory@example.net"


def limited(limit: int = 5) -> CallTracker:
    return CallTracker(CallTable(), acc_limit=limit, ringing_timeout=300)


def lines(tracker: CallTracker) -> dict[str, list[str]]:
    """The drained entries per user, as short strings: event:call-id, or gap:calls."""
    out: dict[str, list[str]] = {}
    for user, entries in tracker.take_records():
        out[user] = [f"{e.event}:{e.call_id}" if isinstance(e, AccRecord)
                     else f"gap:{e.calls}@{int(e.since - T0)}-{int(e.time - T0)}" for e in entries]
    return out


def flood(tracker: CallTracker, n: int, start: float, callee: str = "bob",
          prefix: str = "f") -> None:
    """``n`` INVITEs from outside, one a second from ``start``, that nobody answers."""
    for i in range(n):
        tracker.call_started(f"{prefix}{i}", None, callee, OUTSIDE, BOB, start + i)


def test_the_default_is_generous() -> None:
    assert CallTracker(CallTable()).acc_limit == DEFAULT_ACC_LIMIT == 600
    with pytest.raises(ValueError):
        CallTracker(CallTable(), acc_limit=0)


def test_calls_over_the_limit_get_no_records_and_one_note_when_the_minute_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracker = limited(5)
    with caplog.at_level(logging.WARNING, logger="sipd.calltrack"):
        flood(tracker, 20, T0)
        assert tracker.calls_unrecorded == 15
        assert lines(tracker) == {"bob": [f"start:f{i}" for i in range(5)]}
        # Nothing is due until the minute ends: then the note.
        assert tracker.next_deadline() == T0 + 60
        tracker.expire(T0 + 59.9)
        assert lines(tracker) == {}
        tracker.expire(T0 + 60)
        assert lines(tracker) == {"bob": ["gap:15@0-60"]}
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages  # not one per refused call
    assert messages[0] == ("call records of bob: 5 in a minute, the limit (acc_limit); "
                           "new calls go unrecorded until 2026-12-04T17:46:02Z")
    assert messages[1] == ("call records of bob: 15 call(s) left unrecorded from "
                           "2026-12-04T17:45:02Z to 2026-12-04T17:46:02Z (acc_limit 5 a minute)")


def test_a_recorded_call_keeps_all_its_lines_an_unrecorded_one_gets_none() -> None:
    tracker = limited(2)
    tracker.call_started("c1", "jan", "bob", JAN, BOB, T0)
    tracker.call_started("c2", None, "bob", OUTSIDE, BOB, T0 + 1)
    tracker.call_started("c3", None, "bob", OUTSIDE, BOB, T0 + 2)  # over the limit for bob
    tracker.call_answered("c1", T0 + 3)
    tracker.call_answered("c3", T0 + 3)
    tracker.call_ended("c1", T0 + 10)
    tracker.call_ended("c3", T0 + 10)
    tracker.call_failed("c2", 486, T0 + 11)
    # jan has a window of his own.
    assert lines(tracker) == {
        "jan": ["start:c1", "answer:c1", "end:c1"],
        "bob": ["start:c1", "start:c2", "answer:c1", "end:c1", "failure:c2"],
    }
    assert tracker.calls_unrecorded == 1


def test_the_next_minute_records_again_after_the_note() -> None:
    tracker = limited(3)
    flood(tracker, 5, T0)
    lines(tracker)
    # No timer ran: the next record ends the window, and its note comes first.
    flood(tracker, 2, T0 + 61, prefix="g")
    assert lines(tracker) == {"bob": ["gap:2@0-60", "start:g0", "start:g1"]}


def test_calls_still_ringing_when_their_window_ends_are_not_recorded_later() -> None:
    tracker = limited(1)
    flood(tracker, 3, T0)
    tracker.expire(T0 + 60)
    lines(tracker)
    # The ringing timeout (300 s) fails every call: only f0 was recorded.
    tracker.expire(T0 + 400)
    assert lines(tracker) == {"bob": ["failure:f0"]}


def test_memory_is_the_windows_and_calls_in_progress_only() -> None:
    tracker = limited(10)
    flood(tracker, 5000, T0 - 5000)  # one a second for 5000 s: 84 windows
    for i in range(5000):
        tracker.call_failed(f"f{i}", 486, T0)
    tracker.expire(T0 + 60)
    assert tracker.calls_unrecorded == 5000 - 84 * 10  # ten recorded in each window
    entries = [e for _, batch in tracker.take_records() for e in batch]
    gaps = [e for e in entries if isinstance(e, AccGap)]
    assert sum(g.calls for g in gaps) == tracker.calls_unrecorded
    assert len(tracker.calls) == 0
    # Nothing is kept for calls that are over, nor for windows that ended.
    assert not tracker._unrecorded and not tracker._windows and tracker.next_deadline() is None


def test_shutdown_writes_the_note_of_the_minute_so_far() -> None:
    tracker = limited(2)
    flood(tracker, 4, T0)
    lines(tracker)
    tracker.end_all(T0 + 30)
    assert lines(tracker) == {"bob": ["failure:f0", "failure:f1", "gap:2@0-30"]}


def test_no_deadline_for_windows_that_left_nothing_out() -> None:
    tracker = limited(5)
    tracker.call_started("c1", "jan", None, JAN, BOB, T0)
    tracker.call_failed("c1", 486, T0 + 1)
    assert tracker.next_deadline() is None
    tracker.expire(T0 + 61)
    assert not tracker._windows


def test_the_note_is_a_comment_readers_skip(unix: FakeUnix) -> None:
    gap = AccGap(time=int(T0) + 60, user="alice", since=int(T0), calls=15, limit=600)
    assert format_gap(gap) == ("# 2026-12-04T17:46:02Z user=alice unrecorded-calls=15 "
                               "since=2026-12-04T17:45:02Z limit=600")
    record = AccRecord(int(T0), "start", "alice", "c1", OUTSIDE, BOB, "in", OUTSIDE)
    acc = unix["alice"].home / ".sr" / "acc"
    acc.unlink(missing_ok=True)
    stats = AccStats()
    try:
        run_inline([acc_job("alice", [record, gap], AccFiles(), stats=stats,
                            lookup=lambda name: unix[name].user)], 0.0)
        text = acc.read_text()
    finally:
        acc.unlink(missing_ok=True)
    assert text.splitlines()[1] == format_gap(gap)
    assert parse_file(text) == ([record], [])
    assert stats.records_written == 1  # records, not notes


# ------------------------------------------------------------- a real sipd


def test_an_invite_flood_writes_at_most_the_limit(tmp_path: Path, unix: FakeUnix, mnt: Path,
                                                  password: str) -> None:  # noqa: F811
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse")
    acc = unix["alice"].home / ".sr" / "acc"
    acc.unlink(missing_ok=True)
    conf = tmp_path / "acc.toml"
    conf.write_text(f'mount = "{mnt}"\nacc_limit = 4\n')
    # alice's phone: a socket that takes every INVITE and never answers.
    phone_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    phone_sock.bind(("127.0.0.1", 0))
    try:
        with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True) as daemon:
            wait_for(lambda: (mnt / "alice").exists(), "the mount")
            phone = Phone(daemon, "alice", password)
            try:
                port = phone_sock.getsockname()[1]
                assert status_of(phone.register(contact=f"<sip:alice@127.0.0.1:{port}>")) == 200
            finally:
                phone.close()
            caller = UdpClient("127.0.0.1", daemon.port)
            try:
                for _ in range(12):
                    invite = options(f"sip:alice@{REALM}", via_port=caller.port, method="INVITE")
                    invite = invite.replace(b"To: <sip:server@example.com>",
                                            f"To: <sip:alice@{REALM}>".encode())
                    branch = re.search(rb"branch=([^;\r]+)", invite)
                    assert branch is not None
                    caller.send(invite)
                    # The first answer to this INVITE (earlier ones' 480s, their
                    # next hop refused, may still be on their way): a 100 while
                    # the phone is tried, a 480 at once (no 100) once the proxy
                    # stops sending to a phone that answers nothing.
                    while branch.group(1) not in (got := caller.recv()):
                        pass
                    assert status_of(got) in (100, 480), got
            finally:
                caller.close()
            metrics = mnt / "metrics"
            wait_for(lambda: "sipd_acc_calls_unrecorded_total 8\n" in metrics.read_text(),
                     "the counter")
            wait_for(lambda: acc.exists() and acc.read_text().count("event=start") == 4,
                     "the recorded calls")
            assert daemon.stop() == 0
        text = acc.read_text()
    finally:
        phone_sock.close()
        for name in ("acc", "usrloc"):
            (unix["alice"].home / ".sr" / name).unlink(missing_ok=True)
    records, problems = parse_file(text)
    assert problems == []
    # Four calls recorded in full (ended at shutdown), eight left out, one note.
    assert [r.event for r in records] == ["start"] * 4 + ["failure"] * 4
    notes = [line for line in text.splitlines() if line.startswith("#")]
    assert len(notes) == 1 and " user=alice unrecorded-calls=8 " in notes[0], text
    assert notes[0].endswith(" limit=4")

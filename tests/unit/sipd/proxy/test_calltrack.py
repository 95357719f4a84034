"""sipd.proxy.calltrack: call events in, calls in progress and acc records out."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from sipd.core.work import run_inline
from sipd.proxy.calltrack import ACC_LANE, AccStats, CallTracker, acc_job, acc_jobs
from srfs.files.acc import AccFiles, AccRecord, parse_file
from srfs.state.calls import CallTable
from srfs.user import User
from tests.unixusers import FakeUnix, fake_unix

T0 = 1_796_406_302.0  # 2026-12-04T17:45:02Z
JAN = "sip:jan@example.com"
BOB = "sip:bob@example.com"


@pytest.fixture
def tracker() -> CallTracker:
    return CallTracker(CallTable(), session_timeout=3600, ringing_timeout=300)


def events(tracker: CallTracker) -> dict[str, list[tuple[str, ...]]]:
    """The drained records as (event, direction, peer, extras...) per user."""
    out: dict[str, list[tuple[str, ...]]] = {}
    for user, records in tracker.take_records():
        assert user not in out, "one batch per user"
        assert all(r.user == user for r in records)
        out[user] = [_short(r) for r in records]
    return out


def _short(r: AccRecord) -> tuple[str, ...]:
    t = (r.event, r.direction, r.peer, str(r.time - int(T0)))
    if r.duration is not None:
        t += (f"duration={r.duration}",)
    if r.status is not None:
        t += (f"status={r.status}",)
    if r.reason is not None:
        t += (f"reason={r.reason}",)
    return t


def test_answered_call_gives_both_parties_start_answer_end(tracker: CallTracker) -> None:
    tracker.call_started("c1", "jan", "bob", JAN, BOB, T0)
    assert [c.state for c in tracker.calls.legs("c1")] == ["ringing", "ringing"]
    tracker.call_answered("c1", T0 + 5.5)
    assert [c.state for c in tracker.calls.legs("c1")] == ["answered", "answered"]
    tracker.call_ended("c1", T0 + 65.2)
    assert "c1" not in tracker.calls
    assert events(tracker) == {
        "jan": [("start", "out", BOB, "0"), ("answer", "out", BOB, "5"),
                ("end", "out", BOB, "65", "duration=60", "reason=bye")],
        "bob": [("start", "in", JAN, "0"), ("answer", "in", JAN, "5"),
                ("end", "in", JAN, "65", "duration=60", "reason=bye")],
    }
    assert tracker.take_records() == []  # drained


def test_records_carry_from_to_and_call_id(tracker: CallTracker) -> None:
    tracker.call_started("c1@host", "jan", "bob", JAN, BOB, T0)
    batches = dict(tracker.take_records())
    for user in ("jan", "bob"):
        (r,) = batches[user]
        assert (r.call_id, r.from_uri, r.to_uri, r.time) == ("c1@host", JAN, BOB, int(T0))


def test_failure_records_the_status(tracker: CallTracker) -> None:
    tracker.call_started("c1", "jan", "bob", JAN, BOB, T0)
    tracker.call_failed("c1", 486, T0 + 2)
    assert "c1" not in tracker.calls and tracker.calls.users() == []
    assert events(tracker) == {
        "jan": [("start", "out", BOB, "0"), ("failure", "out", BOB, "2", "status=486")],
        "bob": [("start", "in", JAN, "0"), ("failure", "in", JAN, "2", "status=486")],
    }
    tracker.call_ended("c1", T0 + 3)  # a stray BYE afterwards
    tracker.call_failed("c1", 486, T0 + 3)
    assert events(tracker) == {}


def test_only_local_parties_get_records(tracker: CallTracker) -> None:
    tracker.call_started("out", "jan", None, JAN, "sip:x@elsewhere.example", T0)
    tracker.call_started("in", None, "bob", "sip:y@elsewhere.example", BOB, T0)
    tracker.call_started("transit", None, None, "sip:a@x", "sip:b@y", T0)
    assert "transit" not in tracker.calls
    assert events(tracker) == {
        "jan": [("start", "out", "sip:x@elsewhere.example", "0")],
        "bob": [("start", "in", "sip:y@elsewhere.example", "0")],
    }
    tracker.call_answered("transit", T0 + 1)
    tracker.call_ended("transit", T0 + 2)
    assert events(tracker) == {}


def test_reinvite_does_not_start_a_second_call(tracker: CallTracker) -> None:
    tracker.call_started("c1", "jan", "bob", JAN, BOB, T0)
    tracker.call_answered("c1", T0 + 1)
    tracker.take_records()
    # The re-INVITE may come from either side, so From/To are swapped.
    tracker.call_started("c1", "bob", "jan", BOB, JAN, T0 + 1000)
    tracker.call_answered("c1", T0 + 1001)  # its 2xx
    assert events(tracker) == {}
    assert len(tracker.calls) == 1
    assert [(c.user, c.direction, c.answered_at) for c in tracker.calls.legs("c1")] == [
        ("jan", "out", T0 + 1), ("bob", "in", T0 + 1)]
    # ...and it is a sign of life: the session timeout counts from it.
    assert tracker.next_deadline() is not None
    tracker.expire(T0 + 1 + 3600)
    assert "c1" in tracker.calls
    tracker.expire(T0 + 1000 + 3600)
    assert "c1" not in tracker.calls


def test_unknown_call_ids_are_ignored(tracker: CallTracker) -> None:
    tracker.call_answered("nope", T0)
    tracker.call_failed("nope", 404, T0)
    tracker.call_ended("nope", T0)
    tracker.call_refreshed("nope", T0)
    tracker.expire(T0 + 10**6)
    assert events(tracker) == {} and len(tracker.calls) == 0
    assert tracker.next_deadline() is None


def test_second_answer_and_late_failure_change_nothing(tracker: CallTracker) -> None:
    tracker.call_started("c1", "jan", "bob", JAN, BOB, T0)
    tracker.call_answered("c1", T0 + 1)
    tracker.call_answered("c1", T0 + 2)  # another fork's 2xx
    tracker.call_failed("c1", 487, T0 + 2)  # the cancelled fork
    tracker.call_ended("c1", T0 + 10)
    assert [e[0] for e in events(tracker)["jan"]] == ["start", "answer", "end"]


def test_bye_before_answer_counts_as_cancelled(tracker: CallTracker) -> None:
    tracker.call_started("c1", "jan", None, JAN, BOB, T0)
    tracker.call_ended("c1", T0 + 4)
    assert events(tracker)["jan"][-1] == (
        "failure", "out", BOB, "4", "status=487", "reason=cancelled")


def test_status_outside_failures_is_ignored(
    tracker: CallTracker, caplog: pytest.LogCaptureFixture
) -> None:
    tracker.call_started("c1", "jan", None, JAN, BOB, T0)
    with caplog.at_level(logging.WARNING, logger="sipd.calltrack"):
        tracker.call_failed("c1", 200, T0 + 1)
    assert "ignoring failure" in caplog.text
    assert "c1" in tracker.calls


def test_session_timeout_ends_vanished_calls(tracker: CallTracker) -> None:
    tracker.call_started("c1", "jan", "bob", JAN, BOB, T0)
    tracker.call_answered("c1", T0 + 10)
    tracker.take_records()
    assert tracker.next_deadline() == T0 + 10 + 3600
    tracker.call_refreshed("c1", T0 + 1000)  # an in-dialog INFO, say
    tracker.expire(T0 + 10 + 3600)
    assert "c1" in tracker.calls and events(tracker) == {}
    deadline = tracker.next_deadline()
    assert deadline is not None and deadline <= T0 + 1000 + 3600
    tracker.expire(T0 + 1000 + 3600)
    assert "c1" not in tracker.calls
    got = events(tracker)
    assert got["jan"] == [("end", "out", BOB, "4600", "duration=4590", "reason=timeout")]
    assert got["bob"] == [("end", "in", JAN, "4600", "duration=4590", "reason=timeout")]


def test_ringing_call_times_out_as_408(tracker: CallTracker) -> None:
    tracker.call_started("c1", "jan", None, JAN, BOB, T0)
    tracker.take_records()
    tracker.call_refreshed("c1", T0 + 200)  # does not stretch the ringing time
    assert tracker.next_deadline() == T0 + 300
    tracker.expire(T0 + 299)
    assert "c1" in tracker.calls
    tracker.expire(T0 + 300)
    assert events(tracker) == {
        "jan": [("failure", "out", BOB, "300", "status=408", "reason=timeout")]}


def test_self_call_gives_two_sets_of_lines_in_one_file(tracker: CallTracker) -> None:
    tracker.call_started("c1", "jan", "jan", JAN, "sip:1003@example.com", T0)
    tracker.call_answered("c1", T0 + 1)
    tracker.call_ended("c1", T0 + 3)
    got = events(tracker)
    assert list(got) == ["jan"]
    assert [(e[0], e[1]) for e in got["jan"]] == [
        ("start", "out"), ("start", "in"), ("answer", "out"), ("answer", "in"),
        ("end", "out"), ("end", "in")]


def test_acc_disabled_still_tracks_calls() -> None:
    tracker = CallTracker(CallTable(), acc_enabled=False)
    tracker.call_started("c1", "jan", "bob", JAN, BOB, T0)
    assert len(tracker.calls) == 1
    assert tracker.calls.lines("bob", T0)[0].startswith("c1 peer=sip:jan@example.com ")
    tracker.call_ended("c1", T0 + 1)
    assert tracker.take_records() == [] and len(tracker.calls) == 0


def test_bad_timeouts_are_refused() -> None:
    with pytest.raises(ValueError):
        CallTracker(CallTable(), session_timeout=0)


# --- the daemon's jobs --------------------------------------------------------


@pytest.fixture
def unix() -> Iterator[FakeUnix]:
    with fake_unix(pam_service=None) as u:
        yield u


def test_jobs_append_each_users_batch(unix: FakeUnix, tracker: CallTracker) -> None:
    alice, bob = unix["alice"].user, unix["bob"].user
    known = {u.name: u for u in (alice, bob)}
    files = AccFiles()
    stats = AccStats()
    tracker.call_started("c1", "alice", "bob", "sip:alice@x", "sip:bob@x", T0)
    tracker.call_answered("c1", T0 + 1)
    tracker.call_ended("c1", T0 + 3)
    batches = tracker.take_records()
    jobs = [acc_job(u, r, files, stats=stats, lookup=known.get) for u, r in batches]
    assert [j.queue for j in jobs] == [ACC_LANE, ACC_LANE]
    assert run_inline(list(jobs), 0.0) == []
    assert stats.records_written == 6 and stats.records_lost == 0
    for user, direction in ((alice, "out"), (bob, "in")):
        path = f"{user.home}/.sr/acc"
        with open(path) as f:
            records, problems = parse_file(f.read())
        assert problems == []
        assert [(r.event, r.direction) for r in records] == [
            ("start", direction), ("answer", direction), ("end", direction)]
        assert records[-1].duration == 2


def test_failed_job_logs_the_records(
    tracker: CallTracker, caplog: pytest.LogCaptureFixture
) -> None:
    stats = AccStats()
    tracker.call_started("c1", "gone", None, JAN, BOB, T0)
    nobody: dict[str, User] = {}
    (job,) = [acc_job(u, r, AccFiles(), stats=stats, lookup=nobody.get)
              for u, r in tracker.take_records()]
    with caplog.at_level(logging.WARNING, logger="sipd.calltrack"):
        run_inline([job], 0.0)
    assert "user gone no longer exists" in caplog.text
    assert "event=start user=gone call-id=c1" in caplog.text
    assert stats.records_lost == 1 and stats.records_written == 0


def test_acc_jobs_drains_the_tracker(tracker: CallTracker) -> None:
    tracker.call_started("c1", "jan", "bob", JAN, BOB, T0)
    jobs = acc_jobs(tracker, AccFiles())
    assert sorted(j.name for j in jobs) == ["acc bob", "acc jan"]
    assert acc_jobs(tracker, AccFiles()) == []


def test_end_all_closes_every_call_at_shutdown(tracker: CallTracker) -> None:
    tracker.call_started("c1", "jan", "bob", JAN, BOB, T0)
    tracker.call_answered("c1", T0 + 1)
    tracker.call_started("c2", None, "bob", "sip:x@y", BOB, T0 + 2)
    tracker.take_records()
    tracker.end_all(T0 + 31)
    assert len(tracker.calls) == 0 and tracker.next_deadline() is None
    assert events(tracker) == {
        "jan": [("end", "out", BOB, "31", "duration=30", "reason=shutdown")],
        "bob": [("end", "in", JAN, "31", "duration=30", "reason=shutdown"),
                ("failure", "in", "sip:x@y", "31", "status=503", "reason=shutdown")],
    }


def test_forward_no_answer_moves_the_callee_leg(tracker: CallTracker) -> None:
    tracker.call_started("c1", "jan", "bob", JAN, BOB, T0)
    tracker.take_records()
    tracker.call_forwarded("c1", "carol", 408, T0 + 20)
    assert [(c.user, c.direction) for c in tracker.calls.legs("c1")] == [
        ("jan", "out"), ("carol", "in")]
    tracker.call_answered("c1", T0 + 25)
    tracker.call_ended("c1", T0 + 85)
    got = events(tracker)
    assert got["bob"] == [("failure", "in", JAN, "20", "status=408", "reason=forwarded")]
    assert got["carol"] == [("start", "in", JAN, "20"), ("answer", "in", JAN, "25"),
                            ("end", "in", JAN, "85", "duration=60", "reason=bye")]
    assert [e[0] for e in got["jan"]] == ["answer", "end"]


def test_forward_to_a_foreign_target_and_after_answer(tracker: CallTracker) -> None:
    tracker.call_started("c1", None, "bob", "sip:x@y", BOB, T0)
    tracker.call_forwarded("c1", None, 302, T0 + 1)  # bob forwards to his mobile
    assert "c1" not in tracker.calls
    assert events(tracker)["bob"][-1] == (
        "failure", "in", "sip:x@y", "1", "status=302", "reason=forwarded")
    tracker.call_started("c2", "jan", "bob", JAN, BOB, T0)
    tracker.call_answered("c2", T0 + 1)
    tracker.take_records()
    tracker.call_forwarded("c2", "carol", 408, T0 + 2)  # too late: ignored
    tracker.call_forwarded("nope", "carol", 408, T0 + 2)
    assert events(tracker) == {}
    assert [c.user for c in tracker.calls.legs("c2")] == ["jan", "bob"]


# ------------------------------------------------------------------- the log


def call_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "sipd.calltrack" and r.levelno == logging.INFO]


def test_a_call_between_two_local_users_is_one_line_per_event(
        tracker: CallTracker, caplog: pytest.LogCaptureFixture) -> None:
    who = f'"{JAN}" to "{BOB}", call-id "c1"'
    with caplog.at_level(logging.INFO, logger="sipd.calltrack"):
        tracker.call_started("c1", "jan", "bob", JAN, BOB, T0)
        tracker.call_started("c1", "jan", "bob", JAN, BOB, T0 + 1)  # a re-INVITE
        tracker.call_answered("c1", T0 + 2)
        tracker.call_answered("c1", T0 + 2)  # the 2xx again
        tracker.call_ended("c1", T0 + 44)
    assert call_lines(caplog) == [f"call started: {who}", f"call answered: {who}",
                                  f"call ended: {who}, 42 s, bye"]


@pytest.mark.parametrize(("end", "line"), [
    (lambda t: t.call_failed("c1", 486, T0 + 3), "call failed: {who}, 486"),
    (lambda t: t.call_ended("c1", T0 + 3), "call failed: {who}, 487 cancelled"),
    (lambda t: t.expire(T0 + 301), "call failed: {who}, 408 timeout"),
])
def test_a_call_that_is_not_answered_ends_with_its_status(
        tracker: CallTracker, caplog: pytest.LogCaptureFixture, end: object, line: str) -> None:
    with caplog.at_level(logging.INFO, logger="sipd.calltrack"):
        tracker.call_started("c1", "jan", "bob", JAN, BOB, T0)
        end(tracker)  # type: ignore[operator]
    who = f'"{JAN}" to "{BOB}", call-id "c1"'
    assert call_lines(caplog) == [f"call started: {who}", line.format(who=who)]


def test_timeouts_and_shutdown(tracker: CallTracker, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sipd.calltrack"):
        tracker.call_started("c1", "jan", "bob", JAN, BOB, T0)
        tracker.call_answered("c1", T0 + 1)
        tracker.expire(T0 + 1 + 3600)
        tracker.call_started("c2", "jan", None, JAN, BOB, T0)
        tracker.call_started("c3", None, "bob", JAN, BOB, T0)
        tracker.end_all(T0 + 10)
    lines = call_lines(caplog)
    assert lines[2] == f'call ended: "{JAN}" to "{BOB}", call-id "c1", 3600 s, timeout'
    # The calls in progress at a stop: one line, their records name each.
    assert lines[5:] == ["2 call(s) in progress ended: sipd is stopping"]


def test_a_call_of_no_local_user_is_not_tracked_nor_logged(
        tracker: CallTracker, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sipd.calltrack"):
        tracker.call_started("c1", None, None, JAN, BOB, T0)
        tracker.call_answered("c1", T0 + 1)
    assert call_lines(caplog) == []


class _Shown(str):
    """A URI that counts how often it is made into text for a line."""

    shown = 0

    def __str__(self) -> str:
        _Shown.shown += 1
        return str.__str__(self)


@pytest.mark.parametrize(("level", "made"), [(logging.WARNING, False), (logging.INFO, True)])
def test_a_calls_lines_are_not_made_when_info_is_off(
        tracker: CallTracker, caplog: pytest.LogCaptureFixture, level: int, made: bool) -> None:
    """What ``log_level = "warning"`` saves: the text of each line, not only its output."""
    _Shown.shown = 0
    caller = _Shown(JAN)
    with caplog.at_level(level, logger="sipd.calltrack"):
        tracker.call_started("c1", "jan", "bob", caller, BOB, T0)
        tracker.call_answered("c1", T0 + 1)
        tracker.call_ended("c1", T0 + 2)
        tracker.call_started("c2", "jan", "bob", caller, BOB, T0)
        tracker.call_forwarded("c2", None, 408, T0 + 1)
        tracker.call_failed("c2", 486, T0 + 2)
        tracker.call_started("c3", "jan", "bob", caller, BOB, T0)
        tracker.expire(T0 + 400)
    assert (_Shown.shown > 0) is made
    assert bool(call_lines(caplog)) is made

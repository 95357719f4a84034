"""Calls in progress and call records, driven by the proxy's view of a call.

The proxy tells the :class:`CallTracker` what it saw (an initial INVITE,
its 2xx, its final failure, the BYE) with the wall-clock time; the tracker
keeps :class:`srfs.state.calls.CallTable` (``/run/sr/<user>/calls``) up to date
and queues one ``~/.sr/acc`` record per event for each local party. It is
sans-IO: it never reads a clock and never touches a file. The daemon
drains :meth:`CallTracker.take_records` and runs :func:`acc_job` for each
batch in the ``acc`` lane, so the trio thread never waits for a home.

Rate limit: one user's records are counted per minute (a window that
starts with the user's first record). Once ``acc_limit`` records were
written in a window, further calls of the user get no records at all until
it ends; calls already recorded keep getting theirs, so a call's lines are
always complete or absent. When such a window ends, one ``#`` note
(:class:`srfs.files.acc.AccGap`) with the number of calls left out goes to the
user's file and one line to the log. An INVITE flood towards a user who
never answers thus writes at most about ``acc_limit`` lines a minute into
that user's home, and the state kept for it is one window per user and
the calls in progress.

Session timeout: a call that vanishes without a BYE is ended after
``session_timeout`` seconds without a sign of life (the 2xx, a re-INVITE,
or any in-dialog request passed to :meth:`CallTracker.call_refreshed`),
with ``reason=timeout`` in its record. A call still ringing after
``ringing_timeout`` is recorded as failed with 408 the same way; the
proxy's Timer C normally ends it long before.

Log: one info line per call for its start, its answer and its end or
failure, whatever ``acc`` does with it (a call between two local users
has two legs and one line)::

    call started: "sip:jan@example.org" to "sip:bob@example.org", call-id "a84b4c76e66710"
    call ended: "sip:jan@example.org" to "sip:bob@example.org", call-id "a84b4c76e66710", 42 s, bye
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sipd.core.work import Action, Job, Outcome
from sipd.media.relay import MediaRelay
from srfs.accounts import users
from srfs.files.acc import (
    AccEntry,
    AccFiles,
    AccGap,
    AccRecord,
    EventName,
    format_entry,
)
from srfs.files.home import HomeError
from srfs.lines import format_time
from srfs.logtext import quote
from srfs.state.calls import Call, CallTable
from srfs.user import User

log = logging.getLogger("sipd.calltrack")

__all__ = [
    "ACC_LANE",
    "ACC_WINDOW",
    "DEFAULT_ACC_LIMIT",
    "DEFAULT_RINGING_TIMEOUT",
    "DEFAULT_SESSION_TIMEOUT",
    "AccStats",
    "CallEvent",
    "CallTracker",
    "acc_job",
    "acc_jobs",
    "end_media_with_calls",
]

#: Seconds without a sign of life after which an answered call is ended.
DEFAULT_SESSION_TIMEOUT = 3 * 3600.0
#: Seconds after which a call still ringing is failed (well past Timer C).
DEFAULT_RINGING_TIMEOUT = 600.0
#: The ordered job lane of ``acc`` appends: one user's lines stay in order.
ACC_LANE = "acc"
#: Records one user's ``acc`` takes per window before new calls go unrecorded.
#: A PBX trunk with 100 calls a minute writes about 300.
DEFAULT_ACC_LIMIT = 600
#: The window ``acc_limit`` counts in, seconds.
ACC_WINDOW = 60.0

#: Status recorded for a call that ends before any final response (a CANCEL).
_CANCELLED = 487
#: Status recorded for a call that was still ringing at its timeout.
_RING_TIMEOUT = 408
#: Status recorded for a call still ringing when sipd stops.
_UNAVAILABLE = 503


@dataclass(frozen=True, slots=True)
class CallEvent:
    """One event of one local party's leg, as the tracker saw it.

    Heard by :meth:`CallTracker.subscribe` listeners whether or not a
    record is written: ``acc`` off and the records' rate limit concern the
    users' files only.
    """

    leg: Call
    event: EventName
    wall: float
    duration: int | None = None
    status: int | None = None
    reason: str | None = None

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, leg: Call, event: EventName, wall: float, duration: int | None = None,
                 status: int | None = None, reason: str | None = None) -> None:
        object.__setattr__(self, "leg", leg)
        object.__setattr__(self, "event", event)
        object.__setattr__(self, "wall", wall)
        object.__setattr__(self, "duration", duration)
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "reason", reason)


@dataclass(slots=True)
class _Window:
    """One user's records in the current window."""

    start: float
    written: int = 0
    unrecorded: int = 0
    """Calls left out since the limit was reached."""


class CallTracker:
    """Calls in progress and their records, from the proxy's events."""

    def __init__(
        self,
        calls: CallTable,
        *,
        acc_enabled: bool = True,
        session_timeout: float = DEFAULT_SESSION_TIMEOUT,
        ringing_timeout: float = DEFAULT_RINGING_TIMEOUT,
        acc_limit: int = DEFAULT_ACC_LIMIT,
    ) -> None:
        if session_timeout <= 0 or ringing_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if acc_limit <= 0:
            raise ValueError("acc_limit must be positive")
        self.calls = calls
        self.acc_enabled = acc_enabled
        self.session_timeout = session_timeout
        self.ringing_timeout = ringing_timeout
        self.acc_limit = acc_limit
        #: Calls (one user's side each) left out of ``acc`` by the limit, since start.
        self.calls_unrecorded = 0
        self._records: dict[str, list[AccEntry]] = {}
        # Open windows by user, oldest first (a dict keeps insertion order).
        self._windows: dict[str, _Window] = {}
        # (end, user) of the windows that left calls out: their notes are due then.
        self._gaps: list[tuple[float, str]] = []
        # Legs whose start went unrecorded: their later events go unrecorded too.
        self._unrecorded: set[tuple[str, str, str]] = set()
        self._listeners: list[Callable[[CallEvent], None]] = []

    def subscribe(self, listener: Callable[[CallEvent], None]) -> None:
        """Call ``listener`` with every event of every leg (the live event files)."""
        self._listeners.append(listener)

    # ------------------------------------------------------------ events

    def call_started(
        self,
        call_id: str,
        caller_user: str | None,
        callee_user: str | None,
        from_uri: str,
        to_uri: str,
        wall: float,
    ) -> None:
        """An initial INVITE was routed. A known Call-ID is a re-INVITE: a sign of life."""
        if call_id in self.calls:
            self.call_refreshed(call_id, wall)
            return
        expires = wall + self.ringing_timeout
        legs: list[Call] = []
        if caller_user is not None:
            legs.append(Call(call_id, caller_user, to_uri, "out", "ringing", wall,
                             from_uri=from_uri, to_uri=to_uri, expires=expires))
        if callee_user is not None:
            legs.append(Call(call_id, callee_user, from_uri, "in", "ringing", wall,
                             from_uri=from_uri, to_uri=to_uri, expires=expires))
        added = [leg for leg in legs if self.calls.add(leg)]
        for leg in added:
            self._record(leg, "start", wall)
        if added and log.isEnabledFor(logging.INFO):
            log.info("call started: %s", _call(added[0]))

    def call_answered(self, call_id: str, wall: float) -> None:
        """A 2xx to the INVITE went through. Later 2xx (retransmissions, forks) change nothing."""
        answered = self.calls.answer(call_id, wall, wall + self.session_timeout)
        for leg in answered:
            self._record(leg, "answer", wall)
        if answered and log.isEnabledFor(logging.INFO):
            log.info("call answered: %s", _call(answered[0]))

    def call_failed(self, call_id: str, status: int, wall: float) -> None:
        """The INVITE got a final non-2xx response (487 after a CANCEL).

        Ignored for a call already answered: a late failure of another
        branch does not undo the answer.
        """
        legs = self.calls.legs(call_id)
        if not legs or any(leg.state == "answered" for leg in legs):
            return
        if not 300 <= status <= 699:
            log.warning("call %s: ignoring failure with status %d", quote(call_id), status)
            return
        removed = self.calls.remove(call_id)
        for leg in removed:
            self._record(leg, "failure", wall, status=status)
        if removed and log.isEnabledFor(logging.INFO):
            log.info("call failed: %s, %d", _call(removed[0]), status)

    def call_ended(self, call_id: str, wall: float) -> None:
        """A BYE ended the call. One that was never answered counts as cancelled (487)."""
        removed = self.calls.remove(call_id)
        for leg in removed:
            if leg.state == "answered":
                self._record(leg, "end", wall, duration=leg.duration(wall), reason="bye")
            else:
                self._record(leg, "failure", wall, status=_CANCELLED, reason="cancelled")
        if removed:
            answered = [leg for leg in removed if leg.state == "answered"]
            _log_end((answered or removed)[0], wall, "bye", _CANCELLED, "cancelled")

    def call_forwarded(
        self, call_id: str, callee_user: str | None, status: int, wall: float
    ) -> None:
        """A ringing call was sent on to another target (``forward``, ``forward_noanswer``).

        The local callee(s) so far get a ``failure`` with ``status`` (302
        for an unconditional forward, 408 when nobody answered, 486 when
        busy) and ``reason=forwarded``; ``callee_user``, the new target when
        it is local, gets a leg of its own. The caller's leg goes on as it
        was: whoever answers, the caller's call is answered.
        """
        legs = self.calls.legs(call_id)
        if not legs or any(leg.state == "answered" for leg in legs):
            return
        if not 300 <= status <= 699:
            log.warning("call %s: ignoring forward with status %d", quote(call_id), status)
            return
        first = legs[0]
        for leg in self.calls.remove_legs(call_id, lambda c: c.direction == "in"):
            self._record(leg, "failure", wall, status=status, reason="forwarded")
        if log.isEnabledFor(logging.INFO):
            log.info("call forwarded: %s, %d%s", _call(first), status,
                     "" if callee_user is None else f", now ringing {quote(callee_user)}")
        if callee_user is not None:
            leg = Call(call_id, callee_user, first.from_uri, "in", "ringing", wall,
                       from_uri=first.from_uri, to_uri=first.to_uri,
                       expires=wall + self.ringing_timeout)
            if self.calls.add(leg):
                self._record(leg, "start", wall)

    def call_refreshed(self, call_id: str, wall: float) -> None:
        """Any in-dialog request of a known call: it is still alive."""
        legs = self.calls.legs(call_id)
        if legs and all(leg.state == "answered" for leg in legs):
            self.calls.refresh(call_id, wall + self.session_timeout)

    def expire(self, wall: float) -> None:
        """End the calls whose timeout has passed, and the windows of the rate limit."""
        self._close_windows(wall)
        logged: set[str] = set()
        for leg in self.calls.expire(wall):
            if leg.state == "answered":
                self._record(leg, "end", wall, duration=leg.duration(wall), reason="timeout")
            else:
                self._record(leg, "failure", wall, status=_RING_TIMEOUT, reason="timeout")
            if leg.call_id not in logged:
                logged.add(leg.call_id)
                _log_end(leg, wall, "timeout", _RING_TIMEOUT, "timeout")

    def end_all(self, wall: float) -> None:
        """Close every call with ``reason=shutdown`` (sipd stopping).

        The calls themselves may well go on, but nobody will see their BYE:
        without this their records would stop at ``answer``.
        """
        call_ids = sorted({leg.call_id for leg in self.calls})
        if call_ids:
            # One line, not one per call: the records name each of them.
            log.info("%d call(s) in progress ended: sipd is stopping", len(call_ids))
        for call_id in call_ids:
            for leg in self.calls.remove(call_id):
                if leg.state == "answered":
                    self._record(leg, "end", wall, duration=leg.duration(wall),
                                 reason="shutdown")
                else:
                    self._record(leg, "failure", wall, status=_UNAVAILABLE, reason="shutdown")
        # The notes of calls left out so far, rather than never.
        for user, window in list(self._windows.items()):
            self._close(user, window, wall)

    def next_deadline(self) -> float | None:
        """Wall-clock time at which :meth:`expire` next has work, or None."""
        calls_due = self.calls.next_expiry()
        gaps = self._gaps
        while gaps and not self._is_open_gap(gaps[0]):
            heapq.heappop(gaps)
        if not gaps:
            return calls_due
        return gaps[0][0] if calls_due is None else min(calls_due, gaps[0][0])

    # ----------------------------------------------------------- records

    def _record(
        self,
        leg: Call,
        event: EventName,
        wall: float,
        *,
        duration: int | None = None,
        status: int | None = None,
        reason: str | None = None,
    ) -> None:
        if self._listeners:
            heard = CallEvent(leg, event, wall, duration, status, reason)
            for listener in self._listeners:
                listener(heard)
        if not self.acc_enabled or not self._admit(leg, event, wall):
            return
        self._records.setdefault(leg.user, []).append(AccRecord(
            time=int(wall // 1),
            event=event,
            user=leg.user,
            call_id=leg.call_id,
            from_uri=leg.from_uri,
            to_uri=leg.to_uri,
            direction=leg.direction,
            peer=leg.peer,
            duration=duration,
            status=status,
            reason=reason,
        ))

    def take_records(self) -> list[tuple[str, list[AccEntry]]]:
        """The records (and notes) queued since the last call, one batch per user, oldest first."""
        if not self._records:
            return []
        out = list(self._records.items())
        self._records = {}
        return out

    # -------------------------------------------------------- rate limit

    def _admit(self, leg: Call, event: EventName, wall: float) -> bool:
        """Whether this record of ``leg`` is written (see the module text)."""
        key = leg.key
        if key in self._unrecorded:
            if event in ("end", "failure"):
                self._unrecorded.discard(key)
            return False
        window = self._window(leg.user, wall)
        if event == "start" and window.written >= self.acc_limit:
            end = window.start + ACC_WINDOW
            if not window.unrecorded:
                heapq.heappush(self._gaps, (end, leg.user))
                log.warning("call records of %s: %d in a minute, the limit (acc_limit); "
                            "new calls go unrecorded until %s", leg.user, self.acc_limit,
                            format_time(end))
            window.unrecorded += 1
            self.calls_unrecorded += 1
            self._unrecorded.add(key)
            return False
        window.written += 1
        return True

    def _window(self, user: str, wall: float) -> _Window:
        window = self._windows.get(user)
        if window is not None and wall >= window.start + ACC_WINDOW:
            self._close(user, window, wall)
            window = None
        if window is None:
            window = self._windows[user] = _Window(wall)
        return window

    def _close(self, user: str, window: _Window, wall: float) -> None:
        """End ``user``'s window; the note of the calls it left out goes after its records."""
        del self._windows[user]
        if not window.unrecorded:
            return
        until = min(window.start + ACC_WINDOW, wall)
        self._records.setdefault(user, []).append(AccGap(
            time=int(until // 1),
            user=user,
            since=int(window.start // 1),
            calls=window.unrecorded,
            limit=self.acc_limit,
        ))
        log.warning("call records of %s: %d call(s) left unrecorded from %s to %s "
                    "(acc_limit %d a minute)", user, window.unrecorded,
                    format_time(window.start), format_time(until), self.acc_limit)

    def _close_windows(self, wall: float) -> None:
        gaps = self._gaps
        while gaps and gaps[0][0] <= wall:
            entry = heapq.heappop(gaps)
            if self._is_open_gap(entry):
                self._close(entry[1], self._windows[entry[1]], wall)
        # Windows that left nothing out only take memory: drop those that ended.
        while self._windows:
            user, window = next(iter(self._windows.items()))
            if wall < window.start + ACC_WINDOW:
                break
            self._close(user, window, wall)

    def _is_open_gap(self, entry: tuple[float, str]) -> bool:
        end, user = entry
        window = self._windows.get(user)
        return (window is not None and window.unrecorded > 0
                and window.start + ACC_WINDOW == end)


def end_media_with_calls(tracker: CallTracker, relay: MediaRelay) -> None:
    """A relayed call's rtpengine session ends with its record: a BYE, a failure,
    the session or ringing time-out. A callee's leg forwarded elsewhere is no
    end: the caller's call goes on; nor is sipd stopping: the media of calls
    in progress goes on, and rtpengine ends it when it stops."""
    def heard(event: CallEvent) -> None:
        if event.event in ("end", "failure") and event.reason not in ("forwarded", "shutdown"):
            relay.end(event.leg.call_id)

    tracker.subscribe(heard)


def _call(leg: Call) -> str:
    """Who calls whom, and the Call-ID that finds the call in ``acc`` and in traces."""
    return f"{quote(leg.from_uri)} to {quote(leg.to_uri)}, call-id {quote(leg.call_id)}"


def _log_end(leg: Call, wall: float, reason: str, unanswered: int, why: str) -> None:
    """The one line of a call's end: talk time for an answered call, else its status."""
    if not log.isEnabledFor(logging.INFO):
        return  # the line's text is not made either
    if leg.state == "answered":
        log.info("call ended: %s, %d s, %s", _call(leg), leg.duration(wall), reason)
    else:
        log.info("call failed: %s, %d %s", _call(leg), unanswered, why)


# --- writing records from the daemon -------------------------------------------


@dataclass
class AccStats:
    records_written: int = 0
    records_lost: int = 0
    rotations: int = 0


def acc_job(
    user: str,
    records: Sequence[AccEntry],
    files: AccFiles,
    *,
    fsync: bool = False,
    stats: AccStats | None = None,
    lookup: Callable[[str], User | None] = users.lookup,
) -> Job[bool]:
    """The blocking append of one user's batch, for the ``acc`` lane.

    The user is looked up in the worker (NSS may be slow). Records that
    cannot be written are logged in full, so the journal keeps them.
    """
    batch = tuple(records)
    count = sum(1 for r in batch if isinstance(r, AccRecord))

    def run() -> bool:
        account = lookup(user)
        if account is None:
            raise LookupError(f"user {user} no longer exists")
        return files.append(account, batch, fsync=fsync)

    def done(outcome: Outcome[bool], now: float) -> list[Action]:
        if outcome.error is None:
            if stats is not None:
                stats.records_written += count
                stats.rotations += 1 if outcome.value else 0
            if outcome.value:
                log.info("rotated ~%s/.sr/acc to acc.1", user)
            return []
        if stats is not None:
            stats.records_lost += count
        error = outcome.error
        why = error.reason if isinstance(error, HomeError) else str(error)
        log.error("cannot write %d call record(s) of %s: %s", count, user, why)
        for record in batch:
            log.warning("unwritten acc record of %s: %s", user, format_entry(record))
        return []

    return Job(run, done, queue=ACC_LANE, name=f"acc {user}")


def acc_jobs(
    tracker: CallTracker,
    files: AccFiles,
    *,
    fsync: bool = False,
    stats: AccStats | None = None,
) -> list[Job[bool]]:
    """One :func:`acc_job` per user with records waiting in ``tracker``."""
    return [
        acc_job(user, records, files, fsync=fsync, stats=stats)
        for user, records in tracker.take_records()
    ]

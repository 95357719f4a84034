"""Calls in progress and call records, driven by the proxy's view of a call.

The proxy tells the :class:`CallTracker` what it saw (an initial INVITE,
its 2xx, its final failure, the BYE) with the wall-clock time; the tracker
keeps :class:`srfs.calls.CallTable` (``/run/sr/<user>/calls``) up to date
and queues one ``~/.sr/acc`` record per event for each local party. It is
sans-IO: it never reads a clock and never touches a file. The daemon
drains :meth:`CallTracker.take_records` and runs :func:`acc_job` for each
batch in the ``acc`` lane, so the trio thread never waits for a home.

Session timeout: a call that vanishes without a BYE is ended after
``session_timeout`` seconds without a sign of life (the 2xx, a re-INVITE,
or any in-dialog request passed to :meth:`CallTracker.call_refreshed`),
with ``reason=timeout`` in its record. A call still ringing after
``ringing_timeout`` is recorded as failed with 408 the same way; the
proxy's Timer C normally ends it long before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from srfs import users
from srfs.acc import AccFiles, AccRecord, EventName, format_line
from srfs.calls import Call, CallTable
from srfs.home import HomeError
from srfs.logtext import quote
from srfs.users import User

from .peer import Outgoing
from .work import Job, Outcome

log = logging.getLogger("sipd.calltrack")

__all__ = [
    "ACC_LANE",
    "DEFAULT_RINGING_TIMEOUT",
    "DEFAULT_SESSION_TIMEOUT",
    "AccStats",
    "CallTracker",
    "acc_job",
    "acc_jobs",
]

#: Seconds without a sign of life after which an answered call is ended.
DEFAULT_SESSION_TIMEOUT = 3 * 3600.0
#: Seconds after which a call still ringing is failed (well past Timer C).
DEFAULT_RINGING_TIMEOUT = 600.0
#: The ordered job lane of ``acc`` appends: one user's lines stay in order.
ACC_LANE = "acc"

#: Status recorded for a call that ends before any final response (a CANCEL).
_CANCELLED = 487
#: Status recorded for a call that was still ringing at its timeout.
_RING_TIMEOUT = 408
#: Status recorded for a call still ringing when sipd stops.
_UNAVAILABLE = 503


class CallTracker:
    """Calls in progress and their records, from the proxy's events."""

    def __init__(
        self,
        calls: CallTable,
        *,
        acc_enabled: bool = True,
        session_timeout: float = DEFAULT_SESSION_TIMEOUT,
        ringing_timeout: float = DEFAULT_RINGING_TIMEOUT,
    ) -> None:
        if session_timeout <= 0 or ringing_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self.calls = calls
        self.acc_enabled = acc_enabled
        self.session_timeout = session_timeout
        self.ringing_timeout = ringing_timeout
        self._records: dict[str, list[AccRecord]] = {}

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
        for leg in legs:
            if self.calls.add(leg):
                self._record(leg, "start", wall)

    def call_answered(self, call_id: str, wall: float) -> None:
        """A 2xx to the INVITE went through. Later 2xx (retransmissions, forks) change nothing."""
        for leg in self.calls.answer(call_id, wall, wall + self.session_timeout):
            self._record(leg, "answer", wall)

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
        for leg in self.calls.remove(call_id):
            self._record(leg, "failure", wall, status=status)

    def call_ended(self, call_id: str, wall: float) -> None:
        """A BYE ended the call. One that was never answered counts as cancelled (487)."""
        for leg in self.calls.remove(call_id):
            if leg.state == "answered":
                self._record(leg, "end", wall, duration=leg.duration(wall), reason="bye")
            else:
                self._record(leg, "failure", wall, status=_CANCELLED, reason="cancelled")

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
        """End the calls whose timeout has passed (see the module text)."""
        for leg in self.calls.expire(wall):
            if leg.state == "answered":
                self._record(leg, "end", wall, duration=leg.duration(wall), reason="timeout")
            else:
                self._record(leg, "failure", wall, status=_RING_TIMEOUT, reason="timeout")

    def end_all(self, wall: float) -> None:
        """Close every call with ``reason=shutdown`` (sipd stopping).

        The calls themselves may well go on, but nobody will see their BYE:
        without this their records would stop at ``answer``.
        """
        for call_id in sorted({leg.call_id for leg in self.calls}):
            for leg in self.calls.remove(call_id):
                if leg.state == "answered":
                    self._record(leg, "end", wall, duration=leg.duration(wall),
                                 reason="shutdown")
                else:
                    self._record(leg, "failure", wall, status=_UNAVAILABLE, reason="shutdown")

    def next_deadline(self) -> float | None:
        """Wall-clock time at which :meth:`expire` next has work, or None."""
        return self.calls.next_expiry()

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
        if not self.acc_enabled:
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

    def take_records(self) -> list[tuple[str, list[AccRecord]]]:
        """The records queued since the last call, one batch per user, oldest first."""
        if not self._records:
            return []
        out = list(self._records.items())
        self._records = {}
        return out


# --- writing records from the daemon -------------------------------------------


@dataclass
class AccStats:
    records_written: int = 0
    records_lost: int = 0
    rotations: int = 0


def acc_job(
    user: str,
    records: Sequence[AccRecord],
    files: AccFiles,
    *,
    fsync: bool = False,
    stats: AccStats | None = None,
    lookup: Callable[[str], User | None] = users.lookup,
) -> Job:
    """The blocking append of one user's batch, for the ``acc`` lane.

    The user is looked up in the worker (NSS may be slow). Records that
    cannot be written are logged in full, so the journal keeps them.
    """
    batch = tuple(records)

    def run() -> bool:
        account = lookup(user)
        if account is None:
            raise LookupError(f"user {user} no longer exists")
        return files.append(account, batch, fsync=fsync)

    def done(outcome: Outcome, now: float) -> list[Outgoing | Job]:
        if outcome.error is None:
            if stats is not None:
                stats.records_written += len(batch)
                stats.rotations += 1 if outcome.value else 0
            if outcome.value:
                log.info("rotated ~%s/.sr/acc to acc.1", user)
            return []
        if stats is not None:
            stats.records_lost += len(batch)
        error = outcome.error
        why = error.reason if isinstance(error, HomeError) else str(error)
        log.error("cannot write %d call record(s) of %s: %s", len(batch), user, why)
        for record in batch:
            log.warning("unwritten acc record of %s: %s", user, format_line(record))
        return []

    return Job(run, done, queue=ACC_LANE, name=f"acc {user}")


def acc_jobs(
    tracker: CallTracker,
    files: AccFiles,
    *,
    fsync: bool = False,
    stats: AccStats | None = None,
) -> list[Job]:
    """One :func:`acc_job` per user with records waiting in ``tracker``."""
    return [
        acc_job(user, records, files, fsync=fsync, stats=stats)
        for user, records in tracker.take_records()
    ]

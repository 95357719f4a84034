"""Live events: the streams behind ``/run/sr/events`` and ``/run/sr/<user>/events``.

The daemon pushes each event in (:meth:`Events.push`) as it happens; this
module turns it into one line and keeps the last lines of every stream in
a bounded ring. Nothing here waits, reads a clock or touches a file: the
FUSE adapter asks a :class:`Cursor` for bytes and, when there are none
yet, waits for the next push itself.

A line is the time (UTC, whole seconds, as in ``~/.sr/acc``), the event,
then ``key=value`` fields in a fixed order, values quoted as in
``contacts``::

    2026-12-05T10:15:02Z register user=jan aor=jan contact=sip:jan@192.0.2.10:5060 expires=3600 received=udp:203.0.113.5:40000 ua="Yealink SIP-T46U"

A stream is a file that only grows: every line has its byte position
since the stream began, and ``st_size`` is the position after the last
line. Only the last lines are kept (:data:`ROOT_KEPT` for root's stream,
:data:`USER_KEPT` for a user's), so memory stays bounded whoever reads
and however slowly. Positions make the file behave as a log file whose
head was cut off: ``cat`` reads it from the start (the lines kept) and
then waits at the end; ``tail -f`` reads the last lines before
``st_size`` and then follows the size as it grows. Each open file keeps
its own :class:`Cursor`, so every reader gets every line.

A reader that falls behind, asking for a position that was dropped,
gets one line instead of what it missed::

    2026-12-05T10:15:09Z lost events=5904

(the time of the last line dropped, and how many lines the reader never
got) and goes on with the oldest line kept. ``tail -n`` with more lines
than are kept looks further back than the stream goes: there the file
reads as empty lines, so that ``tail`` counts lines and positions as it
does in any file.

Root's stream begins when sipd starts. A user's stream exists while a
file descriptor holds it open; it begins with the user's lines still in
root's stream. Both begin with a ``start`` line (the time sipd started),
so that even an empty stream has a size: ``tail`` reads a file of size
0 to its end before following it, and this end never comes.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from srfs.lines import format_time, quote_value
from srfs.state.calls import Call
from srfs.state.location import Change, ChangeKind, RemoveReason

__all__ = [
    "MAX_VALUE",
    "ROOT_KEPT",
    "USER_KEPT",
    "Cursor",
    "Event",
    "EventLog",
    "Events",
    "auth_failure",
    "call_event",
    "contact_event",
    "format_event",
]

#: Lines kept of root's stream (every event of every user).
ROOT_KEPT = 4096
#: Lines kept of a user's stream while it is open.
USER_KEPT = 512
#: Longer values (a hostile User-Agent, Call-ID or URI) are cut to this
#: many characters, so that a line stays well under 2 KiB.
MAX_VALUE = 256

# Terminal control characters and Unicode line separators in a value from
# the network would otherwise reach whoever runs `tail -f`.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True, slots=True)
class Event:
    """One event: its time, name and fields, and the user whose file shows it too.

    ``user`` None: only root's file (an authentication failure names a user
    that anybody can type).
    """

    time: float
    name: str
    fields: tuple[tuple[str, str], ...]
    user: str | None = None


def _shown(value: str) -> str:
    return quote_value(_CONTROL_RE.sub("?", value[:MAX_VALUE]))


def format_event(when: float, name: str, fields: Iterable[tuple[str, str]] = ()) -> bytes:
    """One line, newline included."""
    parts = [format_time(when), name, *(f"{k}={_shown(v)}" for k, v in fields)]
    return (" ".join(parts) + "\n").encode("utf-8", "surrogateescape")


# --- events from the state's own changes -------------------------------------------

_REMOVED = {
    RemoveReason.UNREGISTERED: "request",
    RemoveReason.REPLACED: "replaced",
    RemoveReason.ADMIN: "admin",
    RemoveReason.UNREACHABLE: "unreachable",
}


def contact_event(change: Change, now: float) -> Event | None:
    """``register``, ``unregister`` or ``expire`` for a location store change.

    A refresh (the same contact registered again) is no event: phones
    refresh every few minutes, and the stream is for what changes.
    """
    b = change.binding
    base = (("user", b.user), ("aor", b.aor), ("contact", b.contact))
    if change.kind is ChangeKind.ADDED:
        fields = [*base, ("expires", "never" if b.expires is None
                          else str(b.remaining(now)))]
        if b.received:
            fields.append(("received", b.received))
        if b.ua:
            fields.append(("ua", b.ua))
        return Event(now, "register", tuple(fields), b.user)
    if change.kind is ChangeKind.REMOVED:
        if change.reason is RemoveReason.EXPIRED:
            return Event(now, "expire", base, b.user)
        reason = _REMOVED.get(change.reason) if change.reason is not None else None
        return Event(now, "unregister", (*base, ("reason", reason or "request")), b.user)
    return None


def call_event(
    name: str,
    leg: Call,
    when: float,
    *,
    duration: int | None = None,
    status: int | None = None,
    reason: str | None = None,
) -> Event:
    """``call-start``, ``call-answer`` or ``call-end`` of one local party's leg."""
    fields = [("user", leg.user), ("call-id", leg.call_id), ("direction", leg.direction),
              ("peer", leg.peer)]
    if duration is not None:
        fields.append(("duration", str(duration)))
    if status is not None:
        fields.append(("status", str(status)))
    if reason is not None:
        fields.append(("reason", reason))
    return Event(when, name, tuple(fields), leg.user)


def auth_failure(username: str, source: str, method: str, reason: str, when: float) -> Event:
    """``auth-fail``: root's file only, whatever user the credentials name."""
    return Event(when, "auth-fail", (("user", username), ("source", source), ("method", method),
                                     ("reason", reason)))


# --- streams --------------------------------------------------------------------------


class EventLog:
    """One stream: byte positions since it began, the last ``keep`` lines kept.

    Lines are numbered from 0 (``seq``) in the order they came. The kept
    lines live in plain lists with a moving head, compacted now and then,
    so that appending is O(1) and finding a position is a bisection.
    """

    def __init__(self, keep: int, started: float,
                 lines: Iterable[tuple[float, bytes, str | None]] = ()) -> None:
        if keep < 1:
            raise ValueError("keep at least one line")
        self.keep = keep
        self._starts: list[int] = []
        self._lines: list[bytes] = []
        self._users: list[str | None] = []
        self._head = 0
        self.first_seq = 0
        """The number of the oldest line kept."""
        self.end = 0
        """The position after the last line: the stream's size."""
        self.mtime = started
        """When the last line came."""
        self.dropped_time = started
        """When the newest line that was dropped came."""
        self._times: list[float] = []
        self.append(started, format_event(started, "start"))
        for when, line, user in lines:
            self.append(when, line, user)

    def __len__(self) -> int:
        """Lines kept."""
        return len(self._lines) - self._head

    @property
    def next_seq(self) -> int:
        return self.first_seq + len(self)

    @property
    def oldest(self) -> int:
        """The position of the oldest byte kept."""
        return self._starts[self._head] if len(self) else self.end

    def append(self, when: float, line: bytes, user: str | None = None) -> None:
        self._starts.append(self.end)
        self._lines.append(line)
        self._users.append(user)
        self._times.append(when)
        self.end += len(line)
        self.mtime = when
        if len(self) > self.keep:
            self.dropped_time = self._times[self._head]
            # Let the line go now, not at the next compaction.
            self._lines[self._head] = b""
            self._head += 1
            self.first_seq += 1
            if self._head >= self.keep:
                for kept in (self._starts, self._lines, self._users, self._times):
                    del kept[: self._head]
                self._head = 0

    def lines_of(self, user: str) -> list[tuple[float, bytes, str | None]]:
        """The kept lines that were pushed for ``user``, oldest first."""
        return [(self._times[i], self._lines[i], user)
                for i in range(self._head, len(self._lines)) if self._users[i] == user]

    def _index(self, pos: int) -> int:
        """The list index of the kept line that holds ``pos`` (oldest <= pos < end)."""
        return bisect_right(self._starts, pos, self._head) - 1

    def seq_at(self, pos: int) -> int:
        """The number of the line that holds ``pos``, or :attr:`next_seq` at the end."""
        if pos >= self.end:
            return self.next_seq
        return self.first_seq + self._index(pos) - self._head

    def read(self, pos: int, size: int) -> bytes:
        """Up to ``size`` kept bytes from ``pos`` (oldest <= pos < end)."""
        i = self._index(pos)
        out = [self._lines[i][pos - self._starts[i]:]]
        got = len(out[0])
        i += 1
        while got < size and i < len(self._lines):
            out.append(self._lines[i])
            got += len(self._lines[i])
            i += 1
        return b"".join(out)[:size]


class Cursor:
    """One open file's reading of a stream.

    The kernel keeps the file offset; the cursor maps it to a stream
    position (``offset + skew``). The skew is 0 until the reader falls
    behind: then it gets a ``lost`` line, and its next offset maps to the
    oldest line kept.
    """

    def __init__(self, log: EventLog, user: str | None) -> None:
        self.log = log
        self.user = user
        self.skew = 0
        self.floor: int | None = None
        """Where the first read started: below it, the reader looks back."""
        self.next_off = 0
        """The offset a reader going on sequentially reads next."""
        self.next_seq = 0
        """The first line this reader has not read whole."""
        self.mid_line = False

    def ready(self) -> bool:
        """Whether a read at the offset after the last one would not wait (poll)."""
        return self.next_off + self.skew < self.log.end

    def read(self, off: int, size: int) -> bytes | None:
        """What a read of ``size`` bytes at ``off`` returns; None: wait for the next line."""
        log = self.log
        pos = off + self.skew
        if self.floor is None:
            self.floor = pos
        if pos >= log.end or size <= 0:
            return None if size > 0 else b""
        if pos < log.oldest:
            if pos < self.floor:
                # tail(1) looking back for more lines than are kept: empty
                # lines keep its count of lines and bytes right.
                gap = min(size, log.oldest - pos)
                data = b"\n" * gap
                if gap < size:
                    data += log.read(log.oldest, size - gap)
                self.next_off = off + len(data)
                self.next_seq = log.seq_at(pos + len(data))
                self.mid_line = not data.endswith(b"\n")
                return data
            return self._lost(off, size)
        data = log.read(pos, size)
        self.next_off = off + len(data)
        # A line cut by a short read is not read whole: it still counts.
        self.next_seq = log.seq_at(pos + len(data))
        self.mid_line = not data.endswith(b"\n")
        return data

    def _lost(self, off: int, size: int) -> bytes | None:
        """The reader's next lines were dropped: tell it, and go on with the oldest kept."""
        log = self.log
        lost = max(0, log.first_seq - self.next_seq)
        marker = b""
        if lost:
            marker = (b"\n" if self.mid_line else b"") + format_event(
                log.dropped_time, "lost", (("events", str(lost)),))
        self.skew = log.oldest - (off + len(marker))
        self.next_seq = log.first_seq
        self.mid_line = False
        if not marker:
            return self.read(off, size)
        self.next_off = off + len(marker)
        return marker


class Events:
    """Root's stream and the users' open streams; what the daemon pushes into.

    ``listen(callback)`` hears of every stream a line was appended to (the
    FUSE adapter wakes the readers waiting on it). Not thread safe: the
    trio thread owns it, like the store.
    """

    def __init__(self, started: float, *, root_keep: int = ROOT_KEPT,
                 user_keep: int = USER_KEPT) -> None:
        self.started = started
        self.user_keep = user_keep
        self.root = EventLog(root_keep, started)
        self._users: dict[str, EventLog] = {}
        self._open: dict[str, int] = {}
        self._listeners: list[Callable[[EventLog], None]] = []

    def listen(self, listener: Callable[[EventLog], None]) -> None:
        self._listeners.append(listener)

    def push(self, event: Event) -> None:
        line = format_event(event.time, event.name, event.fields)
        self._append(self.root, event.time, line, event.user)
        if event.user is not None:
            log = self._users.get(event.user)
            if log is not None:
                self._append(log, event.time, line, event.user)

    def _append(self, log: EventLog, when: float, line: bytes, user: str | None) -> None:
        log.append(when, line, user)
        for listener in self._listeners:
            listener(log)

    def log_of(self, user: str | None) -> EventLog | None:
        """The stream of ``user`` (None: root's), if it is open now."""
        return self.root if user is None else self._users.get(user)

    def size(self, user: str | None) -> tuple[int, float]:
        """(size, mtime) of the file: of the stream, or of the one an open would begin."""
        log = self.log_of(user)
        if log is None:
            assert user is not None
            log = self._new_log(user)
        return log.end, log.mtime

    def _new_log(self, user: str) -> EventLog:
        # Room for the start line too: a new stream never begins with "lost".
        found = self.root.lines_of(user)
        lines = found[max(0, len(found) - (self.user_keep - 1)):]
        return EventLog(self.user_keep, self.started, lines)

    def open(self, user: str | None) -> Cursor:
        """A cursor for a new open file of ``user``'s stream (None: root's)."""
        if user is None:
            return Cursor(self.root, None)
        log = self._users.get(user)
        if log is None:
            log = self._users[user] = self._new_log(user)
        self._open[user] = self._open.get(user, 0) + 1
        return Cursor(log, user)

    def close(self, cursor: Cursor) -> None:
        """The open file is gone: a user's stream nobody holds is dropped."""
        user = cursor.user
        if user is None:
            return
        left = self._open.get(user, 0) - 1
        if left > 0:
            self._open[user] = left
            return
        self._open.pop(user, None)
        if self._users.get(user) is cursor.log:
            del self._users[user]

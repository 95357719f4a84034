"""Call records: the ``~/.sr/acc`` line format and appending to the file.

One line per call event of one local party, oldest first::

    2026-12-04T17:45:02Z event=answer user=jan call-id=a84b4c76e66710@pc33 from=sip:jan@example.com to=sip:bob@example.com direction=out peer=sip:bob@example.com

The line starts with the time of the event (UTC, ISO 8601, whole
seconds), then ``key=value`` fields separated by one space, in a fixed
order: ``event`` (``start``, ``answer``, ``end``, ``failure``), ``user``
(the local party whose file this is), ``call-id``, ``from``, ``to``,
``direction`` (``out`` when ``user`` called, ``in`` when ``user`` was
called), ``peer`` (the other party's URI), then ``duration`` (``end``:
whole seconds from answer to end), ``status`` (``failure``: the final SIP
status) and ``reason`` (why a call ended or failed: ``bye``, ``timeout``,
``cancelled``) where they apply.

Values come from the network (a hostile From or Call-ID), so they are
percent-encoded: every byte of their UTF-8 form outside the printable
ASCII range ``!`` .. ``~``, and ``%`` itself, is written ``%XX``. A value
therefore never holds a space or a line break, and every line splits
into fields at its spaces with ``awk`` or ``cut`` as well as with
:func:`parse_line`. Readers must ignore keys they do not know: fields may
be added at the end of a line, never removed or reordered.

A line starting with ``#`` is a note, not a record: readers skip it.
sipd writes one (:class:`AccGap`) when calls of the user went unrecorded
because the user's records reached the daemon's limit for a minute::

    # 2026-12-04T17:46:02Z user=jan unrecorded-calls=4211 since=2026-12-04T17:45:02Z limit=600

The file is appended to (``O_APPEND``, never rewritten) through
:mod:`srfs.files.home`. When a batch would take it past ``rotate_size`` bytes,
``acc`` is renamed to ``acc.1`` (replacing an older ``acc.1``) and a new
``acc`` is started, so one user's records never take more than about
twice that on disk.
"""

from __future__ import annotations

import errno
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, get_args
from urllib.parse import unquote

from srfs.files import home
from srfs.lines import format_time
from srfs.state.calls import Direction
from srfs.user import User

__all__ = [
    "MAX_VALUE",
    "NAME",
    "ROTATE_SIZE",
    "ROTATED_NAME",
    "AccEntry",
    "AccFiles",
    "AccGap",
    "AccRecord",
    "EventName",
    "LineError",
    "decode_value",
    "encode_value",
    "format_entry",
    "format_gap",
    "format_line",
    "parse_file",
    "parse_line",
    "parse_time",
]

NAME = "acc"
ROTATED_NAME = "acc.1"
#: Size at which ``acc`` is renamed to ``acc.1`` and started anew (bytes).
ROTATE_SIZE = 16 << 20
#: Longer values are cut to this many characters before encoding, so that
#: one record stays a few KiB however long the headers that fed it.
MAX_VALUE = 1024

EventName = Literal["start", "answer", "end", "failure"]
EVENTS: tuple[str, ...] = get_args(EventName)
DIRECTIONS: tuple[str, ...] = get_args(Direction)


class LineError(ValueError):
    """An ``acc`` line that does not parse; the message names the problem."""


@dataclass(frozen=True, slots=True)
class AccRecord:
    """One event of one call, as seen by one local party (``user``)."""

    time: int
    """Unix time of the event, whole seconds."""
    event: EventName
    user: str
    call_id: str
    from_uri: str
    to_uri: str
    direction: Direction
    peer: str
    duration: int | None = None
    """Talk time in whole seconds; ``end`` events only."""
    status: int | None = None
    """The final SIP status; ``failure`` events only."""
    reason: str | None = None
    """Why the call ended or failed, one word: ``bye``, ``timeout``, ``cancelled``."""

    def __post_init__(self) -> None:
        # A bad record is a bug of the caller: fail where it is made, not
        # later in a worker thread that can only log it.
        if self.event not in EVENTS:
            raise ValueError(f"unknown acc event {self.event!r}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"unknown call direction {self.direction!r}")
        if self.duration is not None and self.duration < 0:
            raise ValueError("negative call duration")
        if self.status is not None and not 100 <= self.status <= 699:
            raise ValueError(f"SIP status out of range: {self.status}")
        if self.reason is not None and not _WORD_RE.fullmatch(self.reason):
            raise ValueError(f"reason must be one lower-case word: {self.reason!r}")


@dataclass(frozen=True, slots=True)
class AccGap:
    """Calls of ``user`` that got no records: the limit of records a minute was reached."""

    time: int
    """Unix time the gap ended (the end of the minute), whole seconds."""
    user: str
    since: int
    """Unix time the minute began."""
    calls: int
    """Calls (this user's side of them) that were left out."""
    limit: int
    """Records a minute the daemon writes for one user."""


#: What a user's ``acc`` holds: records, and notes of gaps.
AccEntry = AccRecord | AccGap


# --- values ------------------------------------------------------------------

# Printable ASCII except "%" passes unchanged; the rest is %XX of UTF-8.
_PLAIN_RE = re.compile(r"[!-$&-~]*")
_ENCODED_RE = re.compile(r"(?:[!-$&-~]|%[0-9A-Fa-f]{2})*")
_WORD_RE = re.compile(r"[a-z][a-z0-9-]{0,31}")
_KEY_RE = re.compile(r"[a-z][a-z0-9-]*")
_DIGITS_RE = re.compile(r"[0-9]{1,10}")
_TIME_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z")


def encode_value(value: str) -> str:
    """``value`` percent-encoded for an ``acc`` line (see the module text)."""
    if _PLAIN_RE.fullmatch(value):
        return value
    # surrogateescape: a header that was not UTF-8 keeps its raw bytes.
    data = value.encode("utf-8", "surrogateescape")
    return "".join(
        chr(b) if 0x21 <= b <= 0x7E and b != 0x25 else f"%{b:02X}" for b in data
    )


def decode_value(text: str) -> str:
    """The value of an encoded field; :class:`LineError` for a malformed one."""
    if not _ENCODED_RE.fullmatch(text):
        raise LineError(f"badly encoded value {text[:40]!r}")
    if "%" not in text:
        return text
    return unquote(text, encoding="utf-8", errors="surrogateescape")


def parse_time(text: str) -> int:
    m = _TIME_RE.fullmatch(text)
    if not m:
        raise LineError(f"bad time {text[:30]!r}: expected YYYY-MM-DDTHH:MM:SSZ")
    try:
        # datetime, not calendar.timegm: that one quietly turns 02-31 into 03-03.
        year, month, day, hour, minute, second = (int(g) for g in m.groups())
        stamp = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as exc:
        raise LineError(f"bad time {text!r}") from exc
    return int(stamp.timestamp())


# --- lines -------------------------------------------------------------------


def format_line(r: AccRecord) -> str:
    """The line for ``r``, without the newline; only printable ASCII."""
    fields = [
        ("event", r.event),
        ("user", r.user),
        ("call-id", r.call_id),
        ("from", r.from_uri),
        ("to", r.to_uri),
        ("direction", r.direction),
        ("peer", r.peer),
    ]
    if r.duration is not None:
        fields.append(("duration", str(r.duration)))
    if r.status is not None:
        fields.append(("status", str(r.status)))
    if r.reason is not None:
        fields.append(("reason", r.reason))
    parts = [format_time(r.time)]
    parts.extend(f"{key}={encode_value(value[:MAX_VALUE])}" for key, value in fields)
    return " ".join(parts)


def format_gap(g: AccGap) -> str:
    """The note for ``g``, without the newline: a ``#`` line, which readers skip."""
    return (f"# {format_time(g.time)} user={encode_value(g.user[:MAX_VALUE])} "
            f"unrecorded-calls={g.calls} since={format_time(g.since)} limit={g.limit}")


def format_entry(entry: AccEntry) -> str:
    return format_line(entry) if isinstance(entry, AccRecord) else format_gap(entry)


def parse_line(line: str) -> AccRecord:
    """The record on one line (without its newline).

    Unknown keys are skipped so that readers keep working when fields are
    added; a known field that is malformed, given twice or missing where
    the event needs it is a :class:`LineError`.
    """
    stamp, _, rest = line.partition(" ")
    when = parse_time(stamp)
    values: dict[str, str] = {}
    for token in rest.split(" ") if rest else []:
        key, eq, raw = token.partition("=")
        if not eq or not _KEY_RE.fullmatch(key):
            raise LineError(f"not a key=value field: {token[:40]!r}")
        if key in values:
            raise LineError(f"field {key!r} given twice")
        values[key] = decode_value(raw)
    for key in ("event", "user", "call-id", "direction"):
        if key not in values:
            raise LineError(f"no {key} field")
    event = values["event"]
    direction = values["direction"]
    if event not in EVENTS:
        raise LineError(f"unknown event {event[:20]!r}")
    if direction not in DIRECTIONS:
        raise LineError(f"unknown direction {direction[:20]!r}")
    duration = _number(values, "duration")
    status = _number(values, "status")
    reason = values.get("reason")
    if status is not None and not 100 <= status <= 699:
        raise LineError(f"bad status {status}")
    if reason is not None and not _WORD_RE.fullmatch(reason):
        raise LineError(f"bad reason {reason[:20]!r}")
    return AccRecord(
        time=when,
        event=event,  # type: ignore[arg-type]  # checked against EVENTS above
        user=values["user"],
        call_id=values["call-id"],
        from_uri=values.get("from", ""),
        to_uri=values.get("to", ""),
        direction=direction,  # type: ignore[arg-type]  # checked against DIRECTIONS above
        peer=values.get("peer", ""),
        duration=duration,
        status=status,
        reason=reason,
    )


def _number(values: dict[str, str], key: str) -> int | None:
    text = values.get(key)
    if text is None:
        return None
    # Not int(): it takes " 1", "1_0", "+1" and other scripts' digits.
    if not _DIGITS_RE.fullmatch(text):
        raise LineError(f"bad {key} {text[:20]!r}")
    return int(text)


def format_records(records: Iterable[AccEntry]) -> bytes:
    """Lines for ``records`` (and notes), each ended by a newline, as the file holds them."""
    return "".join(format_entry(r) + "\n" for r in records).encode("ascii")


def parse_file(text: str) -> tuple[list[AccRecord], list[str]]:
    """Every record of an ``acc`` file, and the problems met (``line N: why``).

    Blank lines and lines starting with ``#`` (notes added by hand) are
    skipped; a bad line is reported and the rest still read.
    """
    out: list[AccRecord] = []
    problems: list[str] = []
    # "\n" only: a decoded value never holds one, and str.splitlines()
    # would also cut at characters that are not line ends here.
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip("\r")
        if not line or line.startswith("#"):
            continue
        try:
            out.append(parse_line(line))
        except LineError as exc:
            problems.append(f"line {number}: {exc}")
    return out, problems


# --- the file ----------------------------------------------------------------


class AccFiles:
    """Blocking appends to ``~/.sr/acc``, safe from any thread.

    Appends for one user are serialised here as well as by the daemon's
    ordered job lane, so a rotation never interleaves with an append.
    """

    def __init__(self, *, rotate_size: int = ROTATE_SIZE) -> None:
        if rotate_size <= 0:
            raise ValueError("rotate_size must be positive")
        self.rotate_size = rotate_size
        self._lock = threading.Lock()
        self._user_locks: dict[str, threading.Lock] = {}

    def append(self, user: User, records: Sequence[AccEntry], *, fsync: bool = False) -> bool:
        """Append ``records`` to the user's ``acc``; True when it was rotated first.

        Creates ``~/.sr`` (0700) and ``acc`` (0600), owned by the user, when
        missing. Raises :class:`~srfs.files.home.HomeError` when the file cannot
        be used (a symlink, not the user's, ...); nothing is written then.
        """
        if not records:
            return False
        data = format_records(records)
        with self._lock:
            lock = self._user_locks.setdefault(user.name, threading.Lock())
        with lock, home.SrDir.open(user, create=True) as sr:
            try:
                sr.append(NAME, data, fsync=fsync, max_size=self.rotate_size)
                return False
            except home.HomeError as exc:
                if exc.errno != errno.EFBIG:
                    raise
            sr.rename(NAME, ROTATED_NAME)
            # A batch bigger than the cap on its own still goes in whole.
            sr.append(NAME, data, fsync=fsync, max_size=max(self.rotate_size, len(data)))
            return True

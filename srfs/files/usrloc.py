"""The contact line: ``~/.sr/usrloc`` and ``/run/sr/<user>/contacts``.

One binding per line: the contact URI, then space-separated ``key=value``
attributes, values with spaces or quotes double-quoted with backslash
escapes::

    sip:jan@192.0.2.10:5060;transport=udp aor=jan expires=3521 q=1.0 received=udp:203.0.113.5:40000 ua="Linksys/SPA3102-5.1.10" callid=217edcfa-3c466a22 cseq=65321

``expires`` is the number of seconds left, or ``never`` for a static
binding. The file on disk also carries ``expires_at`` (Unix time), which
wins over ``expires`` when the file is read back: a relative time would
stretch every registration by however long the daemon was down.

``/run/sr`` shows two more attributes at the end of each line, measured
by sipd's keep-alive and never stored: ``reachable`` (``yes``, ``no`` or
``unknown``) and, once an answer was timed, ``rtt`` (``12ms``). A line
written back with them is accepted, and they are ignored: what a probe
found is not something to set.
"""

from __future__ import annotations

import enum
import errno
import logging
import re
import threading
import zlib
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

from srfs.files import home
from srfs.files.homewatch import HomeWatch
from srfs.lines import content_lines, quote_value
from srfs.state.location import Binding, Reachability
from srfs.user import User

log = logging.getLogger("srfs.usrloc")

MAX_LINE = 4096

# A deliberately small check: srfs does not know SIP beyond what a contact
# line needs. sip:/sips: URI, optional userinfo, a host, optional port and
# parameters, no spaces or quotes.
_URI_RE = re.compile(
    r"sips?:(?:[^@\s\"<>]+@)?"
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?)"
    r"(?::[0-9]{1,5})?(?:;[^\s\"<>?]*)?",
    # ASCII: without it IGNORECASE lets "\u017fip:" (long s) pass as "sip:"
    # and "\u212a" (Kelvin sign) pass as a host letter, and \d takes any digit.
    re.IGNORECASE | re.ASCII,
)
_RECEIVED_RE = re.compile(
    r"(udp|tcp|tls|ws|wss):(\[[0-9A-Fa-f:.]+\]|[0-9.]+|[A-Za-z0-9.\-]+):([0-9]{1,5})", re.ASCII
)
_DIGITS_RE = re.compile(r"[0-9]{1,12}")
_NUMBER_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")
_AOR_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+")

KNOWN_KEYS = frozenset(
    {"aor", "expires", "expires_at", "q", "received", "ua", "callid", "cseq",
     "instance", "reg_id", "path", "registered", "reachable", "rtt"}
)
#: Shown, measured, never set: accepted on a line written back and ignored.
MEASURED_KEYS = frozenset({"reachable", "rtt"})
_REACHABLE_VALUES = frozenset({"yes", "no", "unknown"})
_RTT_RE = re.compile(r"[0-9]{1,9}ms", re.ASCII)


class LineError(ValueError):
    """A contact line that cannot be used; the message names the problem."""


def tokenize(line: str) -> list[str]:
    """Split at spaces outside double quotes; quoted parts are unescaped."""
    if '"' not in line:
        # Every line of every ~/.sr/usrloc comes here at start: without a
        # quote, splitting is all there is to do (14 us a character at a
        # time compiled, 1 us so). With quotes, the loop compiled beats
        # regular expressions (11 against 19 us).
        return [t for t in line.replace("\t", " ").split(" ") if t]
    tokens: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            break
        buf: list[str] = []
        while i < n and line[i] not in " \t":
            c = line[i]
            if c == '"':
                i += 1
                while True:
                    if i >= n:
                        raise LineError("unterminated quoted value")
                    c = line[i]
                    if c == "\\" and i + 1 < n:
                        buf.append(line[i + 1])
                        i += 2
                        continue
                    if c == '"':
                        i += 1
                        break
                    buf.append(c)
                    i += 1
            else:
                buf.append(c)
                i += 1
        tokens.append("".join(buf))
    return tokens


def format_line(b: Binding, now: float, *, on_disk: bool = False,
                reach: Reachability | None = None) -> str:
    """The line for ``b``; ``on_disk`` adds the absolute times, ``reach``
    what the keep-alive found (``/run/sr`` only)."""
    remaining = b.remaining(now)
    parts = [b.contact, f"aor={quote_value(b.aor)}",
             "expires=never" if remaining is None else f"expires={remaining}",
             f"q={b.q:.3g}" if b.q != int(b.q) else f"q={b.q:.1f}"]
    if b.received:
        parts.append(f"received={b.received}")
    if b.ua:
        parts.append(f"ua={quote_value(b.ua)}")
    if b.callid:
        parts.append(f"callid={quote_value(b.callid)}")
    if b.cseq:
        parts.append(f"cseq={b.cseq}")
    if b.instance is not None:
        parts.append(f"instance={quote_value(b.instance)}")
    if b.reg_id is not None:
        parts.append(f"reg_id={b.reg_id}")
    if b.path:
        parts.append(f"path={quote_value(','.join(b.path))}")
    if on_disk:
        if b.expires is not None:
            parts.append(f"expires_at={b.expires:.0f}")
        if b.registered:
            parts.append(f"registered={b.registered:.0f}")
    if reach is not None:
        parts.append(f"reachable={reach.state.value}")
        if reach.rtt is not None:
            parts.append(f"rtt={format_rtt(reach.rtt)}")
    return " ".join(parts)


def format_rtt(seconds: float) -> str:
    """A round-trip time as the file shows it: whole milliseconds, ``12ms``."""
    return f"{max(0, round(seconds * 1000))}ms"


# Printable ASCII without space: what a URI, an AOR and the other
# machine-made attributes may hold once written to a file.
_PRINTABLE_ASCII_RE = re.compile(r"[\x21-\x7e]*", re.ASCII)
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` with every control character replaced by "?" (a user agent, say)."""
    return _CONTROL_RE.sub("?", text)


def check_binding(b: Binding) -> str | None:
    """Why ``b`` cannot be kept as a line of ``~/.sr/usrloc``, or None.

    Every way a binding enters (REGISTER, a write through ``/run/sr``, the
    reload at start) passes this, so what is accepted is also what reloads:
    a contact URI of the shape :func:`parse_line` takes, no control
    characters anywhere, and a line no longer than :data:`MAX_LINE`.
    """
    if not _URI_RE.fullmatch(b.contact) or not _PRINTABLE_ASCII_RE.fullmatch(b.contact):
        return "contact is not a plain sip: or sips: URI"
    if not _AOR_RE.fullmatch(b.aor):
        return "bad AOR"
    for name, value in (("received", b.received), ("instance", b.instance), ("path", ",".join(b.path))):
        if value and not _PRINTABLE_ASCII_RE.fullmatch(value.replace(" ", "")):
            return f"control or non-ASCII characters in {name}"
    for name, value in (("user agent", b.ua), ("call-id", b.callid)):
        if value and _CONTROL_RE.search(value):
            return f"control characters in {name}"
    if not _surely_fits(b) and len(
            format_line(b, b.registered, on_disk=True).encode("utf-8", "surrogateescape")) > MAX_LINE:
        return f"contact line longer than {MAX_LINE} bytes"
    return None


#: Bytes a line takes besides its texts: the keys, the spaces, the quotes
#: and seven numbers below 10**15 take under 250.
_LINE_FRAME = 512


def _surely_fits(b: Binding) -> bool:
    """Whether ``b``'s line is within :data:`MAX_LINE` for certain, without
    making it: every REGISTER and every reloaded line is checked, and
    making the line was a tenth of the reload's time. Quoting at most
    doubles a text, and UTF-8 takes at most 4 bytes a character."""
    for number in (b.expires or 0.0, b.registered, b.cseq, b.reg_id or 0, b.q):
        if not -1e15 < number < 1e15:
            return False
    texts = (len(b.contact) + len(b.aor) + len(b.received or "") + len(b.ua or "")
             + len(b.callid) + len(b.instance or "") + sum(len(p) + 1 for p in b.path))
    return 8 * texts + _LINE_FRAME <= MAX_LINE


def parse_line(line: str, *, user: str, default_aor: str, now: float) -> Binding:
    """A binding from one line. A missing ``expires`` means static."""
    if len(line) > MAX_LINE:
        raise LineError(f"line longer than {MAX_LINE} bytes")
    tokens = tokenize(line)
    if not tokens:
        raise LineError("empty line")
    uri, *attrs = tokens
    if not _URI_RE.fullmatch(uri) or not _PRINTABLE_ASCII_RE.fullmatch(uri):
        raise LineError(f"not a sip: or sips: contact URI: {uri[:60]!r}")
    values: dict[str, str] = {}
    for attr in attrs:
        key, eq, value = attr.partition("=")
        if not eq:
            raise LineError(f"attribute without '=': {attr[:40]!r}")
        if key not in KNOWN_KEYS:
            # A typo such as "expire=0" must not quietly add a static contact.
            raise LineError(f"unknown attribute {key[:20]!r}")
        if key in values:
            raise LineError(f"attribute {key!r} given twice")
        values[key] = value
    reachable = values.get("reachable")
    if reachable is not None and reachable not in _REACHABLE_VALUES:
        raise LineError(f"bad reachable {reachable[:20]!r}: expected yes, no or unknown")
    rtt = values.get("rtt")
    if rtt is not None and not _RTT_RE.fullmatch(rtt):
        raise LineError(f"bad rtt {rtt[:20]!r}: expected milliseconds such as 12ms")
    aor = values.get("aor", default_aor)
    if not _AOR_RE.fullmatch(aor):
        raise LineError(f"bad aor {aor!r}")
    expires: float | None
    if "expires_at" in values:
        expires = _number(values, "expires_at")
    elif values.get("expires", "never") == "never":
        expires = None
    else:
        expires = now + _integer(values, "expires", 0, 2**31)
    q = 1.0
    if "q" in values:
        q = _number(values, "q")
        if not 0 <= q <= 1:
            raise LineError("q must lie between 0 and 1")
    received = values.get("received")
    if received is not None:
        m = _RECEIVED_RE.fullmatch(received)
        if not m or not 0 < int(m.group(3)) < 65536:
            raise LineError(f"bad received {received!r}: expected transport:host:port")
    reg_id = _integer(values, "reg_id", 1, 2**31) if "reg_id" in values else None
    return Binding(
        aor=aor,
        user=user,
        contact=uri,
        expires=expires,
        q=q,
        callid=values.get("callid", ""),
        cseq=_integer(values, "cseq", 0, 2**31) if "cseq" in values else 0,
        instance=values.get("instance"),
        reg_id=reg_id,
        path=tuple(p for p in values.get("path", "").split(",") if p),
        received=received,
        ua=values.get("ua"),
        registered=_number(values, "registered") if "registered" in values else now,
    )


def _integer(values: dict[str, str], key: str, low: int, high: int) -> int:
    text = values[key]
    # Not str.isdigit(): it takes "²" (which int() refuses) and other scripts' digits.
    if not _DIGITS_RE.fullmatch(text) or not low <= int(text) <= high:
        raise LineError(f"bad {key} {text[:20]!r}")
    return int(text)


def _number(values: dict[str, str], key: str) -> float:
    # A plain decimal: float() would also take "nan", "1_0", " 1" and
    # other scripts' digits.
    text = values[key]
    if not _NUMBER_RE.fullmatch(text):
        raise LineError(f"bad {key} {text[:20]!r}")
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise LineError(f"bad {key} {text[:20]!r}")
    return value


HEADER = "# sipd registrations; rewritten by sipd, edit /run/sr/<user>/contacts instead"
_VERSION_RE = re.compile(r"; write ([0-9a-f]{16})\.([0-9]{1,19}) crc32 ([0-9a-f]{8})\Z", re.ASCII)


@dataclass(frozen=True, slots=True)
class Version:
    """Which write of which sipd run made a file: ``run`` is a random number
    drawn at start, ``seq`` counts the run's writes."""

    run: str
    seq: int

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, run: str, seq: int) -> None:
        object.__setattr__(self, "run", run)
        object.__setattr__(self, "seq", seq)

    def __str__(self) -> str:
        return f"{self.run}.{self.seq}"


class Check(enum.Enum):
    """What the first line of a usrloc file says of the rest."""

    #: No checksum: written by hand, or by an older sipd. Taken as it is.
    PLAIN = "plain"
    #: The lines below are those the checksum was made of.
    WHOLE = "whole"
    #: They are not (a write cut short by a crash, or an edit that kept the
    #: line), or the file holds NUL bytes (blocks never written).
    DAMAGED = "damaged"


def render_file(bindings: Iterable[Binding], now: float, version: Version | None = None) -> str:
    """The file's text; with ``version``, its first line carries that and a
    checksum of the lines below (see :func:`check_file`)."""
    body = "".join(format_line(b, now, on_disk=True) + "\n" for b in bindings)
    if version is None:
        return f"{HEADER}\n{body}"
    crc = zlib.crc32(body.encode("utf-8", "surrogateescape"))
    return f"{HEADER}; write {version} crc32 {crc:08x}\n{body}"


def check_file(data: bytes) -> tuple[Check, Version | None]:
    """Whether ``data`` is a usrloc file as a run of sipd wrote it (and which
    write), one that lost part of that, or one without a checksum."""
    if b"\0" in data:
        return Check.DAMAGED, None
    first, newline, body = data.partition(b"\n")
    if not first.startswith(HEADER.encode()):
        return Check.PLAIN, None
    m = _VERSION_RE.search(first.decode("ascii", "replace"))
    if m is None:
        return (Check.PLAIN, None) if first == HEADER.encode() else (Check.DAMAGED, None)
    if not newline or zlib.crc32(body) != int(m.group(3), 16):
        return Check.DAMAGED, None
    return Check.WHOLE, Version(m.group(1), int(m.group(2)))


_READ_AS_IT_IS = "its first line's checksum does not match the lines below: read as it is"


def choose_file(data: bytes, spare: bytes | None,
                checked: tuple[Check, Version | None] | None = None,
                ) -> tuple[bytes, str | None]:
    """What to read of ``usrloc`` and its spare, and why when it is not usrloc as it is.

    sipd writes a file over its spare and swaps the two names, and under
    load it syncs only once the names are swapped (see
    :func:`srfs.files.home.write_files`): a crash before that sync can
    leave in place a file whose blocks were not all written, or not at
    all (the spare's old text, an earlier write of the same run), beside
    the spare that holds the last durable text. ``checked`` is
    :func:`check_file`'s word on ``data``, where the caller has it.
    """
    check, version = checked if checked is not None else check_file(data)
    if spare is not None and check is not Check.PLAIN:
        spare_check, spare_version = check_file(spare)
        if spare_check is Check.WHOLE and spare_version is not None:
            if check is Check.DAMAGED:
                return spare, ("its first line's checksum does not match the lines below (a "
                               "write cut short, or an edit that kept that line): read its "
                               "spare, the write before")
            if (version is not None and version.run == spare_version.run
                    and version.seq < spare_version.seq):
                return spare, ("it is older than its spare (a write cut short before its "
                               "blocks were written): read the spare, the write before")
    return data, _READ_AS_IT_IS if check is Check.DAMAGED else None


def parse_file(text: str, *, user: str, now: float) -> tuple[list[Binding], list[str]]:
    """The bindings of a usrloc file that are still current, and the problems met.

    Expired bindings are dropped silently: that is what expiry means.
    """
    out: list[Binding] = []
    problems: list[str] = []
    for number, line in content_lines(text):
        try:
            b = parse_line(line, user=user, default_aor=user, now=now)
        except LineError as exc:
            problems.append(f"line {number}: {exc}")
            continue
        if b.expires is None or b.expires > now:
            out.append(b)
    return out, problems


class UsrlocFiles:
    """Blocking reads and writes of ``~/.sr/usrloc``, safe from any thread.

    Each write carries the version of the in-memory state it was rendered
    from. Writes for one user are serialised, and a write older than what
    is already on disk is skipped: the newer file holds everything the older
    one would have, so the older write still counts as done.
    """

    NAME: ClassVar[str] = "usrloc"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._user_locks: dict[str, threading.Lock] = {}
        self._written: dict[str, int] = {}

    def save_many(self, batch: Sequence[tuple[User, int, str]], *,
                  checksummed_for: Container[str] = ()) -> dict[str, BaseException | None]:
        """Write each user's file of the batch, durably, in one group
        (:func:`srfs.files.home.write_files`).

        One entry per user in the batch: None once the user's file is on
        disk (or a newer one already was), else why not. A user appears at
        most once in a batch. A user's files are written by one thread at a
        time (the C writer writes over one spare per file).
        """
        with self._lock:
            locks = {user.name: self._user_locks.setdefault(user.name, threading.Lock())
                     for user, _, _ in batch}
        # Always taken in the same order: two batches never wait on each other.
        names = sorted(locks)
        for name in names:
            locks[name].acquire()
        try:
            due = [(user, version, text) for user, version, text in batch
                   if self._written.get(user.name, -1) < version]
            errors = home.write_files(
                [(user, self.NAME, text.encode("utf-8", "surrogateescape")) for user, _, text in due],
                checksummed_for=checksummed_for)
            result: dict[str, BaseException | None] = {user.name: None for user, _, _ in batch}
            for (user, version, _), error in zip(due, errors, strict=True):
                result[user.name] = error
                if error is None:
                    self._written[user.name] = version
            return result
        finally:
            for name in reversed(names):
                locks[name].release()

    @staticmethod
    def load(user: User, now: float, watch: HomeWatch | None = None,
             ) -> tuple[list[Binding], list[str]]:
        """The user's bindings and the problems of the lines refused; with
        ``watch``, their ``~/.sr`` is watched from then on.

        A file with a checksum is read with its spare, which replaces it
        where :func:`choose_file` says so (with a warning that says why).
        """
        # One turn of the user's identity for the directory and both files:
        # at start, every member's files are read (home.as_user).
        with home.as_user(user):
            try:
                sr = home.SrDir.open(user, watch=watch)
            except home.HomeError as e:
                if e.errno == errno.ENOENT:
                    return [], []
                raise
            with sr:
                data = sr.read(UsrlocFiles.NAME)
                if data is None:
                    return [], []
                spare: bytes | None = None
                checked = check_file(data)
                if checked[0] is not Check.PLAIN:
                    try:
                        spare = sr.read(UsrlocFiles.NAME, spare=True)
                    except home.HomeError:
                        spare = None  # not one sipd wrote: nothing to fall back on
        chosen, why = choose_file(data, spare, checked)
        if why is not None:
            log.warning("~%s/.sr/usrloc: %s", user.name, why)
        return parse_file(chosen.decode("utf-8", "surrogateescape"), user=user.name, now=now)

"""Log lines that outside values cannot break, fake or flood.

sipd logs values that come from outside: SIP Request-URIs and headers,
user names, lines of files that users write. The log is read by people on
terminals and by fail2ban, which matches lines such as::

    auth failed: user "jan" from 203.0.113.5 port 5060 (REGISTER): wrong password

so a value must not be able to end the line, add one, or close its quotes
and write a field of its own. Two layers see to it:

- :class:`LineFormatter`, installed for the daemon's handler, escapes
  every non-printable character of each formatted record (line breaks,
  NUL, C1 controls, U+2028/U+2029, bidirectional controls): a record is
  one line, whatever its arguments held. A traceback logged on purpose
  (``exc_info``) keeps its lines, each of them marked as a continuation.
- :func:`quote` writes a value between double quotes with backslashes,
  quotes and non-printables escaped, so nothing inside the quotes is a
  double quote and a value cannot end its field early. Use it wherever an
  outside value is embedded in a message.

Files with thousands of bad lines must not become thousands of log lines:
:func:`log_problems` logs the first few problems and counts the rest,
:class:`Recurring` logs a condition that is met again and again (a user's
unreadable file, seen on every request) once per change, and :class:`Tally`
turns an event that outside traffic can repeat at will (a refused
connection) into one line per interval with a count.

This module lives in srfs because both packages log outside values and
srfs never imports sipd.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from types import TracebackType
from typing import TextIO

__all__ = [
    "PROBLEMS_SHOWN",
    "JournalFormatter",
    "LineFormatter",
    "LineHandler",
    "Recurring",
    "Tally",
    "escape",
    "log_problems",
    "quote",
    "syslog_priority",
]

#: How many problems of one file :func:`log_problems` logs one by one.
PROBLEMS_SHOWN = 3
#: Longest quoted value, in characters, before :func:`quote` cuts it.
QUOTE_LIMIT = 128
#: What starts every continuation line of a traceback (see :class:`LineFormatter`).
CONTINUATION = "| "

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def _escaped_char(c: str) -> str:
    n = ord(c)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def escape(text: str) -> str:
    """``text`` with every character Python does not call printable escaped.

    Printable means what :meth:`str.isprintable` says, plus the ASCII
    space: C0 and C1 controls, DEL, line and paragraph separators, other
    separators, format characters (bidirectional overrides, zero-width
    ones) and lone surrogates (bytes that were not UTF-8) become ``\\xNN``,
    ``\\uNNNN`` or ``\\UNNNNNNNN``. Backslashes stay as they are: this is
    the safety net for whole lines; :func:`quote` is exact.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escaped_char(c) for c in text)


def quote(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``value`` as one double-quoted field that no content can end early.

    Inside the quotes ``\\`` is written ``\\\\``, ``"`` is written
    ``\\x22`` (not ``\\"``, which a pattern such as ``"[^"]*"`` would still
    take for the end of the field) and non-printables are escaped as by
    :func:`escape`. A value longer than ``limit`` characters is cut, and
    ``...`` follows the closing quote, where no value can put it.
    """
    text = str(value)
    cut = len(text) > limit
    if cut:
        text = text[:limit]
    if text.isprintable() and '"' not in text and "\\" not in text:
        body = text
    else:
        body = "".join(
            "\\\\" if c == "\\" else "\\x22" if c == '"' else c if c.isprintable()
            else _escaped_char(c)
            for c in text
        )
    return f'"{body}"...' if cut else f'"{body}"'


class LineFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose records are one line each.

    The formatted message (prefix, message and arguments) goes through
    :func:`escape`. Only a traceback or stack logged on purpose
    (``exc_info``, ``stack_info``, :meth:`logging.Logger.exception`) adds
    lines, and each of them starts with ``| `` so that none can pass for a
    record of its own, even where an exception's text came from outside.
    """

    def __init__(self, fmt: str | None = None, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        self._uses_time = self.usesTime()

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info or record.exc_text or record.stack_info):
            # Almost every record: Formatter.format's steps without its
            # search of the format for a time and of the record for a
            # traceback (a call's three lines are logged on the event loop).
            record.message = record.getMessage()
            if self._uses_time:
                record.asctime = self.formatTime(record, self.datefmt)
            return self.formatMessage(record)
        # logging caches the traceback text on the record for every handler:
        # one formatted by another handler would be used unmarked.
        cached = record.exc_text
        if record.exc_info:
            record.exc_text = None
        elif cached:
            record.exc_text = _continuation(cached)
        try:
            return super().format(record)
        finally:
            record.exc_text = cached

    #: (whole second, its local time as logging's default format writes it).
    _second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        """logging's default stamp, with the date and time made once a second.

        A busy daemon logs lines by the hundred a second (three per call),
        and strftime was a fifth of what each line cost.
        """
        if datefmt is not None or self.default_msec_format is None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = (second, time.strftime(self.default_time_format, self.converter(second)))
            self._second = cached  # one tuple: a reader in another thread sees a whole pair
        return self.default_msec_format % (cached[1], record.msecs)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return escape(super().formatMessage(record))

    def formatException(self, ei: _ExcInfo | tuple[None, None, None]) -> str:  # noqa: N802
        return _continuation(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return _continuation(super().formatStack(stack_info))


class LineHandler(logging.Handler):
    """Each record as one ``write(2)`` on a stream's file descriptor.

    What :class:`logging.StreamHandler` does on a line-buffered standard
    error, with less on the way: no text layer that encodes into a buffer
    and flushes it, no second turn of the lock to flush. A record is in
    the journal (or the file) once logged, as before. Through
    StreamHandler the three lines of each call were about a tenth of its
    CPU in the daemon; this takes about a third of that off. A stream
    without a file descriptor (a test's capture) is written as
    StreamHandler would.
    """

    terminator = "\n"

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.encoding = getattr(stream, "encoding", None) or "utf-8"
        try:
            self.fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):
            self.fd = None

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
            fd = self.fd
            if fd is None:
                self.stream.write(line)
                self.stream.flush()
                return
            # What the text layer would have written: an unencodable
            # character as a backslash escape, never an error.
            data = line.encode(self.encoding, "backslashreplace")
            while data:
                data = data[os.write(fd, data):]
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - logging's own rule: report, never raise
            self.handleError(record)


#: The loggers of the project itself; everything else is a library's.
OWN_LOGGERS = ("sipd", "srfs")


def set_log_level(level: str) -> None:
    """``level`` (``trace``, ``debug``, ... ``error``) for the project's loggers.

    The libraries' loggers (trio, pyfuse3, asyncio) stay at warning unless
    the level is ``trace``: their debug messages are for debugging them.
    Used at start and by a reload, so both mean the same by a level.
    """
    own = logging.DEBUG if level == "trace" else logging.getLevelNamesMapping()[level.upper()]
    logging.getLogger().setLevel(logging.DEBUG if level == "trace" else max(own, logging.WARNING))
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(own)


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a :mod:`logging` level: what ``journalctl -p`` filters on."""
    if levelno >= logging.CRITICAL:
        return 2  # crit
    if levelno >= logging.ERROR:
        return 3  # err
    if levelno >= logging.WARNING:
        return 4  # warning
    if levelno >= logging.INFO:
        return 6  # info
    return 7  # debug


class JournalFormatter(LineFormatter):
    """A :class:`LineFormatter` for a standard error that journald reads.

    journald takes a leading ``<N>`` (sd-daemon(3)) as the line's priority
    and strips it, so ``journalctl -p warning`` shows warnings and worse.
    Each line of the record gets it, a traceback's continuation lines too:
    journald stores every line as an entry of its own, and one without the
    prefix would pass for an info message.
    """

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def _continuation(text: str) -> str:
    return "\n".join(CONTINUATION + escape(line) for line in text.split("\n"))


def log_problems(
    logger: logging.Logger,
    what: str,
    problems: Iterable[object],
    *,
    total: int | None = None,
    level: int = logging.WARNING,
    shown: int = PROBLEMS_SHOWN,
) -> None:
    """Log the first ``shown`` problems as ``what: problem`` lines, then one count.

    ``what`` names the file (``"jan's ~/.sr/config"``); ``total`` is the
    number of problems when ``problems`` holds only the first ones (as
    :class:`srfs.files.userconfig.UserConfig` keeps). A file of a million bad
    lines gives ``shown + 1`` lines, not a million.
    """
    count = 0
    for problem in problems:
        if count < shown:
            logger.log(level, "%s: %s", what, problem)
        count += 1
    if total is None or total < count:
        total = count
    if total > shown:
        logger.log(level, "%s: %d more problem(s) not logged, %d in all", what,
                   total - shown, total)


class Recurring:
    """Which condition was last logged per key, so that it is logged once per change.

    ``report(key, text)`` is True when ``text`` is new for ``key`` (log it
    then); ``clear(key)`` forgets the key once the condition is gone, so
    that its return is logged again. Keys are few (users, files), but the
    oldest are forgotten beyond ``max_keys``. Thread safe.
    """

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._last: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def report(self, key: str, text: str) -> bool:
        with self._lock:
            if self._last.get(key) == text:
                self._last.move_to_end(key)
                return False
            self._last[key] = text
            self._last.move_to_end(key)
            while len(self._last) > self.max_keys:
                self._last.popitem(last=False)
            return True

    def clear(self, key: str) -> None:
        with self._lock:
            self._last.pop(key, None)


class Tally:
    """Counts an event and says when to log it: at once, then at most once per ``interval``.

    ``count(now)`` returns None while a line was logged less than
    ``interval`` seconds ago, else the number of events to report in the
    line to log now (this one and those held back since the last line).
    Events held back at the end of a burst are reported with the next one;
    keep a counter in the statistics for the exact total. Sans-IO: ``now``
    is any monotonic clock.
    """

    def __init__(self, interval: float = 60.0) -> None:
        self.interval = interval
        self._held = 0
        self._last: float | None = None

    def count(self, now: float) -> int | None:
        self._held += 1
        if self._last is not None and now - self._last < self.interval:
            return None
        held, self._held, self._last = self._held, 0, now
        return held

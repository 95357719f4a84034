"""Cutting a byte stream (TCP, later TLS) into SIP messages, sans-IO.

RFC 3261 §18.3: on a stream the header block ends at the first empty line
and Content-Length says how many body bytes follow (none when it is
missing). RFC 5626 §3.5.1 adds keep-alives between messages: a double CRLF
is a "ping" the receiver answers with a single CRLF, the "pong".

    framer = StreamFramer()
    for frame in framer.feed(data):          # any chunking of the stream
        if isinstance(frame, Ping):
            send(b"\\r\\n")
        elif isinstance(frame, Pong):
            pass
        else:
            handle(parse(frame))              # the bytes of one message

Frames are ``bytes``; :class:`Ping` and :class:`Pong` are ``bytes``
subclasses holding the keep-alive as received, so code that treats every
frame as bytes (``frame.strip(b"\\r\\n")``) keeps working.

A lone CRLF at the end of the data may be the first half of a ping, so it
is held until the next byte decides: it is then reported as a Pong, or as
part of a Ping.

Work is linear in the bytes fed: the search for the end of the header block
resumes where it stopped, and consumed bytes are dropped once per feed().
"""

from __future__ import annotations

import re

from sipd.sip.errors import ParseError
from sipd.sip.message import MAX_MESSAGE_SIZE, Message, parse

__all__ = ["PING", "PONG", "FramingError", "Ping", "Pong", "StreamFramer"]

_PING = b"\r\n\r\n"
_CR = 0x0D
_LF = 0x0A
# A Content-Length (or compact "l") field at the start of a line, any case,
# with its value including folded continuation lines.
_CLEN_RE = re.compile(rb"\n(?:content-length|l)[ \t]*:((?:[^\r\n]|\r?\n[ \t])*)", re.IGNORECASE)
_DIGITS_MAX = 10


class FramingError(ParseError):
    """The stream cannot be cut into messages; the connection must close.

    ``status`` is what the transport may answer before closing when
    ``message`` (the header fields read so far) holds a usable request:
    400 for a bad Content-Length, 513 for a message over the size limit.
    ``frames`` are the complete messages that came before the problem in
    the same feed() call.
    """

    def __init__(
        self,
        reason: str,
        message: Message | None = None,
        status: int = 400,
    ) -> None:
        super().__init__(reason, message)
        self.status = status
        self.frames: list[bytes] = []


class Ping(bytes):
    """A double-CRLF keep-alive; answer it with a single CRLF (RFC 5626)."""

    __slots__ = ()


class Pong(bytes):
    """A single CRLF between messages: an answer to our ping, nothing to do."""

    __slots__ = ()


PING = Ping(_PING)
PONG = Pong(b"\r\n")


class StreamFramer:
    """Turns the bytes of one connection into message frames."""

    def __init__(self, max_message_size: int = MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self._buf = bytearray()
        # Start of the bytes not yet handed out.
        self._pos = 0
        # Where the search for the end of the header block resumes; equal
        # to _pos while no message has started.
        self._scan = 0
        # Length of the current frame once its header block is complete.
        self._need = -1
        self._error: FramingError | None = None

    @property
    def pending(self) -> bool:
        """True while part of a message is buffered (not just a keep-alive)."""
        rest = len(self._buf) - self._pos
        if rest >= 4:
            return True
        return rest > 0 and not _PING.startswith(self._buf[self._pos :])

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the frames they complete, in order.

        Raises :class:`FramingError` when the stream cannot be framed; the
        framer then stays broken and raises it again on every call.
        """
        if self._error is not None:
            raise self._error
        self._buf += data
        frames: list[bytes] = []
        try:
            while True:
                frame = self._next()
                if frame is None:
                    break
                frames.append(frame)
        except FramingError as exc:
            exc.frames = frames
            self._error = exc
            raise
        finally:
            if self._pos:
                del self._buf[: self._pos]
                self._scan -= self._pos
                self._pos = 0
        return frames

    def _next(self) -> bytes | None:
        buf = self._buf
        pos = self._pos
        n = len(buf)
        if self._need < 0:
            if self._scan <= pos:
                # Between messages: keep-alives, or the first byte of one.
                while pos < n and buf[pos] in (_CR, _LF):
                    head = bytes(buf[pos : pos + 4])
                    if head == _PING:
                        self._pos = self._scan = pos + 4
                        return PING
                    if len(head) < 4 and _PING.startswith(head):
                        return None  # a pong, or half of a ping: wait
                    if head[:2] == b"\r\n":
                        self._pos = self._scan = pos + 2
                        return PONG
                    if head[0] == _LF:
                        self._pos = self._scan = pos + 1
                        return Pong(b"\n")  # a peer with bare-LF line ends
                    pos += 1  # a CR on its own: noise, skipped
                    self._pos = self._scan = pos
                if pos >= n:
                    return None
            end = self._end_of_headers(buf, pos, n)
            if end < 0:
                if n - pos > self.max_message_size:
                    raise FramingError("Header block too large", self._partial(pos, n), 513)
                return None
            self._need = end - pos + self._content_length(pos, end)
            if self._need > self.max_message_size:
                raise FramingError("Message too large", self._partial(pos, end), 513)
        if n - pos < self._need:
            return None
        frame = bytes(buf[pos : pos + self._need])
        self._pos = self._scan = pos + self._need
        self._need = -1
        return frame

    def _end_of_headers(self, buf: bytearray, pos: int, n: int) -> int:
        """Index just past the empty line ending the header block, or -1.

        The empty line is "\\r\\n" or, from peers that send bare LFs, "\\n".
        """
        start = max(pos, self._scan - 2)
        crlf = buf.find(b"\n\r\n", start)
        lf = buf.find(b"\n\n", start, crlf + 2 if crlf >= 0 else n)
        if lf >= 0:
            return lf + 2
        if crlf >= 0:
            return crlf + 3
        self._scan = max(pos, n)
        return -1

    def _content_length(self, pos: int, end: int) -> int:
        head = bytes(self._buf[pos:end])
        values = {m.group(1).strip(b" \t\r\n") for m in _CLEN_RE.finditer(head)}
        if not values:
            return 0  # RFC 3261 §18.3 makes it mandatory on streams; be lenient
        if len(values) > 1:
            raise FramingError("Conflicting Content-Length headers", self._partial(pos, end))
        value = values.pop()
        if not value.isdigit():
            raise FramingError("Bad Content-Length header", self._partial(pos, end))
        if len(value.lstrip(b"0")) > _DIGITS_MAX:
            raise FramingError("Message too large", self._partial(pos, end), 513)
        return int(value)

    def _partial(self, pos: int, end: int) -> Message | None:
        """The header fields of a message that cannot be framed, if readable.

        Only for the error path: the transport may answer it before closing.
        """
        head = bytes(self._buf[pos:end])
        last = head.rfind(b"\n")
        if last < 0:
            return None
        try:
            return parse(head[: last + 1] + b"\r\n")
        except ParseError as exc:
            return exc.message

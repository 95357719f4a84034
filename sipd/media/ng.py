"""rtpengine's ng control protocol, sans-IO: messages, cookies, retries and time-outs.

A message is one UDP datagram, ``<cookie> <bencoded dictionary>``; the
reply carries the same cookie. rtpengine keeps the replies of recent
cookies, so a request sent again is answered again without being carried
out twice: retrying is safe.

:class:`NgClient` keeps the requests in flight. The I/O layer hands it
each request with a ``token`` of its own (what to answer when the reply
comes), sends the datagram it returns, feeds it every datagram that
arrives and calls :meth:`NgClient.due` at :meth:`NgClient.next_deadline`;
it never reads a clock (``now`` is passed in) and never touches a socket.
A request is sent :attr:`NgClient.tries` times, evenly over
:attr:`NgClient.timeout` seconds, then answered with :class:`NgTimeout`.

Values: the dictionaries here have ``str`` keys and ``str``, ``int``,
list and dictionary values. Text goes over the wire as UTF-8; bytes that
are not UTF-8 (an SDP body in another charset) come back unchanged,
carried as surrogate escapes (``errors="surrogateescape"``).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar

from bencodepy import BencodeDecodeError, BencodeDecoder, BencodeEncoder

from sipd.core.work import Outcome

__all__ = [
    "NgClient",
    "NgError",
    "NgTimeout",
    "Reply",
    "decode",
    "encode",
]

T = TypeVar("T")

#: A decoded ng dictionary.
Reply: TypeAlias = dict[str, Any]

#: Tries of one request, and how long all of them may take, seconds.
DEFAULT_TRIES = 3
DEFAULT_TIMEOUT = 1.0
#: Nesting accepted in a reply: rtpengine's deepest (``query``) is about 8.
MAX_DEPTH = 32

_encoder = BencodeEncoder()
_decoder = BencodeDecoder(max_depth=MAX_DEPTH)


class NgError(Exception):
    """rtpengine refused a request (``result: error``), or its reply made no sense."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NgTimeout(NgError):
    """No reply after every try."""


def _wire(value: Any) -> Any:
    """``value`` with every text as UTF-8 bytes, for the encoder."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (bytes, int)):
        return value
    if isinstance(value, (list, tuple)):
        return [_wire(v) for v in value]
    if isinstance(value, Mapping):
        return {_wire(str(k)): _wire(v) for k, v in value.items()}
    raise TypeError(f"cannot send a {type(value).__name__} in an ng message")


def _text(value: Any) -> Any:
    """A decoded value with bytes as text (surrogate escapes keep them exact)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        return {_text(k): _text(v) for k, v in value.items()}
    return value


def encode(cookie: str, message: Mapping[str, Any]) -> bytes:
    """One ng datagram: the cookie, a space, the bencoded dictionary."""
    if not cookie or " " in cookie:
        raise ValueError(f"bad ng cookie {cookie!r}")
    body: bytes = _encoder.encode(_wire(message))
    return cookie.encode("ascii") + b" " + body


def decode(data: bytes) -> tuple[str, Reply]:
    """The cookie and dictionary of one ng datagram; :class:`NgError` if it is not one.

    Dictionary keys may come in any order: rtpengine writes them in the
    order it builds them, not sorted as bencode asks.
    """
    cookie, sep, body = data.partition(b" ")
    if not sep or not cookie:
        raise NgError("not an ng message: no cookie")
    try:
        value = _decoder.decode(body)
    except BencodeDecodeError as exc:
        raise NgError(f"not an ng message: {exc}") from None
    if not isinstance(value, dict):
        raise NgError("not an ng message: not a dictionary")
    return cookie.decode("ascii", "replace"), _text(value)


def check(reply: Reply) -> Reply:
    """``reply`` if rtpengine carried the request out, else :class:`NgError`."""
    result = reply.get("result")
    if result in ("ok", "pong"):
        return reply
    if result == "error":
        reason = reply.get("error-reason")
        raise NgError(reason if isinstance(reason, str) and reason else "error")
    raise NgError(f"unexpected result {str(result)[:40]!r}")


@dataclass(slots=True)
class _InFlight(Generic[T]):
    token: T
    data: bytes
    started: float
    sent: int
    next_at: float


class NgClient(Generic[T]):
    """The ng requests in flight to one rtpengine, and when each is due again."""

    def __init__(self, *, tries: int = DEFAULT_TRIES, timeout: float = DEFAULT_TIMEOUT,
                 prefix: str | None = None) -> None:
        if tries < 1 or timeout <= 0:
            raise ValueError("tries and timeout must be positive")
        self.tries = tries
        self.timeout = timeout
        # rtpengine remembers cookies for a while: a restarted sipd must not
        # reuse one and get another request's cached reply.
        self._prefix = prefix if prefix is not None else secrets.token_hex(4)
        self._seq = itertools.count(1)
        self._flight: dict[str, _InFlight[T]] = {}

    def __len__(self) -> int:
        return len(self._flight)

    def request(self, message: Mapping[str, Any], token: T, now: float) -> bytes:
        """The first datagram of a new request; its reply or failure will carry ``token``."""
        cookie = f"{self._prefix}_{next(self._seq)}"
        data = encode(cookie, message)
        self._flight[cookie] = _InFlight(token, data, now, 1, now + self._interval)
        return data

    @property
    def _interval(self) -> float:
        return self.timeout / self.tries

    def receive(self, data: bytes) -> tuple[T, Outcome[Reply]] | None:
        """The token and outcome of the request ``data`` answers; None for a datagram
        that answers nothing in flight (late, repeated or not ng)."""
        try:
            cookie, reply = decode(data)
        except NgError:
            return None
        found = self._flight.pop(cookie, None)
        if found is None:
            return None
        try:
            return found.token, Outcome(check(reply))
        except NgError as exc:
            return found.token, Outcome(error=exc)

    def next_deadline(self) -> float | None:
        """When :meth:`due` next has work, or None with nothing in flight."""
        return min((f.next_at for f in self._flight.values()), default=None)

    def due(self, now: float) -> tuple[list[bytes], list[tuple[T, Outcome[Reply]]]]:
        """Datagrams to send again, and the requests that ran out of time."""
        again: list[bytes] = []
        expired: list[tuple[T, Outcome[Reply]]] = []
        for cookie, f in list(self._flight.items()):
            if f.next_at > now:
                continue
            if f.sent >= self.tries:
                del self._flight[cookie]
                expired.append((f.token, Outcome(error=NgTimeout(
                    f"no answer in {self.timeout:g} s ({self.tries} tries)"))))
                continue
            f.sent += 1
            f.next_at = f.started + self._interval * f.sent
            again.append(f.data)
        return again, expired

    def abandon(self) -> list[tuple[T, Outcome[Reply]]]:
        """Every request in flight, answered with a failure (the I/O layer is stopping)."""
        out: list[tuple[T, Outcome[Reply]]] = [(f.token, Outcome(error=NgError("sipd is stopping")))
               for f in self._flight.values()]
        self._flight.clear()
        return out

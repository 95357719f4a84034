"""Errors that carry the SIP answer they call for.

Whoever answers a request turns a :class:`SipError` raised on the way into
the response it names (the endpoint for a request that fails validation,
the registrar's ``Server.guard`` for requests to the server, the proxy's
``Forker.safely`` for requests it routes), so code deep in the stack only
has to say *what* is wrong: ``raise SipError(400, "Bad CSeq")``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sipd.sip.message import Message


class SipError(Exception):
    """A failure that maps onto a SIP final response.

    ``headers`` are extra header fields for the response (for example
    ``("Unsupported", "foo")`` on a 420 or ``("Min-Expires", "60")`` on a 423).
    """

    def __init__(
        self,
        status: int,
        reason: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers


class ParseError(SipError):
    """The bytes are not a well-formed SIP message.

    ``message`` is what could be parsed before the problem was found, if the
    start line and the header block were readable; a request with a usable
    Via in it can still be answered with ``400 <reason>``. When ``message``
    is None the input is not SIP at all and is dropped.
    """

    def __init__(self, reason: str, message: Message | None = None) -> None:
        super().__init__(400, reason)
        self.message = message

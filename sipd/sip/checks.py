"""The request checks every element makes first, in the RFC's order (§8.2, §16.3).

The server (for requests to itself) and the proxy (for everything it
forwards) ask the same questions before anything else: a Request-URI
scheme it handles (416), hops left (483), option tags it was required to
understand (420 with ``Unsupported``). Syntax (400) and the SIP version
(505) were settled when the message was parsed. The first failure is the
answer, so a request with several problems gets the one the RFC names
first.
"""

from __future__ import annotations

from collections.abc import Collection

from sipd.sip.errors import SipError
from sipd.sip.message import Request
from sipd.sip.uri import SipURI, TelURI

__all__ = ["check_extensions", "check_request"]


def check_request(req: Request, supported: Collection[str]) -> None:
    """Raise the :class:`SipError` the RFC names first for ``req``, if any.

    ``supported`` are the option tags (lower case) this element implements,
    for Proxy-Require.
    """
    if not isinstance(req.uri, (SipURI, TelURI)):
        raise SipError(416, "Unsupported URI Scheme")
    max_forwards = req.max_forwards
    if max_forwards is not None and max_forwards == 0:
        raise SipError(483, "Too Many Hops")
    check_extensions(req, "Proxy-Require", supported)


def check_extensions(req: Request, header: str, supported: Collection[str]) -> None:
    """420 with ``Unsupported`` for the tags of ``header`` not in ``supported``."""
    unsupported = [t for t in req.tokens(header) if t.lower() not in supported]
    if unsupported:
        raise SipError(420, "Bad Extension", (("Unsupported", ", ".join(unsupported)),))

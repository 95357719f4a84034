"""The transaction user: what the server answers to each request.

Checks run in the order of RFC 3261 §16.3 and §8.2, so the answer to a
request with several problems is the one the RFC names first: URI scheme
(416), Max-Forwards (483), Proxy-Require/Require (420), then the method.
Syntax (400) and version (505) were settled before, by the endpoint.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from .identity import LocalIdentity
from .peer import Peer
from .sip.errors import SipError
from .sip.message import Request, Response, make_response
from .sip.uri import SipURI, TelURI

#: Methods this server handles today (the Allow header); any other request,
#: REGISTER and INVITE included until the registrar and proxy land, gets 501.
ALLOWED_METHODS = ("OPTIONS", "ACK", "CANCEL")
#: Option tags (RFC 3261 §19.2) the server implements; empty until the
#: registrar brings "path" and "outbound".
SUPPORTED_EXTENSIONS: tuple[str, ...] = ()


@dataclass
class ServerStats:
    options_answered: int = 0
    not_implemented: int = 0
    rejected: int = 0


class Server:
    def __init__(self, identity: LocalIdentity) -> None:
        self.identity = identity
        self.stats = ServerStats()

    def handle_request(self, req: Request, peer: Peer, now: float) -> Response | None:
        """The final response for ``req``, or None when none is due (ACK)."""
        if req.method == "ACK":
            # An ACK for our own non-2xx was absorbed by its transaction; any
            # other ACK has no transaction to confirm and gets no answer.
            return None
        try:
            return self._answer(req)
        except SipError as exc:
            self.stats.rejected += 1
            return self.reply(req, exc.status, exc.reason, exc.headers)

    def _answer(self, req: Request) -> Response:
        uri = req.uri
        if not isinstance(uri, (SipURI, TelURI)):
            raise SipError(416, "Unsupported URI Scheme")
        max_forwards = req.max_forwards
        if max_forwards is not None and max_forwards == 0:
            raise SipError(483, "Too Many Hops")
        self._check_extensions(req, "Proxy-Require")
        if req.method == "OPTIONS" and self._addressed_to_server(req):
            self._check_extensions(req, "Require")
            self.stats.options_answered += 1
            return self.reply(req, 200, "OK", self.capabilities())
        self.stats.not_implemented += 1
        return self.reply(req, 501, "Not Implemented", (("Allow", ", ".join(ALLOWED_METHODS)),))

    def _addressed_to_server(self, req: Request) -> bool:
        uri = req.uri
        return isinstance(uri, SipURI) and uri.user is None and self.identity.is_local_host(uri.host)

    @staticmethod
    def _check_extensions(req: Request, header: str) -> None:
        unsupported = [t for t in req.tokens(header) if t.lower() not in SUPPORTED_EXTENSIONS]
        if unsupported:
            raise SipError(420, "Bad Extension", (("Unsupported", ", ".join(unsupported)),))

    @staticmethod
    def capabilities() -> tuple[tuple[str, str], ...]:
        return (
            ("Allow", ", ".join(ALLOWED_METHODS)),
            # The server forwards bodies untouched, so it accepts any type.
            ("Accept", "*/*"),
            ("Supported", ", ".join(SUPPORTED_EXTENSIONS)),
        )

    @staticmethod
    def reply(
        req: Request, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> Response:
        return make_response(
            req, status, reason, (("Server", "sipd"), *headers), to_tag=secrets.token_hex(5)
        )

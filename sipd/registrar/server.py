"""The transaction user: what the server answers to each request.

Checks run in the order of RFC 3261 §16.3 and §8.2, so the answer to a
request with several problems is the one the RFC names first: URI scheme
(416), Max-Forwards (483), Proxy-Require (420), then the method. Syntax
(400) and version (505) were settled before, by the endpoint.

An answer is a :class:`Response`, a :class:`~sipd.core.work.Defer` when blocking
work (NSS, PAM, ``~/.sr``) must happen first, a :class:`~sipd.core.work.Commit`
when a REGISTER changes bindings (answered once the change is on disk), or
None (ACK).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

from sipd.auth.authenticator import Authenticator, LookUp, Refused, Verdict
from sipd.core.identity import LocalIdentity
from sipd.core.ownership import Ownership
from sipd.core.peer import Peer
from sipd.core.work import Commit, Defer, Later, Outcome
from sipd.registrar.register import REGISTRAR_EXTENSIONS, Registrar, aor_of
from sipd.sip.checks import check_extensions, check_request
from sipd.sip.errors import SipError
from sipd.sip.message import Request, Response, make_response
from sipd.sip.uri import SipURI, TelURI
from srfs.accounts.directory import Account
from srfs.entropy import random_hex
from srfs.logtext import quote
from srfs.state.location import Op

log = logging.getLogger("sipd.server")

#: The proxied methods in the order the Allow header lists them.
PROXY_ORDER = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "PRACK", "UPDATE", "INFO", "MESSAGE",
               "REFER", "SUBSCRIBE", "NOTIFY")

Reply: TypeAlias = "Response | Defer[Any, Reply] | Commit[Reply] | Later | None"


@dataclass
class ServerStats:
    options_answered: int = 0
    registers: int = 0
    registers_ok: int = 0
    not_implemented: int = 0
    rejected: int = 0


@dataclass
class Registration:
    """What REGISTER needs: the registrar and its helpers."""

    registrar: Registrar
    auth: Authenticator
    #: The alias map and trusted trunks; without it a user owns only their own name.
    ownership: Ownership | None = None


class Server:
    def __init__(self, identity: LocalIdentity, registration: Registration | None = None,
                 *, proxying: bool = False) -> None:
        self.identity = identity
        self.registration = registration
        self.stats = ServerStats()
        #: The wall clock at monotonic ``now`` (nonces, expiry); set by the endpoint.
        self.wall: Callable[[float], float] = lambda now: now
        #: Whether a request is a retransmission in a server transaction; set by the endpoint.
        self.in_transaction: Callable[[Request], bool] = lambda req: False
        methods = ["OPTIONS", "ACK", "CANCEL"]
        extensions: list[str] = []
        if registration is not None:
            methods.insert(0, "REGISTER")
            extensions.extend(REGISTRAR_EXTENSIONS)
        if proxying:
            # What the proxy forwards to users; it needs no extension of its own.
            methods.extend(m for m in PROXY_ORDER if m not in methods)
        #: The Allow header: what this server handles. Anything else gets 501.
        self.allowed_methods = tuple(methods)
        #: Option tags (RFC 3261 §19.2) the server implements.
        self.extensions = tuple(extensions)

    def handle_request(self, req: Request, peer: Peer, now: float) -> Reply:
        """The answer to ``req`` at monotonic ``now``."""
        if req.method == "ACK":
            # An ACK for our own non-2xx was absorbed by its transaction; any
            # other ACK has no transaction to confirm and gets no answer.
            return None
        return self.guard(req, lambda: self._answer(req, peer, now))

    def guard(self, req: Request, answer: Callable[[], Reply]) -> Reply:
        """Turn a SipError raised while answering into its response."""
        try:
            return answer()
        except SipError as exc:
            self.stats.rejected += 1
            return self.reply(req, exc.status, exc.reason, exc.headers)

    def _answer(self, req: Request, peer: Peer, now: float) -> Reply:
        check_request(req, self.extensions)
        if req.method == "OPTIONS" and self._addressed_to_server(req):
            check_extensions(req, "Require", self.extensions)
            self.stats.options_answered += 1
            return self.reply(req, 200, "OK", self.capabilities())
        if req.method == "REGISTER" and self.registration is not None:
            self.stats.registers += 1
            return self._register(req, self.registration, peer, now)
        self.stats.not_implemented += 1
        return self.reply(req, 501, "Not Implemented", (("Allow", ", ".join(self.allowed_methods)),))

    def _addressed_to_server(self, req: Request) -> bool:
        uri = req.uri
        return isinstance(uri, SipURI) and uri.user is None and self.identity.is_local_host(uri.host)

    def capabilities(self) -> tuple[tuple[str, str], ...]:
        return (
            ("Allow", ", ".join(self.allowed_methods)),
            # The server forwards bodies untouched, so it accepts any type.
            ("Accept", "*/*"),
            ("Supported", ", ".join(self.extensions)),
        )

    @staticmethod
    def reply(
        req: Request, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()
    ) -> Response:
        return make_response(
            req, status, reason, (("Server", "sipd"), *headers), to_tag=random_hex(5)
        )

    # ------------------------------------------------------------ REGISTER

    def stateless_challenge(self, req: Request, peer: Peer, now: float) -> Response | None:
        """The 401 for a REGISTER that can get nothing else, made without a transaction.

        A phone's every registration begins so: no credentials at all, and
        nothing the RFC checks before authentication (§10.3 steps 1-2)
        wrong. As Kamailio's ``www_challenge`` does, it is
        answered statelessly: no server transaction waits out Timer J's 32
        seconds for it, and a retransmission gets a fresh challenge. None
        when the request may get any other answer, or is a retransmission
        in a transaction: :meth:`handle_request` answers it then, in one.
        """
        reg = self.registration
        if req.method != "REGISTER" or reg is None:
            return None
        try:
            if "Authorization" in req:
                return None  # credentials, maybe for another realm: answered in a transaction
            check_request(req, self.extensions)
            self._registered_aor(req, reg)
            if self.in_transaction(req):
                return None
        except SipError:  # a ParseError too
            return None
        verdict = reg.auth.authenticate(req, peer, self.wall(now), proxy=False)
        if not isinstance(verdict, Refused) or verdict.not_before is not None:
            return None  # not reached: without credentials, the answer is a challenge
        self.stats.registers += 1
        return self.reply(req, verdict.status, verdict.reason, verdict.headers)

    def _register(self, req: Request, reg: Registration, peer: Peer, now: float) -> Reply:
        """RFC 3261 §10.3 steps 1–5: domain, authentication, who owns the AOR."""
        aor = self._registered_aor(req, reg)
        verdict = reg.auth.authenticate(req, peer, self.wall(now), proxy=False)
        if isinstance(verdict, LookUp):
            found = verdict

            def looked_up(outcome: Outcome[Account | None], later: float) -> Reply:
                wall2 = self.wall(later)
                return self.guard(
                    req, lambda: self._register_checked(req, reg, aor, found.resume(outcome, wall2),
                                                        peer, wall2))

            return Defer(found.run, looked_up, name=found.name, directory=True)
        return self._register_checked(req, reg, aor, verdict, peer, self.wall(now))

    def _registered_aor(self, req: Request, reg: Registration) -> str:
        """§10.3 step 1, and the AOR To names: what is refused before authentication."""
        uri = req.uri
        if not isinstance(uri, SipURI) or not self.identity.is_local_host(uri.host):
            raise SipError(403, "Not a local domain")
        to_uri = req.to.uri
        if isinstance(to_uri, SipURI):
            if not self.identity.is_local_domain(to_uri):
                raise SipError(403, "To is not in a local domain")
        elif not isinstance(to_uri, TelURI):
            raise SipError(400, "To must be a sip:, sips: or tel: URI")
        aor = aor_of(to_uri)
        if not aor:
            raise SipError(400, "To has no user part")
        if reg.ownership is not None:
            # A DID registered in another spelling is that DID (sipd(8), PROXY, Numbers).
            phone = isinstance(to_uri, TelURI) or (to_uri.param("user") or "").lower() == "phone"
            aor = reg.ownership.number(aor, phone=phone)
        return aor

    def _register_checked(self, req: Request, reg: Registration, aor: str, verdict: Verdict,
                          peer: Peer, wall: float) -> Reply:
        if isinstance(verdict, Refused):
            answer = self.reply(req, verdict.status, verdict.reason, verdict.headers)
            return answer if verdict.not_before is None else Later(answer, verdict.not_before)
        account = verdict.account
        user = account.user.name
        ownership = reg.ownership
        if not (aor == user or (ownership is not None and ownership.owns(user, aor))):
            log.warning("register refused: user %s from %s may not register %s", quote(user),
                        peer.host, quote(aor, 64))
            raise SipError(403, "Not allowed to register this address")
        if not req.values("Contact"):
            # A query: the bindings are listed and nothing changes.
            return self._ok(req, reg.registrar.listing(aor, req, wall))
        registrar = reg.registrar

        def plan(wall2: float) -> list[Op]:
            return registrar.plan(req, aor, user, peer, wall2)

        def saved(outcome: Outcome[None], later: float) -> Reply:
            error = outcome.error
            if isinstance(error, SipError):
                raise error
            if error is not None:
                raise SipError(500, "Cannot save the registration")
            return self._ok(req, registrar.listing(aor, req, self.wall(later)))

        return Commit(user, plan, saved, name=f"register {user}", owner=account.user)

    def _ok(self, req: Request, headers: tuple[tuple[str, str], ...]) -> Response:
        self.stats.registers_ok += 1
        return self.reply(req, 200, "OK", headers)

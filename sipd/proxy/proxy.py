"""The transaction-stateful proxy of RFC 3261 §16, sans-IO.

The endpoint hands the proxy every request the server does not answer
itself (a server transaction each), every event of the proxy's client
transactions, the ACKs of 2xx responses and the CANCELs it matched; the
proxy answers with transaction events for the endpoint to send, raw
:class:`Outgoing` messages (the end-to-end ACK) and :class:`Defer` work
(account and ``~/.sr/config`` look-ups, name resolution) whose ``then``
answers the same way. Time comes in as ``now`` (monotonic); the wall clock
is ``wall(now)``.

One :class:`Context` per proxied request owns its branches; the proxy owns
the contexts and one heap of its own timers (Timer C, ring timeouts, the
wait for 487s after a CANCEL).
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol, TypeAlias

from sipd.auth.authenticator import Authenticator, LookUp, Refused, Verdict
from sipd.core.identity import LocalIdentity
from sipd.core.ownership import Ownership
from sipd.core.peer import Outgoing, Peer
from sipd.core.work import Defer, Outcome
from sipd.proxy.callerid import FromPolicy, OutboundIdentity, outbound_identity, privacy_requested
from sipd.proxy.limits import Destinations, SourceBudget
from sipd.proxy.targets import LocalAddresses, Target, binding_target, resolve, uri_target
from sipd.proxy.users import UserLookup
from sipd.registrar.register import aor_of
from sipd.sip.digest import NotDigest, parse_credentials
from sipd.sip.errors import ParseError, SipError
from sipd.sip.headers import Address, parse_address, quote
from sipd.sip.message import Request, Response, make_response
from sipd.sip.transaction import (
    MAGIC_COOKIE,
    ClientTransaction,
    Event,
    ResponseReceived,
    ServerTransaction,
    Terminated,
    Timeout,
    TransactionLayer,
    TransportFailed,
    build_cancel,
)
from sipd.sip.uri import SipURI, TelURI, parse_uri
from srfs.files.userconfig import UserConfig
from srfs.logtext import quote as log_quote
from srfs.state.location import Binding, Change, ChangeKind, LocationStore, contact_key

log = logging.getLogger("sipd.proxy")

#: What the proxy asks the endpoint to do.
ProxyAction: TypeAlias = "Event | Outgoing | Defer"

#: Methods the proxy forwards (RFC 3261 and the usual extensions).
PROXY_METHODS = frozenset(
    ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "MESSAGE", "INFO", "UPDATE", "REFER",
     "NOTIFY", "SUBSCRIBE", "PRACK")
)
#: Requests that create a dialog: the proxy stays in its path (Record-Route).
DIALOG_METHODS = frozenset(("INVITE", "SUBSCRIBE", "REFER"))
#: Option tags the proxy does not need to understand to forward (none yet).
PROXY_EXTENSIONS: tuple[str, ...] = ()

#: Timer C (§16.6 step 11): "greater than 3 minutes".
TIMER_C = 181.0
#: How long to wait for the 487s of CANCELled branches before giving up on them.
CANCEL_WAIT = 32.0
DEFAULT_RING_TIMEOUT = 20
#: Unconditional forwards followed in a row before the call is refused.
MAX_FORWARD_CHAIN = 5
#: Branches one request may ever have (every q group and forward counted):
#: what one request can make the proxy send is bounded by this.
MAX_BRANCHES = 32
#: RFC 5393 §5: the breadth a request without Max-Breadth starts with.
DEFAULT_MAX_BREADTH = 60
_BRANCH_PREFIX = MAGIC_COOKIE + "sr"


class CallHooks(Protocol):
    """Where call tracking and call records plug in; every method is optional work."""

    def call_started(self, call_id: str, caller_user: str | None, callee_user: str | None,
                     from_uri: str, to_uri: str, wall: float) -> None: ...
    def call_answered(self, call_id: str, wall: float) -> None: ...
    def call_failed(self, call_id: str, status: int, wall: float) -> None: ...
    def call_ended(self, call_id: str, wall: float) -> None: ...
    def call_forwarded(self, call_id: str, callee_user: str | None, status: int,
                       wall: float) -> None: ...


class NoHooks:
    """The default :class:`CallHooks`: nothing is tracked."""

    def call_started(self, call_id: str, caller_user: str | None, callee_user: str | None,
                     from_uri: str, to_uri: str, wall: float) -> None:
        pass

    def call_answered(self, call_id: str, wall: float) -> None:
        pass

    def call_failed(self, call_id: str, status: int, wall: float) -> None:
        pass

    def call_ended(self, call_id: str, wall: float) -> None:
        pass

    def call_forwarded(self, call_id: str, callee_user: str | None, status: int,
                       wall: float) -> None:
        pass


@dataclass
class ProxyPolicy:
    outbound_proxy: str = ""
    #: A From user the caller does not own: "reject" (403) or "rewrite".
    from_policy: FromPolicy = "reject"


@dataclass
class Branch:
    ctx: Context
    txn: ClientTransaction
    request: Request
    dest: Peer
    provisional: bool = False
    final: int = 0
    cancel_sent: bool = False
    cancel_wanted: bool = False
    superseded: bool = False
    timer_c: _Timer | None = None
    unanswered: bool = False
    """Counted in :class:`~sipd.limits.Destinations` until its first answer."""


@dataclass
class Context:
    """One proxied request: its server transaction, branches and decisions."""

    server: ServerTransaction
    request: Request
    source: Peer
    caller: str | None = None
    callee: str | None = None
    branches: list[Branch] = field(default_factory=list)
    later_groups: list[list[Target]] = field(default_factory=list)
    responses: list[tuple[Response, bool]] = field(default_factory=list)
    """Finals of branches that count, with True when generated here."""
    final_sent: bool = False
    answered: bool = False
    cancelled: bool = False
    call_started: bool = False
    forward_noanswer: str | None = None
    ring_timer: _Timer | None = None
    cancel_timer: _Timer | None = None
    forwarding: bool = False
    """Targets still being looked up or resolved: not finished yet."""
    base: Request | None = None
    identity: OutboundIdentity | None = None
    """What a call from a local user asserts (P-Asserted-Identity)."""
    arrived: float = 0.0
    breadth: int = DEFAULT_MAX_BREADTH
    """RFC 5393 Max-Breadth: parallel branches this request may still have."""
    sent: int = 0
    """Branches sent so far (at most :data:`MAX_BRANCHES`)."""
    target_tag: str = "x"
    """The local user this request is routed to, hashed into our Via branch:
    the same request coming back for the same user is a loop."""
    answer_timer: _Timer | None = None
    forward_status: int = 0
    """Set when ``forward_noanswer`` sent the call on (408): its new local
    callee, once known, gets a leg of the call record."""

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"

    def live(self) -> list[Branch]:
        return [b for b in self.branches if not b.final and not b.txn.terminated]


class _Timer:
    __slots__ = ("deadline", "fire", "cancelled")

    def __init__(self, deadline: float, fire: Callable[[float], list[ProxyAction]]) -> None:
        self.deadline = deadline
        self.fire = fire
        self.cancelled = False


@dataclass
class ProxyStats:
    proxy_requests: int = 0
    proxy_branches: int = 0
    proxy_rejected: int = 0
    proxy_loops: int = 0
    proxy_errors: int = 0
    proxy_trunk_calls: int = 0
    proxy_branches_refused: int = 0
    proxy_unknown_throttled: int = 0


def _branch_key(req: Request) -> str:
    """A digest of what makes a request the same request again (§16.6 step 8).

    A request that comes back with the same digest in one of our Vias is a
    loop; one that comes back changed (a new Request-URI) is a spiral.
    """
    parts = [req.uri_text.strip(), req.call_id, str(req.cseq.seq)]
    try:
        parts.append(req.from_.tag or "")
        parts.append(req.to.tag or "")
    except ParseError:
        pass
    parts.extend(req.values("Route"))
    parts.extend(req.values("Proxy-Require"))
    return hashlib.blake2s("\n".join(parts).encode(), digest_size=8).hexdigest()


class Proxy:
    """Every proxied request in progress, and the rules that route them."""

    def __init__(
        self,
        identity: LocalIdentity,
        addresses: LocalAddresses,
        transactions: TransactionLayer,
        store: LocationStore,
        auth: Authenticator,
        user_lookup: UserLookup,
        policy: ProxyPolicy | None = None,
        hooks: CallHooks | None = None,
        ownership: Ownership | None = None,
    ) -> None:
        self.identity = identity
        self.addresses = addresses
        self.transactions = transactions
        self.store = store
        self.auth = auth
        self.user_lookup = user_lookup
        self.policy = policy or ProxyPolicy()
        self.hooks: CallHooks = hooks or NoHooks()
        #: Aliases, DIDs and trusted trunks; without it a user owns only their name.
        self.ownership = ownership
        self.stats = ProxyStats()
        self.wall: Callable[[float], float] = lambda now: now
        #: Tells live TCP connections by remote address, so a phone is reached
        #: on the connection it registered over; set by the endpoint.
        self.tcp_peer: Callable[[str, int], Peer | None] = lambda host, port: None
        #: Next hops that do not answer get a bounded number of requests.
        self.destinations = Destinations()
        #: Unauthenticated requests for users who are not there, per source.
        self.unknown_budget = SourceBudget()
        self._contexts: dict[ServerTransaction, Context] = {}
        self._branches: dict[ClientTransaction, Branch] = {}
        self._heap: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()
        self._now = 0.0
        #: Registered contacts, to reach a phone behind NAT inside a dialog.
        self._by_contact: dict[str, Binding] = {}
        for b in store:
            self._by_contact[contact_key(b.contact)] = b
        store.subscribe(self._binding_changed)
        self._outbound: SipURI | None = None
        if self.policy.outbound_proxy:
            uri = parse_uri(self.policy.outbound_proxy)
            if not isinstance(uri, SipURI):
                raise ValueError("outbound_proxy must be a sip: URI")
            self._outbound = uri

    # ------------------------------------------------------------ timers

    def _arm(self, delay: float, now: float, fire: Callable[[float], list[ProxyAction]]) -> _Timer:
        timer = _Timer(now + delay, fire)
        heapq.heappush(self._heap, (timer.deadline, next(self._seq), timer))
        return timer

    def get_timer(self) -> float | None:
        heap = self._heap
        while heap and heap[0][2].cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def handle_timer(self, now: float) -> list[ProxyAction]:
        out: list[ProxyAction] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, timer = heapq.heappop(heap)
            if timer.cancelled:
                continue
            timer.cancelled = True
            self._now = now
            out.extend(self._safely(None, functools.partial(timer.fire, now)))
        return out

    @staticmethod
    def _disarm(timer: _Timer | None) -> None:
        if timer is not None:
            timer.cancelled = True

    # ------------------------------------------------------------ helpers

    def _safely(self, ctx: Context | None, work: Callable[[], list[ProxyAction]]) -> list[ProxyAction]:
        """Run proxy logic; a bug for one request costs that request a 500, nothing more."""
        try:
            return work()
        except SipError as exc:
            if ctx is None:
                return []
            return self._fail(ctx, exc.status, exc.reason, exc.headers)
        except Exception:
            self.stats.proxy_errors += 1
            log.exception("proxy error")
            if ctx is None:
                return []
            return self._fail(ctx, 500, "Server Internal Error")

    def _fail(self, ctx: Context, status: int, reason: str,
              headers: tuple[tuple[str, str], ...] = ()) -> list[ProxyAction]:
        """Answer the caller ourselves and cancel whatever is still ringing."""
        out: list[ProxyAction] = []
        for b in ctx.live():
            out.extend(self._cancel_branch(b, self._now))
        resp = make_response(ctx.request, status, reason, (("Server", "sipd"), *headers),
                             to_tag=_tag(ctx.request))
        return out + self._send_final(ctx, resp)

    # ------------------------------------------------------------ requests

    def handle_request(self, txn: ServerTransaction, req: Request, source: Peer,
                       now: float) -> list[ProxyAction]:
        """A new request for the proxy, in its server transaction."""
        self._now = now
        self.stats.proxy_requests += 1
        ctx = Context(txn, req, source, arrived=now)
        self._contexts[txn] = ctx
        out: list[ProxyAction] = []
        if req.method == "INVITE":
            # §16.2: the 100 stops the caller's retransmissions while we work.
            out.extend(self.transactions.server_respond(txn, make_response(req, 100), now))
        out.extend(self._safely(ctx, lambda: self._route(ctx, now)))
        return out

    def _route(self, ctx: Context, now: float) -> list[ProxyAction]:
        req = ctx.request
        uri = req.uri
        if not isinstance(uri, (SipURI, TelURI)):
            raise SipError(416, "Unsupported URI Scheme")
        mf = req.max_forwards
        if mf is not None and mf == 0:
            raise SipError(483, "Too Many Hops")
        unsupported = [t for t in req.tokens("Proxy-Require") if t.lower() not in PROXY_EXTENSIONS]
        if unsupported:
            raise SipError(420, "Bad Extension", (("Unsupported", ", ".join(unsupported)),))
        if self._looped(req):
            self.stats.proxy_loops += 1
            raise SipError(482, "Loop Detected")
        ctx.breadth = _max_breadth(req)
        fwd = req.copy()
        if "P-Asserted-Identity" in fwd and not self._trusted_source(ctx.source.host):
            # RFC 3325 §5: an identity asserted by an untrusted source means nothing.
            fwd.remove("P-Asserted-Identity")
        own_route = self._strip_own_routes(fwd)
        in_dialog = req.to.tag is not None
        if in_dialog:
            if own_route:
                if req.method == "BYE":
                    self.hooks.call_ended(req.call_id, self.wall(now))
                return self._forward_by_route(ctx, fwd, now)
            target_uri = fwd.uri
            if isinstance(target_uri, SipURI) and self._is_local_aor(target_uri):
                return self._to_local(ctx, fwd, None, target_uri, now)
            raise SipError(403, "Relaying denied")
        if fwd.values("Route"):
            raise SipError(403, "Preloaded Route denied")
        if req.method == "ACK" or req.method == "CANCEL":
            raise SipError(481, "Call/Transaction Does Not Exist")
        from_uri = req.from_.uri
        caller_local = isinstance(from_uri, SipURI) and self.identity.is_local_domain(from_uri)
        trunk_user = self._trunk_caller(from_uri, caller_local, ctx.source)
        if trunk_user is not None:
            # A PBX at an address the admin trusts calls as its user, unchallenged.
            self.stats.proxy_trunk_calls += 1
            return self._caller_known(ctx, fwd, trunk_user, now)
        target = fwd.uri
        local_target = isinstance(target, SipURI) and self._is_local_aor(target)
        if not caller_local and not local_target and _is_anonymous(from_uri):
            # RFC 3323: a phone hiding its From may still be one of ours calling
            # out; only its credentials can tell.
            caller_local = True
        if not caller_local and not local_target:
            raise SipError(403, "Relaying denied")
        if caller_local:
            return self._authenticate(ctx, fwd, now)
        assert isinstance(target, SipURI)
        return self._to_local(ctx, fwd, None, target, now)

    def _is_local_aor(self, uri: SipURI) -> bool:
        """A user at one of our domains; a local host with another port is a phone."""
        if uri.user is None or not self.identity.is_local_host(uri.host):
            return False
        return uri.port is None or uri.port in self.identity.ports

    def _our_branches(self, req: Request) -> list[list[str]]:
        """The parts of the branch IDs of the Vias this proxy put on ``req``."""
        found = []
        for via in req.vias:
            branch = via.branch or ""
            if branch.startswith(_BRANCH_PREFIX) and self.addresses.is_mine(via.host, via.port):
                found.append(branch[len(_BRANCH_PREFIX):].split("."))
        return found

    def _looped(self, req: Request) -> bool:
        """RFC 3261 §16.3 item 4: the very same request came back."""
        ours = self._our_branches(req)
        if not ours:
            return False
        key = _branch_key(req)
        return any(parts[0] == key for parts in ours)

    def _passed_before(self, req: Request, tag: str) -> bool:
        """RFC 5393 §4.2: ``req`` was already routed here to the same local user.

        A spiral that comes back changed is allowed by §16.3, but one that
        ends at the same user again would fork again, and again.
        """
        return any(len(parts) >= 3 and parts[1] == tag for parts in self._our_branches(req))

    def _strip_own_routes(self, fwd: Request) -> bool:
        """§16.4: a strict router's request comes with our URI as Request-URI;
        our own Route entries on top are ours to remove. True if any were ours."""
        routes = fwd.values("Route")
        uri = fwd.uri
        ours = False
        if routes and isinstance(uri, SipURI) and uri.user is None and self._is_me(uri):
            fwd.uri = parse_address(routes[-1], "Route").uri
            routes = routes[:-1]
            ours = True
        while routes:
            top = parse_address(routes[0], "Route").uri
            if not (isinstance(top, SipURI) and self._is_me(top)):
                break
            routes = routes[1:]
            ours = True
        if ours:
            fwd.set_values("Route", routes)
        return ours

    def _is_me(self, uri: SipURI) -> bool:
        return self.identity.is_me(uri) or self.addresses.is_mine(uri.host, uri.port)

    def _forward_by_route(self, ctx: Context, fwd: Request, now: float) -> list[ProxyAction]:
        routes = fwd.values("Route")
        if routes:
            hop = parse_address(routes[0], "Route").uri
        else:
            hop = fwd.uri
        if not isinstance(hop, SipURI):
            raise SipError(416, "Unsupported URI Scheme")
        t = (None if routes else self._registered_hop(fwd.uri_text)) or uri_target(hop)
        return self._start(ctx, fwd, [[Target(fwd.uri_text, t.dest, (), t.host, t.port,
                                              t.transport)]], now)

    def _registered_hop(self, uri_text: str) -> Target | None:
        """The way to a registered phone's contact: where its REGISTER came from.

        Inside a dialog the contact is the Request-URI; a phone behind NAT
        is reachable only at its REGISTER's source, like for a new call.
        """
        b = self._by_contact.get(contact_key(uri_text))
        if b is None or b.path or not b.received:
            return None
        try:
            return binding_target(b, self.tcp_peer)
        except (SipError, ParseError):
            return None

    def _binding_changed(self, change: Change) -> None:
        b = change.binding
        if change.previous is not None and change.previous.contact != b.contact:
            self._by_contact.pop(contact_key(change.previous.contact), None)
        key = contact_key(b.contact)
        if change.kind is ChangeKind.REMOVED:
            if self._by_contact.get(key) == b:
                del self._by_contact[key]
        else:
            self._by_contact[key] = b

    # ------------------------------------------------------------ auth

    def _authenticate(self, ctx: Context, fwd: Request, now: float) -> list[ProxyAction]:
        verdict = self.auth.authenticate(ctx.request, ctx.source, self.wall(now), proxy=True)
        if isinstance(verdict, LookUp):
            found = verdict

            def looked_up(outcome: Outcome, later: float) -> list[ProxyAction]:
                mono = self._mono(later, now)
                return self._safely(ctx, lambda: self._authenticated(
                    ctx, fwd, found.resume(outcome, self.wall(later)), mono))

            return [Defer(found.run, looked_up, name=found.name)]
        return self._authenticated(ctx, fwd, verdict, now)

    def _answer_at(self, ctx: Context, due: float, now: float,
                   answer: Callable[[float], list[ProxyAction]]) -> list[ProxyAction]:
        """Send ``answer`` no earlier than ``due`` (monotonic)."""
        if due <= now:
            return answer(now)
        ctx.answer_timer = self._arm(due - now, now, answer)
        return []

    def _authenticated(self, ctx: Context, fwd: Request, verdict: Verdict,
                       now: float) -> list[ProxyAction]:
        if isinstance(verdict, Refused):
            refused = verdict
            resp = make_response(ctx.request, refused.status, refused.reason,
                                 (("Server", "sipd"), *refused.headers), to_tag=_tag(ctx.request))
            if refused.not_before is None:
                return self._send_final(ctx, resp)
            due = refused.not_before - self.wall(now) + now
            return self._answer_at(ctx, due, now, lambda t: self._send_final(ctx, resp))
        _drop_our_credentials(fwd, self.auth.realm)
        return self._caller_known(ctx, fwd, verdict.account.user.name, now)

    # ------------------------------------------------------------ identity

    def _unauthenticated(self, ctx: Context) -> bool:
        """A request nobody vouched for: no digest, no trusted trunk."""
        return ctx.caller is None and not self._trusted_source(ctx.source.host)

    def _owns(self, user: str, aor: str) -> bool:
        ownership = self.ownership
        return aor == user if ownership is None else ownership.owns(user, aor)

    def _trusted_source(self, host: str) -> bool:
        """A trusted trunk or the gateway: the only sources whose PAI counts."""
        ownership = self.ownership
        return ownership is not None and (
            ownership.trunk_user_at(host) is not None or ownership.is_gateway(host)
        )

    def _trunk_caller(self, from_uri: object, caller_local: bool, source: Peer) -> str | None:
        """The trunk user a request comes from, if its source is trusted for it.

        A From in one of our domains naming someone the trunk's user does
        not own is not the trunk speaking: it is treated like any request.
        """
        ownership = self.ownership
        if ownership is None:
            return None
        user = ownership.trunk_user_at(source.host)
        if user is None:
            return None
        if caller_local and isinstance(from_uri, SipURI) and not ownership.owns(user, aor_of(from_uri)):
            return None
        return user

    def _caller_known(self, ctx: Context, fwd: Request, user: str, now: float) -> list[ProxyAction]:
        """The caller is ``user`` (digest or trusted trunk): check From, assert, route."""
        req = ctx.request
        from_uri = req.from_.uri
        if _is_anonymous(from_uri):
            # RFC 3323 §4.1.1.3: an anonymous From is the phone's own privacy choice.
            from_user = user
        elif isinstance(from_uri, (SipURI, TelURI)):
            from_user = aor_of(from_uri)
        else:
            from_user = ""
        try:
            ctx.identity = outbound_identity(user, from_user, None, self._owns,
                                             self.policy.from_policy)
        except SipError:
            log.warning("call refused: user %s from %s may not call as %s", log_quote(user),
                        ctx.source.host, log_quote(from_user, 64))
            raise
        ctx.caller = user
        if ctx.identity.rewrite_from:
            _set_from_user(fwd, ctx.identity.identity, self.auth.realm)
        target = fwd.uri
        if isinstance(target, SipURI) and self._is_local_aor(target):
            return self._to_local(ctx, fwd, user, target, now)
        if self._outbound is None:
            raise SipError(403, "Relaying denied")
        return self._to_outbound(ctx, fwd, user, now)

    def _to_outbound(self, ctx: Context, fwd: Request, caller: str | None,
                     now: float) -> list[ProxyAction]:
        assert self._outbound is not None
        lookup = self.user_lookup

        def found(outcome: Outcome, later: float) -> list[ProxyAction]:
            mono = self._mono(later, now)

            def go() -> list[ProxyAction]:
                config = outcome.value[1] if outcome.error is None and outcome.value else None
                _apply_display_name(fwd, config)
                self._identify_outbound(ctx, fwd, config)
                return self._start_call(ctx, fwd, [[self._outbound_target(fwd.uri_text)]], None,
                                        mono)

            return self._safely(ctx, go)

        if caller is None or fwd.method != "INVITE":
            self._identify_outbound(ctx, fwd, None)
            return self._start_call(ctx, fwd, [[self._outbound_target(fwd.uri_text)]], None, now)
        return [Defer(lambda: lookup.find(caller), found, name=f"config {caller}")]

    def _identify_outbound(self, ctx: Context, fwd: Request, config: UserConfig | None) -> None:
        """Toward the gateway: From and P-Asserted-Identity are the caller's identity.

        ``caller_id`` counts when the caller owns it. The gateway is trusted,
        so it gets the identity even under ``Privacy: id`` (RFC 3325 §9.3:
        it is the gateway that withholds it from the far end).
        """
        ident = ctx.identity
        if ident is None:
            return
        caller_id = config.get("caller_id") if config is not None else None
        if caller_id and caller_id != ident.identity and self._owns(ident.user, caller_id):
            ident = ctx.identity = OutboundIdentity(ident.user, caller_id, ident.rewrite_from)
        if not _is_anonymous(ctx.request.from_.uri):
            _set_from_user(fwd, ident.identity, self.auth.realm)
        self._assert_identity(ctx, fwd, trusted_hop=True)

    def _assert_identity(self, ctx: Context, fwd: Request, *, trusted_hop: bool) -> None:
        """Put our P-Asserted-Identity on a call from a local user (RFC 3325).

        Withheld from an untrusted next hop (a local callee's phone) when
        the caller asked for privacy.
        """
        ident = ctx.identity
        if ident is None:
            return
        fwd.remove("P-Asserted-Identity")
        # RFC 3325 §9.2: the phone's preference has been decided on.
        fwd.remove("P-Preferred-Identity")
        if not trusted_hop and privacy_requested(ctx.request.values("Privacy")):
            return
        fwd.add("P-Asserted-Identity", f"<sip:{ident.identity}@{self.auth.realm}>")

    def _outbound_target(self, uri_text: str) -> Target:
        assert self._outbound is not None
        route = self._outbound.with_params(lr=None)
        t = uri_target(self._outbound)
        return Target(uri_text, t.dest, (f"<{route}>",), t.host, t.port, t.transport)

    def _mono(self, later: float, now: float) -> float:
        """A continuation's time (monotonic, like ``now``), kept for timers armed by it."""
        self._now = later
        return later

    # ------------------------------------------------------------ local users

    def _to_local(self, ctx: Context, fwd: Request, caller: str | None, target: SipURI,
                  now: float) -> list[ProxyAction]:
        """A request for a local AOR: settings of callee (and caller), then its bindings."""
        aor = aor_of(target)
        if self._unauthenticated(ctx) and not self.unknown_budget.available(
                ctx.source.host, self.wall(now)):
            # The same answer as for a user who is not there, without looking.
            self.stats.proxy_unknown_throttled += 1
            raise SipError(480, "Temporarily Unavailable")
        lookup = self.user_lookup
        identity = self.identity
        # A DID or alias: its owner's settings, its own bindings if any.
        owner = self.ownership.owner_of(aor) if self.ownership is not None else None

        def work() -> tuple[list[tuple[str, bool, UserConfig]], UserConfig | None]:
            chain: list[tuple[str, bool, UserConfig]] = []
            name = owner or aor
            while True:
                known, config = lookup.find(name)
                chain.append((name, known, config))
                fwd_to = config.get("forward") if known else None
                if fwd_to is None or len(chain) > MAX_FORWARD_CHAIN:
                    break
                uri = parse_uri(fwd_to)
                if not (isinstance(uri, SipURI) and uri.user and identity.is_local_host(uri.host)):
                    break
                name = aor_of(uri)
            caller_config = lookup.find(caller)[1] if caller else None
            return chain, caller_config

        def found(outcome: Outcome, later: float) -> list[ProxyAction]:
            mono = self._mono(later, now)
            return self._safely(ctx, lambda: self._local_found(ctx, fwd, aor, outcome, mono,
                                                               alias=owner is not None))

        # Fast path for in-dialog requests and for users with bindings is
        # tempting, but settings are read on every call by design.
        return [Defer(work, found, name=f"user {aor}")]

    def _local_found(self, ctx: Context, fwd: Request, aor: str, outcome: Outcome,
                     now: float, *, alias: bool = False) -> list[ProxyAction]:
        if outcome.error is not None:
            log.error("cannot look up %s: %s", log_quote(aor, 64), outcome.error)
            raise SipError(500, "User database unavailable")
        chain, caller_config = outcome.value
        if caller_config is not None:
            _apply_display_name(fwd, caller_config)
        in_dialog = ctx.request.to.tag is not None
        if len(chain) > MAX_FORWARD_CHAIN:
            raise SipError(482, "Forwarding loop")
        name, known, config = chain[-1]
        unauthenticated = self._unauthenticated(ctx) and not in_dialog
        if not known and not self.store.lookup(name):
            if unauthenticated:
                # Who exists is not told to strangers: the same answer as
                # for a user with no phone, and it costs the source a token.
                self.unknown_budget.spend(ctx.source.host, self.wall(now))
                raise SipError(480, "Temporarily Unavailable")
            raise SipError(404, "Not Found")
        ctx.target_tag = _target_tag(name)
        if not in_dialog and self._passed_before(ctx.request, ctx.target_tag):
            self.stats.proxy_loops += 1
            raise SipError(482, "Loop Detected")
        forward = config.get("forward") if not in_dialog else None
        initial_invite = ctx.is_invite and not in_dialog
        if initial_invite and ctx.forward_status:
            # forward_noanswer: the call goes on, to this user now.
            self.hooks.call_forwarded(ctx.request.call_id, chain[0][0] if chain[0][1] else None,
                                      ctx.forward_status, self.wall(now))
            ctx.forward_status = 0
        else:
            ctx.callee = chain[0][0] if chain[0][1] else None
        if ctx.final_sent:
            return []  # answered (a CANCEL, say) while the look-up ran
        if initial_invite and (forward is not None or len(chain) > 1 or config.flag("dnd")):
            # The callee's own settings decide this call: it is theirs to
            # see in ~/.sr/acc, refused or sent on.
            self._call_begins(ctx, now)
            if forward is not None or len(chain) > 1:
                # The callee's ``forward`` sent it on: their leg ends here.
                target = None if forward is not None else (name if known else None)
                self.hooks.call_forwarded(ctx.request.call_id, target, 302, self.wall(now))
        if initial_invite and config.flag("dnd"):
            raise SipError(486, "Busy Here")
        if forward is not None:
            # The chain of forwards ended at a target in another domain.
            fwd.uri = parse_uri(forward)
            if self._outbound is None:
                raise SipError(403, "Relaying denied")
            self._assert_identity(ctx, fwd, trusted_hop=True)
            return self._start_call(ctx, fwd, [[self._outbound_target(fwd.uri_text)]], None, now)
        if len(chain) > 1:
            previous = chain[-2][2].get("forward")
            assert previous is not None
            fwd.uri = parse_uri(previous)
        if alias and len(chain) == 1:
            # The number's own registration (a line of a multi-line phone),
            # else the owner's phones or trunk, told which number was dialled.
            groups = self._binding_groups(aor, now) or self._binding_groups(name, now, dialled=aor)
        else:
            groups = self._binding_groups(name, now)
        if not groups:
            if unauthenticated:
                self.unknown_budget.spend(ctx.source.host, self.wall(now))
            raise SipError(480, "Temporarily Unavailable")
        self._assert_identity(ctx, fwd, trusted_hop=False)
        noanswer = config.get("forward_noanswer") if ctx.is_invite and not in_dialog else None
        ring = config.integer("ring_timeout") or DEFAULT_RING_TIMEOUT
        return self._start_call(ctx, fwd, groups, (noanswer, ring) if noanswer else None, now)

    def _binding_groups(self, aor: str, now: float, dialled: str | None = None) -> list[list[Target]]:
        """The targets of ``aor``'s live bindings, grouped by q, highest first.

        With ``dialled``, each Request-URI carries that number as its user
        part, so a PBX behind one trunk registration can route many DIDs.
        A binding whose user no longer owns its AOR (the alias map changed)
        gets no calls.
        """
        wall = self.wall(now)
        live = [b for b in self.store.lookup(aor)
                if (b.expires is None or b.expires > wall) and self._owns(b.user, b.aor)]
        groups: dict[float, list[Target]] = {}
        for b in sorted(live, key=lambda b: -b.q):
            try:
                target = binding_target(b, self.tcp_peer)
            except (SipError, ParseError) as exc:
                log.warning("skipping binding %s of %s: %s", log_quote(b.contact, 80), log_quote(aor, 64), exc)
                continue
            if dialled is not None:
                target = _dialled(target, dialled)
            groups.setdefault(b.q, []).append(target)
        return [groups[q] for q in sorted(groups, reverse=True)]

    def _reuse_connection(self, t: Target) -> Target:
        if t.dest is not None and t.dest.transport == "tcp" and t.dest.conn == 0:
            live = self.tcp_peer(t.dest.host, t.dest.port)
            if live is not None:
                return Target(t.uri, live, t.routes, t.host, t.port, t.transport)
        return t

    # ------------------------------------------------------------ forwarding

    def _start_call(self, ctx: Context, fwd: Request, groups: list[list[Target]],
                    noanswer: tuple[str, int] | None, now: float) -> list[ProxyAction]:
        if ctx.final_sent:
            return []  # answered (a CANCEL, say) while the look-up ran
        self._call_begins(ctx, now)
        if noanswer is not None:
            target, seconds = noanswer
            ctx.forward_noanswer = target
            ctx.ring_timer = self._arm(seconds, now, lambda t: self._no_answer(ctx, t))
        return self._start(ctx, fwd, groups, now)

    def _call_begins(self, ctx: Context, now: float) -> None:
        """The first time an initial INVITE is routed: the call record starts."""
        req = ctx.request
        if ctx.is_invite and req.to.tag is None and not ctx.call_started:
            ctx.call_started = True
            self.hooks.call_started(req.call_id, ctx.caller, ctx.callee, str(req.from_.uri),
                                    str(req.to.uri), self.wall(now))

    def _start(self, ctx: Context, fwd: Request, groups: list[list[Target]],
               now: float) -> list[ProxyAction]:
        """Prepare the request once (§16.6 steps 3-7), then fork to the first group."""
        if ctx.cancelled:
            return self._send_final(ctx, self._reply(ctx, 487, "Request Terminated"))
        mf = fwd.max_forwards
        fwd.set("Max-Forwards", str(mf - 1 if mf is not None else 70))
        ctx.base = fwd
        ctx.later_groups = groups[1:]
        return self._fork(ctx, groups[0], now)

    def _fork(self, ctx: Context, targets: list[Target], now: float) -> list[ProxyAction]:
        if not targets:
            return self._branch_gone(ctx, now, 480, "Temporarily Unavailable")
        unresolved = [t for t in targets if t.dest is None]
        if unresolved:
            ctx.forwarding = True

            def resolve_all() -> list[Target]:
                out = []
                for t in targets:
                    if t.dest is None:
                        try:
                            host = resolve(t.host, t.port)
                        except OSError:
                            continue
                        t = Target(t.uri, Peer(t.transport, host, t.port, 0), t.routes, host,
                                   t.port, t.transport)
                    out.append(t)
                return out

            def resolved(outcome: Outcome, later: float) -> list[ProxyAction]:
                ctx.forwarding = False
                mono = self._mono(later, now)
                found: list[Target] = outcome.value if outcome.error is None else []
                if not found:
                    return self._safely(ctx, lambda: self._branch_gone(ctx, mono, 503,
                                                                       "Cannot resolve next hop"))
                return self._safely(ctx, lambda: self._fork(ctx, found, mono))

            return [Defer(resolve_all, resolved, name="resolve")]
        sendable: list[Target] = []
        for t in targets:
            refused = self._target_refusal(t, now)
            if refused is not None:
                self.stats.proxy_branches_refused += 1
                log.info("not sending %s to %s: %s", ctx.request.method, t.dest, refused[1])
                ctx.responses.append((self._reply(ctx, *refused), True))
            else:
                sendable.append(t)
        room = min(ctx.breadth, MAX_BRANCHES - ctx.sent)
        if len(sendable) > room:
            self.stats.proxy_branches_refused += len(sendable) - room
            log.warning("%s %s: %d branch(es) over the limit not sent", ctx.request.method,
                        log_quote(ctx.request.call_id, 64), len(sendable) - room)
            if room <= 0 and not ctx.responses:
                ctx.responses.append((self._reply(ctx, 440, "Max-Breadth Exceeded"), True))
            sendable = sendable[:max(room, 0)]
        if not sendable:
            return self._maybe_done(ctx, now)
        breadth = max(1, ctx.breadth // len(sendable))
        out: list[ProxyAction] = []
        for t in sendable:
            out.extend(self._send_branch(ctx, t, now, breadth))
        return out

    def _target_refusal(self, t: Target, now: float) -> tuple[int, str] | None:
        """Why a branch must not go to ``t`` (its next hop is resolved)."""
        dest = t.dest
        assert dest is not None
        if self.identity.is_own_address(dest.host, dest.port):
            # A contact or route that leads back here would fork again.
            self.stats.proxy_loops += 1
            return 482, "Loop Detected"
        why = self.destinations.refusal((dest.transport, dest.host, dest.port), now)
        if why is not None:
            return 480, "Temporarily Unavailable"
        return None

    def _send_branch(self, ctx: Context, t: Target, now: float,
                     breadth: int = DEFAULT_MAX_BREADTH) -> list[ProxyAction]:
        base = ctx.base
        assert base is not None and t.dest is not None
        req = base.copy()
        req.set("Max-Breadth", str(breadth))
        req.uri_text = t.uri
        req._uri = None
        if t.routes:
            req.set_values("Route", [*t.routes, *req.values("Route")])
        host, port = self.addresses.for_peer(t.dest)
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if req.method in DIALOG_METHODS and ctx.request.to.tag is None:
            self._record_route(req, ctx.source, t.dest, hostport)
        key = _branch_key(ctx.request)
        branch = f"{_BRANCH_PREFIX}{key}.{ctx.target_tag}.{next(self._seq)}"
        req.prepend("Via", f"SIP/2.0/{t.dest.transport.upper()} {hostport};branch={branch};rport")
        txn, events = self.transactions.client_request(req, t.dest, t.dest.reliable, now)
        b = Branch(ctx, txn, req, t.dest, unanswered=True)
        ctx.branches.append(b)
        ctx.sent += 1
        self._branches[txn] = b
        self.destinations.sent(_dest_key(t.dest))
        self.stats.proxy_branches += 1
        if req.method == "INVITE":
            b.timer_c = self._arm(TIMER_C, now, lambda t_: self._timer_c(b, t_))
        return list(events)

    def _record_route(self, req: Request, inbound: Peer, outbound: Peer, hostport: str) -> None:
        """§16.6 step 4, doubled when the two sides differ in transport or family
        so that each side reaches us the way it talks to us."""
        def rr(peer: Peer) -> str:
            host, port = self.addresses.for_peer(peer)
            hp = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            t = ";transport=tcp" if peer.transport == "tcp" else ""
            return f"<sip:{hp}{t};lr>"

        outer = rr(outbound)
        inner = rr(inbound)
        values = [outer] if outer == inner else [outer, inner]
        req.set_values("Record-Route", [*values, *req.values("Record-Route")])

    # ------------------------------------------------------------ responses

    def handle_event(self, event: Event, now: float) -> list[ProxyAction]:
        """An event of a transaction; those of others are not ours and ignored."""
        self._now = now
        if isinstance(event, ResponseReceived):
            found = self._branches.get(event.txn)
            if found is None:
                return []
            b = found
            return self._safely(b.ctx, lambda: self._on_response(b, event.response, now))
        if isinstance(event, (Timeout, TransportFailed)):
            txn = event.txn
            lost = self._branches.get(txn) if isinstance(txn, ClientTransaction) else None
            if lost is None:
                return []
            failed = lost
            self._settle(failed, now, timed_out=isinstance(event, Timeout))
            status, reason = (408, "Request Timeout") if isinstance(event, Timeout) else (
                503, "Service Unavailable")
            return self._safely(failed.ctx, lambda: self._branch_failed(failed, status, reason, now))
        if isinstance(event, Terminated):
            ended = event.txn
            if isinstance(ended, ClientTransaction):
                gone = self._branches.pop(ended, None)
                if gone is not None:
                    self._settle(gone, now)
                    self._disarm(gone.timer_c)
                    self._maybe_forget(gone.ctx)
            elif isinstance(ended, ServerTransaction):
                ctx = self._contexts.get(ended)
                if ctx is not None:
                    ctx.final_sent = True
                    self._maybe_forget(ctx)
        return []

    def _maybe_forget(self, ctx: Context) -> None:
        if ctx.final_sent and not any(b.txn in self._branches for b in ctx.branches):
            self._contexts.pop(ctx.server, None)
            _release(ctx)

    def _settle(self, b: Branch, now: float, *, timed_out: bool = False) -> None:
        if b.unanswered:
            b.unanswered = False
            self.destinations.settled(_dest_key(b.dest), timed_out=timed_out, now=now)

    def _on_response(self, b: Branch, resp: Response, now: float) -> list[ProxyAction]:
        ctx = b.ctx
        status = resp.status
        self._settle(b, now)
        out: list[ProxyAction] = []
        if status < 200:
            if status == 100:
                return out
            b.provisional = True
            if b.timer_c is not None:
                self._disarm(b.timer_c)
                b.timer_c = self._arm(TIMER_C, now, lambda t: self._timer_c(b, t))
            if b.cancel_wanted and not b.cancel_sent:
                return self._cancel_branch(b, now)
            if b.superseded or ctx.final_sent:
                return out
            return list(self.transactions.server_respond(ctx.server, _upstream(resp, ctx), now))
        if status < 300:
            b.final = b.final or status
            self._disarm(b.timer_c)
            out.extend(self.transactions.server_respond(ctx.server, _upstream(resp, ctx), now))
            if not ctx.answered:
                ctx.answered = True
                ctx.final_sent = True
                self._disarm(ctx.ring_timer)
                if ctx.is_invite and ctx.call_started:
                    self.hooks.call_answered(ctx.request.call_id, self.wall(now))
                ctx.later_groups = []
                for other in ctx.live():
                    if other is not b:
                        out.extend(self._cancel_branch(other, now))
            return out
        # 3xx-6xx: the transaction layer has ACKed it already (hop by hop).
        if b.final:
            return out
        b.final = status
        self._disarm(b.timer_c)
        if b.superseded:
            return self._maybe_done(ctx, now)
        ctx.responses.append((resp, False))
        if status >= 600 and not ctx.final_sent:
            ctx.later_groups = []
            for other in ctx.live():
                out.extend(self._cancel_branch(other, now))
            return out + self._send_final(ctx, _upstream(resp, ctx))
        return out + self._maybe_done(ctx, now)

    def _branch_failed(self, b: Branch, status: int, reason: str, now: float) -> list[ProxyAction]:
        if b.final:
            return []
        b.final = status
        self._disarm(b.timer_c)
        ctx = b.ctx
        if not b.superseded:
            ctx.responses.append((make_response(ctx.request, status, reason,
                                                (("Server", "sipd"),), to_tag=_tag(ctx.request)),
                                  True))
        return self._maybe_done(ctx, now)

    def _branch_gone(self, ctx: Context, now: float, status: int, reason: str) -> list[ProxyAction]:
        ctx.responses.append((make_response(ctx.request, status, reason, (("Server", "sipd"),),
                                            to_tag=_tag(ctx.request)), True))
        return self._maybe_done(ctx, now)

    def _maybe_done(self, ctx: Context, now: float) -> list[ProxyAction]:
        """When every branch has its final: the next q group, the noanswer
        forward, or the best response (§16.7 step 5)."""
        if ctx.final_sent or ctx.live() or ctx.forwarding:
            return []
        if ctx.later_groups and not ctx.cancelled:
            group = ctx.later_groups.pop(0)
            return self._fork(ctx, group, now)
        if not ctx.responses:
            if ctx.cancelled:
                return self._send_final(ctx, self._reply(ctx, 487, "Request Terminated"))
            return self._send_final(ctx, self._reply(ctx, 408, "Request Timeout"))
        return self._send_final(ctx, self._best(ctx))

    def _best(self, ctx: Context) -> Response:
        """§16.7 step 6: 6xx first, else the lowest class; challenges collected."""
        def rank(item: tuple[Response, bool]) -> tuple[int, int]:
            resp = item[0]
            cls = resp.status // 100
            if cls == 6:
                return (0, 0)
            preferred = resp.status in (401, 407, 415, 420, 484)
            return (cls, 0 if preferred else 1)

        resp, local = min(ctx.responses, key=rank)
        chosen = resp if local else _upstream(resp, ctx)
        if resp.status == 503 and not local:
            # A 503 would make the caller think this proxy is overloaded.
            chosen = _with_status(chosen, 500, "Server Internal Error")
        if resp.status in (401, 407):
            for name in ("WWW-Authenticate", "Proxy-Authenticate"):
                values: list[str] = []
                for other, _ in ctx.responses:
                    if other.status in (401, 407):
                        values.extend(other.get_all(name))
                if values:
                    chosen.remove(name)
                    for v in dict.fromkeys(values):
                        chosen.add(name, v)
        return chosen

    def _send_final(self, ctx: Context, resp: Response) -> list[ProxyAction]:
        if ctx.final_sent:
            return []
        ctx.final_sent = True
        self._disarm(ctx.ring_timer)
        self._disarm(ctx.cancel_timer)
        if resp.status >= 300:
            self.stats.proxy_rejected += 1
            if ctx.is_invite and ctx.call_started:
                self.hooks.call_failed(ctx.request.call_id, resp.status, self.wall(self._now))
        out: list[ProxyAction] = [*self.transactions.server_respond(ctx.server, resp, self._now)]
        self._maybe_forget(ctx)
        return out

    def _reply(self, ctx: Context, status: int, reason: str) -> Response:
        return make_response(ctx.request, status, reason, (("Server", "sipd"),),
                             to_tag=_tag(ctx.request))

    # ------------------------------------------------------------ CANCEL and timers

    def cancel(self, invite: ServerTransaction, now: float) -> list[ProxyAction]:
        """The caller CANCELled ``invite`` (the endpoint has answered 200)."""
        self._now = now
        ctx = self._contexts.get(invite)
        if ctx is None or ctx.final_sent:
            return []

        def work() -> list[ProxyAction]:
            ctx.cancelled = True
            ctx.later_groups = []
            out: list[ProxyAction] = []
            live = ctx.live()
            for b in live:
                out.extend(self._cancel_branch(b, now))
            if not live and not ctx.forwarding:
                return out + self._send_final(ctx, self._reply(ctx, 487, "Request Terminated"))
            # The 487s of the branches normally end it; do not wait forever.
            ctx.cancel_timer = self._arm(CANCEL_WAIT, now, lambda t: self._give_up(ctx, t))
            return out

        return self._safely(ctx, work)

    def _give_up(self, ctx: Context, now: float) -> list[ProxyAction]:
        out: list[ProxyAction] = []
        for b in ctx.live():
            out.extend(self.transactions.terminate(b.txn, now))
        return out + self._send_final(ctx, self._reply(ctx, 487, "Request Terminated"))

    def _cancel_branch(self, b: Branch, now: float) -> list[ProxyAction]:
        """§16.10: CANCEL a pending INVITE branch, once it has a provisional."""
        if b.final or b.cancel_sent or b.txn.terminated:
            return []
        if b.request.method != "INVITE":
            return []
        if not b.provisional:
            # §9.1: not before a provisional; sent when one arrives.
            b.cancel_wanted = True
            return []
        b.cancel_sent = True
        cancel = build_cancel(b.request)
        # Its responses belong to no branch and are dropped as they come.
        _, events = self.transactions.client_request(cancel, b.dest, b.dest.reliable, now)
        # Timer C again, for a UAS that ignores the CANCEL.
        self._disarm(b.timer_c)
        b.timer_c = self._arm(CANCEL_WAIT, now, lambda t: self._timer_c(b, t))
        return list(events)

    def _timer_c(self, b: Branch, now: float) -> list[ProxyAction]:
        """§16.8: CANCEL a branch that rang too long; one that never answered is a 408."""
        if b.final or b.txn.terminated:
            return []
        if b.provisional and not b.cancel_sent:
            return self._cancel_branch(b, now)
        out = list(self.transactions.terminate(b.txn, now))
        return out + self._branch_failed(b, 408, "Request Timeout", now)

    def _no_answer(self, ctx: Context, now: float) -> list[ProxyAction]:
        """ring_timeout passed: cancel what rings, call the forward_noanswer target."""
        if ctx.final_sent or ctx.cancelled or ctx.forward_noanswer is None:
            return []
        target = ctx.forward_noanswer
        ctx.forward_noanswer = None
        ctx.later_groups = []
        out: list[ProxyAction] = []
        for b in ctx.live():
            b.superseded = True
            out.extend(self._cancel_branch(b, now))
        base = ctx.base
        assert base is not None
        fwd = base.copy()
        uri = parse_uri(target)
        if not isinstance(uri, SipURI):
            return out + self._send_final(ctx, self._reply(ctx, 480, "Temporarily Unavailable"))
        fwd.uri = uri
        # The copy has had Max-Forwards decremented once already; undo so
        # that _start's decrement counts this proxy once.
        mf = fwd.max_forwards
        if mf is not None:
            fwd.set("Max-Forwards", str(mf + 1))
        ctx.forwarding = True

        def then() -> list[ProxyAction]:
            if self._is_local_aor(uri):
                ctx.forward_status = 408
                return self._to_local(ctx, fwd, None, uri, now)
            if self._outbound is None:
                raise SipError(403, "Relaying denied")
            self.hooks.call_forwarded(ctx.request.call_id, None, 408, self.wall(now))
            return self._start(ctx, fwd, [[self._outbound_target(fwd.uri_text)]], now)

        more = self._safely(ctx, then)
        # The look-up continuation clears ``forwarding`` by starting branches.
        ctx.forwarding = any(isinstance(a, Defer) for a in more)
        return out + [self._after_lookup(ctx, a) if isinstance(a, Defer) else a for a in more]

    def _after_lookup(self, ctx: Context, d: Defer) -> Defer:
        def then(outcome: Outcome, later: float) -> Any:
            ctx.forwarding = False
            return d.then(outcome, later)

        return Defer(d.run, then, d.name)

    # ------------------------------------------------------------ ACK of a 2xx

    def handle_ack(self, ack: Request, now: float) -> list[ProxyAction]:
        """An ACK for a 2xx: end to end, forwarded statelessly by its Route set."""
        self._now = now
        try:
            mf = ack.max_forwards
            if mf is not None and mf <= 0:
                return []
            if self._looped(ack):
                return []
            fwd = ack.copy()
            own = self._strip_own_routes(fwd)
            routes = fwd.values("Route")
            if not own and not routes:
                return []
            hop = parse_address(routes[0], "Route").uri if routes else fwd.uri
            if not isinstance(hop, SipURI):
                return []
            t = (None if routes else self._registered_hop(fwd.uri_text)) or uri_target(hop)
            if t.dest is None:
                return []
            dest = self._reuse_connection(t).dest
            assert dest is not None
            fwd.set("Max-Forwards", str(mf - 1 if mf is not None else 70))
            host, port = self.addresses.for_peer(dest)
            hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            branch = f"{_BRANCH_PREFIX}{_branch_key(ack)}.a"
            fwd.prepend("Via", f"SIP/2.0/{dest.transport.upper()} {hostport};branch={branch};rport")
            return [Outgoing(fwd.to_bytes(), dest)]
        except (SipError, ParseError, ValueError) as exc:
            log.info("dropped an ACK: %s", exc)
            return []
        except Exception:
            self.stats.proxy_errors += 1
            log.exception("proxy error on an ACK")
            return []

    def connection_failed(self, peer: Peer, now: float) -> list[ProxyAction]:
        """The transport could not reach ``peer``: its waiting branches fail (503)."""
        out: list[ProxyAction] = []
        for b in list(self._branches.values()):
            if b.dest.host == peer.host and b.dest.port == peer.port and \
                    b.dest.transport == peer.transport and not b.provisional and not b.final:
                out.extend(self.transactions.transport_error(b.txn, now))
        return out

    def statistics(self) -> dict[str, int]:
        out = {f.name: getattr(self.stats, f.name) for f in fields(self.stats)}
        out["calls_pending"] = len(self._contexts)
        return out


# ---------------------------------------------------------------- helpers


def _dest_key(dest: Peer) -> tuple[str, str, int]:
    return (dest.transport, dest.host, dest.port)


def _target_tag(user: str) -> str:
    return hashlib.blake2s(user.encode("utf-8", "surrogateescape"), digest_size=4).hexdigest()


def _max_breadth(req: Request) -> int:
    """RFC 5393 §5: the request's Max-Breadth, or the default; 400 if malformed."""
    text = req.get("Max-Breadth")
    if text is None:
        return DEFAULT_MAX_BREADTH
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise SipError(400, "Bad Max-Breadth header")
    return min(int(text), DEFAULT_MAX_BREADTH)


def _tag(req: Request) -> str:
    """A To tag for our own answers to ``req``: the same on a retransmission."""
    return hashlib.blake2s(f"{req.call_id}|{req.cseq.seq}|{_from_tag(req)}".encode(),
                           digest_size=5).hexdigest()


def _from_tag(req: Request) -> str:
    try:
        return req.from_.tag or ""
    except ParseError:
        return ""


def _upstream(resp: Response, ctx: Context) -> Response:
    """A response to forward (§16.7 step 3): without the Via we put there.

    The Vias are the ones the request came with, not what the next hop
    returned: a UAS that echoes the wrong Vias (the CANCEL's, say) must not
    make the answer unroutable.
    """
    out = resp.copy()
    out.set_values("Via", ctx.request.values("Via"))
    return out


def _with_status(resp: Response, status: int, reason: str) -> Response:
    out = resp.copy()
    out.status = status
    out.reason = reason
    return out


def _drop_our_credentials(req: Request, realm: str) -> None:
    """§22.3: credentials for our realm are consumed here; others travel on."""
    keep: list[str] = []
    for value in req.get_all("Proxy-Authorization"):
        try:
            if parse_credentials(value, "Proxy-Authorization").realm == realm:
                continue
        except (NotDigest, ParseError):
            pass
        keep.append(value)
    req.remove("Proxy-Authorization")
    for value in keep:
        req.add("Proxy-Authorization", value)


def _release(ctx: Context) -> None:
    """Break the reference cycles of a finished request.

    A context and its branches point at each other, and timers hold
    closures over both. Left to the cycle collector, a busy proxy piles up
    hundreds of thousands of such objects between full collections, and
    each full collection then stops the event loop for a second.
    """
    for timer in (ctx.ring_timer, ctx.cancel_timer, ctx.answer_timer,
                  *(b.timer_c for b in ctx.branches)):
        if timer is not None:
            timer.cancelled = True
            timer.fire = _spent
    for b in ctx.branches:
        b.timer_c = None
    ctx.ring_timer = ctx.cancel_timer = ctx.answer_timer = None
    ctx.branches = []
    ctx.later_groups = []
    ctx.base = None


def _spent(now: float) -> list[ProxyAction]:
    return []


def _is_anonymous(uri: object) -> bool:
    """The From of RFC 3323 §4.1.1.3 (``anonymous.invalid``)."""
    return isinstance(uri, SipURI) and uri.host.lower() == "anonymous.invalid"


def _dialled(target: Target, number: str) -> Target:
    """``target`` with ``number`` as the user part of its Request-URI."""
    try:
        uri = parse_uri(target.uri)
    except ParseError:
        return target
    if not isinstance(uri, SipURI):
        return target
    return replace(target, uri=str(replace(uri, user=number)))


def _set_from_user(req: Request, user: str, host: str) -> None:
    """From's URI becomes ``sip:user@host``; display name and tag stay."""
    frm = req.from_
    uri = frm.uri
    if isinstance(uri, SipURI):
        new_uri = replace(uri, user=user, host=host, port=None, password=None, headers=None)
    else:
        new_uri = SipURI("sip", host, user)
    if str(new_uri) != str(uri):
        req.set("From", str(Address(new_uri, frm.display, frm.params)))


def _apply_display_name(req: Request, config: UserConfig | None) -> None:
    """The caller's ``display_name`` on From when the phone sent none."""
    if config is None:
        return
    name = config.get("display_name")
    if not name:
        return
    frm = req.from_
    if frm.display:
        return
    named = Address(frm.uri, quote(name), frm.params)
    req.set("From", str(named))


"""The transaction-stateful proxy of RFC 3261 §16, sans-IO: how a request is routed.

The endpoint hands the proxy every request the server does not answer
itself (a server transaction each), every event of the proxy's client
transactions, the ACKs of 2xx responses, the CANCELs it matched and its
due timers; the proxy answers with transaction events for the endpoint to
send, raw :class:`~sipd.core.peer.Outgoing` messages (the end-to-end ACK)
and :class:`~sipd.core.work.Defer` work (account and ``~/.sr/config``
look-ups, name resolution) whose ``then`` answers the same way.

Time: ``now`` is the core's monotonic clock, in every call and every
continuation; ``wall(now)``, set by the endpoint, derives the wall clock
where a record needs it (bindings' expiry, call records).

A request goes: checks and loops (:mod:`~sipd.proxy.routing`), then who
calls (a trusted trunk, digest through :mod:`sipd.auth`, or a stranger)
and as whom (:mod:`~sipd.proxy.callerid`), then where: a local user's
phones after their settings (:mod:`~sipd.proxy.local`), or the outbound
proxy. :mod:`~sipd.proxy.forking` sends the branches and answers.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any, NoReturn
from urllib.parse import quote, unquote

from sipd.auth.authenticator import Authenticator, LookUp, Refused, Verdict
from sipd.core.identity import LocalIdentity
from sipd.core.ownership import Ownership
from sipd.core.peer import Peer
from sipd.core.work import Defer, Outcome
from sipd.proxy.ack import forward_ack
from sipd.proxy.callerid import (
    add_diversion,
    apply_display_name,
    assert_identity,
    drop_our_credentials,
    is_anonymous,
    outbound_identity,
    preferred_identity,
    set_from_user,
)
from sipd.proxy.context import (
    DEFAULT_RING_TIMEOUT,
    MAX_FORWARD_CHAIN,
    PROXY_EXTENSIONS,
    Branch,
    CallHooks,
    Context,
    NoHooks,
    ProxyAction,
    ProxyPolicy,
    ProxyStats,
    TimerKind,
    reply,
    tag_for,
)
from sipd.proxy.forking import Forker
from sipd.proxy.limits import Destinations, SourceBudget
from sipd.proxy.local import Chain, binding_groups, cached_settings_chain, settings_chain
from sipd.proxy.routing import ContactIndex, Router, max_breadth, target_tag
from sipd.proxy.targets import LivePeer, LocalAddresses, Target, flow_target, uri_target
from sipd.proxy.users import UserLookup
from sipd.registrar.register import aor_of
from sipd.sip.checks import check_request
from sipd.sip.errors import ParseError, SipError
from sipd.sip.headers import parse_address
from sipd.sip.message import Request, Response, make_response
from sipd.sip.transaction import Event, ServerTransaction, TransactionLayer
from sipd.sip.uri import SipURI, TelURI, parse_uri
from srfs.accounts.directory import Account
from srfs.accounts.state import AccountState
from srfs.files.userconfig import UserConfig
from srfs.logtext import quote as log_quote
from srfs.state.location import LocationStore

log = logging.getLogger("sipd.proxy")

__all__ = ["Proxy"]

#: RFC 3261 user-unreserved and mark characters: what a user part may carry
#: unescaped besides letters and digits (a number's "#" is escaped).
_USER_SAFE = "!*'()&=+$,;?/"

#: Trunk owners whose last good answer is kept for outages (the oldest go first).
MAX_GOOD_TRUNKS = 20_000


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
        account_state: Callable[[str], AccountState | None] | None = None,
    ) -> None:
        self.identity = identity
        self.transactions = transactions
        self.store = store
        self.auth = auth
        self.user_lookup = user_lookup
        self.policy = policy or ProxyPolicy()
        self.hooks: CallHooks = hooks or NoHooks()
        #: Aliases, DIDs and trusted trunks; without it a user owns only their name.
        self.ownership = ownership
        #: Blocking: may the user (a trunk's owner) use SIP now; None for no such
        #: user. Without it (tests) every trunk is trusted.
        self.account_state = account_state
        #: Trunk owners last found allowed, for the directory's outages only:
        #: their trunks stay trusted while it cannot answer.
        self._good_trunks: OrderedDict[str, None] = OrderedDict()
        self.stats = ProxyStats()
        #: The wall clock at monotonic ``now``; set by the endpoint.
        self.wall: Callable[[float], float] = lambda now: now
        #: Tells live TCP connections by remote address, so a phone is reached
        #: on the connection it registered over; set by the endpoint.
        self.live_peer: LivePeer = lambda transport, host, port: None
        #: Our UDP socket of a registered flow (``received``), 0 for any; set by the endpoint.
        self.udp_socket: Callable[[str], int] = lambda received: 0
        #: Unauthenticated requests for users who are not there, per source.
        self.unknown_budget = SourceBudget()
        self.router = Router(identity, addresses)
        self.contacts = ContactIndex(store, lambda received: self.udp_socket(received))
        self.forker = Forker(transactions, self.router, identity, self.hooks, self.stats,
                             lambda now: self.wall(now))
        self.forker.ring_timeout = self._no_answer
        self._outbound: SipURI | None = None
        if self.policy.outbound_proxy:
            uri = parse_uri(self.policy.outbound_proxy)
            if not isinstance(uri, SipURI):
                raise ValueError("outbound_proxy must be a sip: URI")
            self._outbound = uri

    @property
    def destinations(self) -> Destinations:
        return self.forker.destinations

    # ------------------------------------------------------------ entry points

    def handle_request(self, txn: ServerTransaction, req: Request, source: Peer,
                       now: float) -> list[ProxyAction]:
        """A new request for the proxy, in its server transaction."""
        self.stats.proxy_requests += 1
        ctx = Context(txn, req, source, arrived=now)
        self.forker.open(ctx)
        out = self.forker.safely(ctx, now, lambda: self._route(ctx, now))
        if req.method == "INVITE" and txn.last_response is None:
            # §16.2, §17.2.1: the 100 stops the caller's retransmissions while
            # we work. An INVITE answered at once (a challenge, a refusal)
            # needs none, as a stateless reply has none: the 100 goes only
            # when the answer is left to a look-up, the callee, or a delay.
            out[:0] = self.transactions.server_respond(txn, make_response(req, 100), now)
        return out

    def stateless_challenge(self, req: Request, source: Peer, now: float) -> Response | None:
        """The 407 for a request that can get nothing else, made without a transaction.

        Every call begins so: an initial request from one of our domains,
        with no credentials at all, from no trusted trunk. As
        Kamailio's ``auth_challenge`` does, it is answered statelessly: no
        server transaction, no timers, nothing kept. A retransmission gets
        a fresh challenge; the ACK is known by its To tag (:meth:`handle_ack`).
        None when the request may get any other answer; :meth:`handle_request`
        then routes it as before, in a transaction; so it does for a
        retransmission in a transaction (a copy routed before a reload
        changed who is trusted), which that transaction answers.
        """
        method = req.method
        if method == "ACK" or method == "CANCEL":
            return None
        try:
            if req.to.tag is not None or "Route" in req:
                return None
            from_uri = req.from_.uri
            if not (isinstance(from_uri, SipURI) and self.identity.is_local_domain(from_uri)):
                return None
            if "Proxy-Authorization" in req:
                return None  # credentials, maybe for another realm: routed to find out
            # What _route refuses before asking who calls, it refuses (and counts).
            check_request(req, PROXY_EXTENSIONS)
            max_breadth(req)
            if self.router.looped(req) or self._trunk_caller(from_uri, True, source) is not None:
                return None
            if self.transactions.find_server(req) is not None:
                return None
        except (SipError, ParseError):
            return None
        verdict = self.auth.authenticate(req, source, self.wall(now), proxy=True)
        if not isinstance(verdict, Refused) or verdict.not_before is not None:
            return None  # not reached: without credentials, the answer is a challenge
        self.stats.proxy_requests += 1
        self.stats.proxy_rejected += 1
        return reply(req, verdict.status, verdict.reason, verdict.headers)

    def handle_event(self, event: Event, now: float) -> list[ProxyAction]:
        return self.forker.handle_event(event, now)

    def on_timer(self, owner: Context | Branch, kind: TimerKind, now: float) -> list[ProxyAction]:
        return self.forker.on_timer(owner, kind, now)

    def cancel(self, invite: ServerTransaction, now: float) -> list[ProxyAction]:
        return self.forker.cancel(invite, now)

    def handle_ack(self, ack: Request, source: Peer | None = None) -> list[ProxyAction]:
        """An ACK for a 2xx: end to end, forwarded statelessly by its Route set.

        The ACK of a final answer of our own that no transaction kept
        (:meth:`stateless_challenge`) ends here: its To tag is ours.
        """
        try:
            if ack.to.tag == tag_for(ack):
                return []
            return list(forward_ack(ack, self.router, self.contacts, self.live_peer,
                                    self.auth.realm, source))
        except Exception:
            self.stats.proxy_errors += 1
            log.exception("proxy error on an ACK")
            return []

    def connection_failed(self, peer: Peer, now: float) -> list[ProxyAction]:
        return self.forker.connection_failed(peer, now)

    def statistics(self) -> dict[str, int]:
        out = {f.name: getattr(self.stats, f.name) for f in fields(self.stats)}
        out["calls_pending"] = len(self.forker.contexts)
        return out

    # ------------------------------------------------------------ routing

    def _route(self, ctx: Context, now: float) -> list[ProxyAction]:
        req = ctx.request
        check_request(req, PROXY_EXTENSIONS)
        if self.router.looped(req):
            self.stats.proxy_loops += 1
            raise SipError(482, "Loop Detected")
        ctx.breadth = max_breadth(req)
        fwd = req.copy()
        if "P-Asserted-Identity" in fwd and not self._trusted_source(ctx.source.host):
            # RFC 3325 §5: an identity asserted by an untrusted source means nothing.
            fwd.remove("P-Asserted-Identity")
        own_route = self.router.strip_own_routes(fwd)
        # §22.3: credentials for our realm end here, whether or not this
        # request needed them (phones repeat them on BYE and re-INVITE).
        drop_our_credentials(fwd, self.auth.realm)
        if not ctx.initial:
            if own_route:
                if req.method == "BYE":
                    self.hooks.call_ended(req.call_id, self.wall(now))
                    if self.forker.media is not None:
                        self.forker.media.end(req.call_id)
                return self._forward_by_route(ctx, fwd, now, self.router.across(own_route,
                                                                                 ctx.source))
            target_uri = fwd.uri
            if isinstance(target_uri, SipURI) and self.router.is_local_aor(target_uri):
                return self._to_local(ctx, fwd, None, target_uri, now)
            raise SipError(403, "Relaying denied")
        if fwd.values("Route"):
            raise SipError(403, "Preloaded Route denied")
        if req.method == "ACK" or req.method == "CANCEL":
            raise SipError(481, "Call/Transaction Does Not Exist")
        self._normalise_target(fwd)
        from_uri = req.from_.uri
        caller_local = isinstance(from_uri, SipURI) and self.identity.is_local_domain(from_uri)
        trunk_user = self._trunk_caller(from_uri, caller_local, ctx.source)
        if trunk_user is not None:
            return self._trunk_call(ctx, fwd, trunk_user, now)
        return self._route_untrusted(ctx, fwd, now)

    def _route_untrusted(self, ctx: Context, fwd: Request, now: float) -> list[ProxyAction]:
        """An initial request nobody vouches for by address: digest, or a call from outside."""
        req = ctx.request
        from_uri = req.from_.uri
        caller_local = isinstance(from_uri, SipURI) and self.identity.is_local_domain(from_uri)
        target = fwd.uri
        local_target = isinstance(target, SipURI) and self.router.is_local_aor(target)
        if not caller_local and not local_target and is_anonymous(from_uri):
            # RFC 3323: a phone hiding its From may still be one of ours calling
            # out; only its credentials can tell.
            caller_local = True
        if not caller_local and not local_target:
            raise SipError(403, "Relaying denied")
        if caller_local:
            return self._authenticate(ctx, fwd, now)
        assert isinstance(target, SipURI)
        return self._to_local(ctx, fwd, None, target, now)

    def _normalise_target(self, fwd: Request) -> None:
        """A dialled number in any spelling becomes the AOR it stands for (sipd(8), PROXY, Numbers).

        A ``tel:`` number of the alias map becomes ``sip:NAME@realm``, so it
        is routed like the DID written NAME; any other ``tel:`` number and
        ``user=phone`` numbers are normalised for the next hop; a number
        at one of our domains that is a DID in another spelling becomes
        that DID.
        """
        ownership = self.ownership
        if ownership is None:
            return
        uri = fwd.uri
        if isinstance(uri, TelURI):
            context = uri.param("phone-context")
            name = ownership.number(uri.number, phone=True, phone_context=context)
            if ownership.owner_of(name) is not None:
                fwd.uri = SipURI("sip", self.auth.realm, name)
            elif name != uri.number:
                params = tuple(p for p in uri.params if p[0].lower() != "phone-context") \
                    if name.startswith("+") else uri.params
                fwd.uri = TelURI(name, params)
            return
        if not isinstance(uri, SipURI) or not uri.user:
            return
        phone = (uri.param("user") or "").lower() == "phone"
        if not phone and not self.router.is_local_aor(uri):
            return
        user, _, context = unquote(uri.user).partition(";")
        context_value = None
        if context.lower().startswith("phone-context="):
            context_value = context.split("=", 1)[1]
        name = ownership.number(user, phone=phone, phone_context=context_value)
        if name != user:
            fwd.uri = replace(uri, user=quote(name, safe=_USER_SAFE))

    def _forward_by_route(self, ctx: Context, fwd: Request, now: float,
                          flow: Peer | None = None) -> list[ProxyAction]:
        """Inside a dialog: the next Route, else the other side's flow (the
        dialog's flow token), else the registered contact, else the Request-URI."""
        routes = fwd.values("Route")
        hop = parse_address(routes[0], "Route").uri if routes else fwd.uri
        if not isinstance(hop, SipURI):
            raise SipError(416, "Unsupported URI Scheme")
        t = None if routes else flow_target(fwd.uri_text, flow, self.live_peer)
        t = t or (None if routes else self.contacts.hop(fwd.uri_text, self.live_peer)) \
            or uri_target(hop)
        return self.forker.start(ctx, fwd, [[Target(fwd.uri_text, t.dest, (), t.host, t.port,
                                                    t.transport)]], now)

    # ------------------------------------------------------------ who calls

    def _trunk_call(self, ctx: Context, fwd: Request, user: str, now: float) -> list[ProxyAction]:
        """A PBX at an address the admin trusts calls as its user, unchallenged,
        while that user's account may use SIP (the state a REGISTER gets)."""
        check = self.account_state
        if check is None:
            self.stats.proxy_trunk_calls += 1
            return self._caller_known(ctx, fwd, user, now, trunk=True)

        def checked(outcome: Outcome[AccountState | None], later: float) -> list[ProxyAction]:
            def go() -> list[ProxyAction]:
                what = f"trunk owner {log_quote(user, 64)}"
                if outcome.error is not None:
                    if user not in self._good_trunks:
                        self._directory_failed(what, outcome.error, later)
                    # The last good answer, as the authenticator serves a
                    # known phone: the outage is logged once, there.
                    self.auth.health.failed(what, outcome.error, self.wall(later))
                    self.stats.proxy_trunk_calls += 1
                    return self._caller_known(ctx, fwd, user, later, trunk=True)
                state = outcome.get()
                if state is not None and state.allowed:
                    self._good_trunks[user] = None
                    self._good_trunks.move_to_end(user)
                    while len(self._good_trunks) > MAX_GOOD_TRUNKS:
                        self._good_trunks.popitem(last=False)
                    self.stats.proxy_trunk_calls += 1
                    return self._caller_known(ctx, fwd, user, later, trunk=True)
                self._good_trunks.pop(user, None)
                # A suspended customer's PBX is a stranger: challenged like
                # anyone, its asserted identity meaningless (RFC 3325 §5).
                log.warning("trunk of %s at %s not trusted: %s", log_quote(user, 64),
                            ctx.source.host, "no such user" if state is None else state.reason)
                ctx.distrusted = True
                fwd.remove("P-Asserted-Identity")
                return self._route_untrusted(ctx, fwd, later)

            return self.forker.safely(ctx, later, go)

        return [Defer(lambda: check(user), checked, name=f"trunk {user}",
                      directory=True)]

    def _authenticate(self, ctx: Context, fwd: Request, now: float) -> list[ProxyAction]:
        verdict = self.auth.authenticate(ctx.request, ctx.source, self.wall(now), proxy=True)
        if isinstance(verdict, LookUp):
            found = verdict

            def looked_up(outcome: Outcome[Account | None], later: float) -> list[ProxyAction]:
                return self.forker.safely(ctx, later, lambda: self._authenticated(
                    ctx, fwd, found.resume(outcome, self.wall(later)), later))

            return [Defer(found.run, looked_up, name=found.name, directory=True)]
        return self._authenticated(ctx, fwd, verdict, now)

    def _authenticated(self, ctx: Context, fwd: Request, verdict: Verdict,
                       now: float) -> list[ProxyAction]:
        if isinstance(verdict, Refused):
            resp = reply(ctx.request, verdict.status, verdict.reason, verdict.headers)
            if verdict.not_before is None:
                return self.forker.send_final(ctx, resp, now)
            # Held until its time: a failure is answered when every failure is.
            return self.forker.answer_at(ctx, resp, verdict.not_before - self.wall(now) + now, now)
        drop_our_credentials(fwd, self.auth.realm)
        return self._caller_known(ctx, fwd, verdict.account.user.name, now)

    def _unauthenticated(self, ctx: Context) -> bool:
        """A request nobody vouched for: no digest, no trusted trunk."""
        return ctx.caller is None and (ctx.distrusted or not self._trusted_source(ctx.source.host))

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
        if caller_local and isinstance(from_uri, SipURI):
            name = self._from_user(from_uri)
            if not ownership.owns(user, name) and not self._may_present(user, from_uri, name):
                return None
        return user

    def _may_present(self, user: str, from_uri: object, from_user: str) -> bool:
        """May ``user``'s trunk present ``from_user``, which it does not own?

        Its ``present=`` patterns decide; at one of our own domains only a
        number that is no one's DID may be presented, never a local user's
        name or number.
        """
        ownership = self.ownership
        if ownership is None:
            return False
        raw = aor_of(from_uri) if isinstance(from_uri, (SipURI, TelURI)) else ""
        normal = ownership.plan.normalise(raw)
        if isinstance(from_uri, SipURI) and self.identity.is_local_domain(from_uri) and (
                normal is None or ownership.owner_of(from_user) is not None):
            return False
        return ownership.trunks.presents(user, raw, from_user, normal)

    def _from_user(self, uri: SipURI | TelURI) -> str:
        """The AOR a From URI names, a number in any spelling as the alias map writes it."""
        name = aor_of(uri)
        ownership = self.ownership
        if ownership is None:
            return name
        phone = isinstance(uri, TelURI) or (uri.param("user") or "").lower() == "phone"
        return ownership.number(name, phone=phone)

    def _caller_known(self, ctx: Context, fwd: Request, user: str, now: float,
                      trunk: bool = False) -> list[ProxyAction]:
        """The caller is ``user`` (digest or trusted trunk): check From, assert, route."""
        from_uri = ctx.request.from_.uri
        if is_anonymous(from_uri):
            # RFC 3323 §4.1.1.3: an anonymous From is the phone's own privacy choice.
            from_user = user
        elif isinstance(from_uri, (SipURI, TelURI)):
            from_user = self._from_user(from_uri)
        else:
            from_user = ""
        presents, default = None, None
        if trunk and self.ownership is not None:
            presents, default = self._presentation(ctx, user, from_uri)
        try:
            ctx.identity = outbound_identity(user, from_user, None, self._owns,
                                             self.policy.from_policy, presents=presents,
                                             default=default)
        except SipError:
            log.warning("call refused: user %s from %s may not call as %s", log_quote(user),
                        ctx.source.host, log_quote(from_user, 64))
            raise
        ctx.caller = user
        if ctx.identity.rewrite_from:
            set_from_user(fwd, ctx.identity.identity, self.auth.realm)
        add_diversion(ctx.identity, fwd, self.auth.realm)
        target = fwd.uri
        if isinstance(target, SipURI) and self.router.is_local_aor(target):
            return self._to_local(ctx, fwd, user, target, now)
        if self._outbound is None:
            raise SipError(403, "Relaying denied")
        return self._to_outbound(ctx, fwd, user, now)

    def _presentation(self, ctx: Context, user: str,
                      from_uri: object) -> tuple[Callable[[str], bool], str | None]:
        """What ``user``'s trunk may present, and the identity it asserts then.

        The patterns of ``present=`` match the From user as sent or as the
        number plan writes it. The identity is the PBX's
        ``P-Preferred-Identity`` when the user owns it, else the first of
        the user's numbers (E.164 ones first), else the user's name.
        """
        ownership = self.ownership
        assert ownership is not None

        def presents(from_user: str) -> bool:
            return self._may_present(user, from_uri, from_user)

        preferred = preferred_identity(ctx.request)
        if preferred is not None:
            preferred = ownership.number(preferred, phone=True)
            if self._owns(user, preferred):
                return presents, preferred
        numbers = [n for n in ownership.names_of(user) if ownership.plan.normalise(n)]
        numbers.sort(key=lambda n: not (ownership.plan.normalise(n) or "").startswith("+"))
        return presents, numbers[0] if numbers else None

    # ------------------------------------------------------------ out through the gateway

    def _to_outbound(self, ctx: Context, fwd: Request, caller: str | None,
                     now: float) -> list[ProxyAction]:
        lookup = self.user_lookup

        def found(outcome: Outcome[tuple[bool, UserConfig]], later: float) -> list[ProxyAction]:
            def go() -> list[ProxyAction]:
                config = outcome.get()[1] if outcome.error is None else None
                apply_display_name(fwd, config)
                self._identify_outbound(ctx, fwd, config)
                return self.forker.start_call(ctx, fwd, [[self._outbound_target(fwd.uri_text)]],
                                              None, later)

            return self.forker.safely(ctx, later, go)

        if caller is None or fwd.method != "INVITE":
            self._identify_outbound(ctx, fwd, None)
            return self.forker.start_call(ctx, fwd, [[self._outbound_target(fwd.uri_text)]],
                                          None, now)
        known = lookup.find_cached(caller)
        if known is not None:
            self.stats.proxy_users_cached += 1
            return found(Outcome(known), now)
        return [Defer(lambda: lookup.find(caller), found, name=f"config {caller}",
                      directory=True)]

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
            ident = ctx.identity = replace(ident, identity=caller_id)
            original = ctx.request
            if ident.presented and "Diversion" not in original and "History-Info" not in original:
                # The Diversion added for the first choice names this one.
                fwd.remove("Diversion")
                add_diversion(ident, fwd, self.auth.realm)
        if not is_anonymous(ctx.request.from_.uri) and not ident.presented:
            set_from_user(fwd, ident.identity, self.auth.realm)
        assert_identity(ctx.identity, ctx.request, fwd, self.auth.realm, trusted_hop=True)

    def _outbound_target(self, uri_text: str) -> Target:
        assert self._outbound is not None
        route = self._outbound.with_params(lr=None)
        t = uri_target(self._outbound)
        return Target(uri_text, t.dest, (f"<{route}>",), t.host, t.port, t.transport)

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
        lookup, identity = self.user_lookup, self.identity
        # A DID or alias: its owner's settings, its own bindings if any.
        owner = self.ownership.owner_of(aor) if self.ownership is not None else None
        first = owner or aor

        def found(outcome: Outcome[tuple[Chain, UserConfig | None]],
                  later: float) -> list[ProxyAction]:
            return self.forker.safely(ctx, later, lambda: self._local_found(
                ctx, fwd, aor, outcome, later, alias=owner is not None))

        # Settings count from the next call after a change: the cached walk
        # checks each file's stamp, and anything not known is looked up.
        known = cached_settings_chain(lookup, identity, first, caller)
        if known is not None:
            self.stats.proxy_users_cached += 1
            return found(Outcome(known), now)
        return [Defer(lambda: settings_chain(lookup, identity, first, caller), found,
                      name=f"user {aor}", directory=True)]

    def _directory_failed(self, what: str, error: BaseException, now: float) -> NoReturn:
        """A look-up the failing user database could not answer: 503, never a 404.

        Only the authenticator's look-ups say the outage ended: a user found
        here may have been found from the last good answer.
        """
        health = self.auth.health
        health.failed(what, error, self.wall(now))
        refused = health.refusal()
        raise SipError(refused.status, refused.reason, refused.headers)

    def _local_found(self, ctx: Context, fwd: Request, aor: str,
                     outcome: Outcome[tuple[Chain, UserConfig | None]],
                     now: float, *, alias: bool = False) -> list[ProxyAction]:
        if outcome.error is not None:
            self._directory_failed(log_quote(aor, 64), outcome.error, now)
        chain, caller_config = outcome.get()
        if caller_config is not None:
            apply_display_name(fwd, caller_config)
        in_dialog = not ctx.initial
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
        ctx.target_tag = target_tag(name)
        if not in_dialog and self.router.passed_before(ctx.request, ctx.target_tag):
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
            self.forker.call_begins(ctx, now)
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
            assert_identity(ctx.identity, ctx.request, fwd, self.auth.realm, trusted_hop=True)
            return self.forker.start_call(ctx, fwd, [[self._outbound_target(fwd.uri_text)]],
                                          None, now)
        if len(chain) > 1:
            previous = chain[-2][2].get("forward")
            assert previous is not None
            fwd.uri = parse_uri(previous)
        wall = self.wall(now)
        if alias and len(chain) == 1:
            # The number's own registration (a line of a multi-line phone),
            # else the owner's phones or trunk, told which number was dialled.
            groups = (self._groups(aor, wall) or self._groups(name, wall, dialled=aor))
        else:
            groups = self._groups(name, wall)
        if not groups:
            if unauthenticated:
                self.unknown_budget.spend(ctx.source.host, wall)
            raise SipError(480, "Temporarily Unavailable")
        assert_identity(ctx.identity, ctx.request, fwd, self.auth.realm, trusted_hop=False)
        noanswer = config.get("forward_noanswer") if initial_invite else None
        ring = config.integer("ring_timeout") or DEFAULT_RING_TIMEOUT
        return self.forker.start_call(ctx, fwd, groups, (noanswer, ring) if noanswer else None, now)

    def _groups(self, aor: str, wall: float, dialled: str | None = None) -> list[list[Target]]:
        return binding_groups(self.store, aor, wall, self._owns, self.live_peer, dialled,
                              self.udp_socket)

    def _no_answer(self, ctx: Context, now: float) -> list[ProxyAction]:
        """ring_timeout passed: cancel what rings, call the forward_noanswer target."""
        if ctx.final_sent or ctx.cancelled or ctx.forward_noanswer is None:
            return []
        target = ctx.forward_noanswer
        ctx.forward_noanswer = None
        out = self.forker.supersede(ctx, now)
        base = ctx.base
        assert base is not None
        fwd = base.copy()
        uri = parse_uri(target)
        if not isinstance(uri, SipURI):
            return out + self.forker.send_final(
                ctx, reply(ctx.request, 480, "Temporarily Unavailable"), now)
        fwd.uri = uri
        # The copy has had Max-Forwards decremented once already; undo so
        # that start's decrement counts this proxy once.
        mf = fwd.max_forwards
        if mf is not None:
            fwd.set("Max-Forwards", str(mf + 1))
        ctx.forwarding = True

        def then() -> list[ProxyAction]:
            if self.router.is_local_aor(uri):
                ctx.forward_status = 408
                return self._to_local(ctx, fwd, None, uri, now)
            if self._outbound is None:
                raise SipError(403, "Relaying denied")
            self.hooks.call_forwarded(ctx.request.call_id, None, 408, self.wall(now))
            return self.forker.start(ctx, fwd, [[self._outbound_target(fwd.uri_text)]], now)

        more = self.forker.safely(ctx, now, then)
        # The look-up continuation clears ``forwarding`` by starting branches.
        ctx.forwarding = any(isinstance(a, Defer) for a in more)
        return out + [_after_lookup(ctx, a) if isinstance(a, Defer) else a for a in more]


def _after_lookup(ctx: Context, d: Defer[Any, list[ProxyAction]]) -> Defer[Any, list[ProxyAction]]:
    def then(outcome: Outcome[Any], later: float) -> list[ProxyAction]:
        ctx.forwarding = False
        return d.then(outcome, later)

    return Defer(d.run, then, d.name, d.directory)



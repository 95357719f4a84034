"""Forking (RFC 3261 §16.6-16.10): branches out, the best response back, CANCEL, Timer C.

:class:`Forker` owns every request in progress (a :class:`Context`) and
every branch (a :class:`Branch`): it sends the branches of a group of
targets in parallel (bounded by Max-Breadth, :data:`MAX_BRANCHES`, and a
next hop's record of not answering), passes provisional responses and the
first 2xx upstream, picks the best final when every branch has one
(§16.7), and CANCELs what still rings. Its timers (Timer C, the wait for
487s, a held answer, ``ring_timeout``) are kinds in the core's one
:class:`~sipd.sip.timers.Deadlines`; the endpoint hands the due ones to
:meth:`Forker.on_timer`.

Why one module of this size: contexts and branches share one owner;
splitting them would let a branch outlive the request it serves.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

from sipd.core.identity import LocalIdentity
from sipd.core.peer import Peer
from sipd.core.work import Defer, Outcome
from sipd.media.relay import MediaRelay, caller_behind_nat, carries_sdp
from sipd.proxy.context import (
    CANCEL_WAIT,
    DIALOG_METHODS,
    MAX_BRANCHES,
    TIMER_C,
    Branch,
    CallHooks,
    Context,
    ProxyAction,
    ProxyStats,
    TimerKind,
    reply,
    upstream,
    with_status,
)
from sipd.proxy.limits import Destinations
from sipd.proxy.routing import Router
from sipd.proxy.targets import Target, resolve
from sipd.sip.errors import SipError
from sipd.sip.headers import Via
from sipd.sip.message import Request, Response
from sipd.sip.timers import Deadlines
from sipd.sip.transaction import (
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
from srfs.logtext import quote as log_quote

log = logging.getLogger("sipd.proxy")

#: What ``ring_timeout`` runs: the proxy's ``forward_noanswer`` (it routes).
RingTimeout = Callable[[Context, float], list[ProxyAction]]


def dest_key(dest: Peer) -> tuple[str, str, int]:
    return (dest.transport, dest.host, dest.port)


class Forker:
    def __init__(
        self,
        transactions: TransactionLayer,
        router: Router,
        identity: LocalIdentity,
        hooks: CallHooks,
        stats: ProxyStats,
        wall: Callable[[float], float],
    ) -> None:
        self.transactions = transactions
        self.deadlines: Deadlines[Any] = transactions.deadlines
        self.router = router
        self.identity = identity
        self.hooks = hooks
        self.stats = stats
        self.wall = wall
        #: Next hops that do not answer get a bounded number of requests.
        self.destinations = Destinations()
        #: Set by the proxy: what ``ring_timeout`` runs.
        self.ring_timeout: RingTimeout = lambda ctx, now: []
        #: Set by the daemon when ``rtpengine`` is: SDP offers and answers go there.
        self.media: MediaRelay | None = None
        self.contexts: dict[ServerTransaction, Context] = {}
        self.branches: dict[ClientTransaction, Branch] = {}
        #: :attr:`branches` by destination: what a lost connection looks
        #: at, found without a walk over every call in progress.
        self._by_dest: dict[tuple[str, str, int], dict[Branch, None]] = {}
        self._seq = itertools.count()

    # ------------------------------------------------------------ contexts

    def open(self, ctx: Context) -> None:
        self.contexts[ctx.server] = ctx

    def safely(self, ctx: Context | None, now: float,
               work: Callable[[], list[ProxyAction]]) -> list[ProxyAction]:
        """Run proxy logic; a bug for one request costs that request a 500, nothing more."""
        try:
            return work()
        except SipError as exc:
            if ctx is None:
                return []
            return self.fail(ctx, exc.status, exc.reason, now, exc.headers)
        except Exception:
            self.stats.proxy_errors += 1
            log.exception("proxy error")
            if ctx is None:
                return []
            return self.fail(ctx, 500, "Server Internal Error", now)

    def fail(self, ctx: Context, status: int, reason: str, now: float,
             headers: tuple[tuple[str, str], ...] = ()) -> list[ProxyAction]:
        """Answer the caller ourselves and cancel whatever is still ringing."""
        out: list[ProxyAction] = []
        for b in ctx.live():
            out.extend(self.cancel_branch(b, now))
        return out + self.send_final(ctx, reply(ctx.request, status, reason, headers), now)

    def answer_at(self, ctx: Context, resp: Response, due: float, now: float) -> list[ProxyAction]:
        """Send ``resp`` as the final answer no earlier than ``due`` (monotonic)."""
        if due <= now:
            return self.send_final(ctx, resp, now)
        ctx.held = resp
        self.deadlines.arm(ctx, TimerKind.ANSWER, due)
        return []

    def call_begins(self, ctx: Context, now: float) -> None:
        """The first time an initial INVITE is routed: the call record starts."""
        req = ctx.request
        if ctx.is_invite and ctx.initial and not ctx.call_started:
            ctx.call_started = True
            self.hooks.call_started(req.call_id, ctx.caller, ctx.callee, str(req.from_.uri),
                                    str(req.to.uri), self.wall(now))

    # ------------------------------------------------------------ forwarding

    def start_call(self, ctx: Context, fwd: Request, groups: list[list[Target]],
                   noanswer: tuple[str, int] | None, now: float) -> list[ProxyAction]:
        if ctx.final_sent:
            return []  # answered (a CANCEL, say) while the look-up ran
        self.call_begins(ctx, now)
        if noanswer is not None:
            target, seconds = noanswer
            ctx.forward_noanswer = target
            self.deadlines.arm(ctx, TimerKind.RING, now + seconds)
        return self.start(ctx, fwd, groups, now)

    def start(self, ctx: Context, fwd: Request, groups: list[list[Target]],
              now: float) -> list[ProxyAction]:
        """Prepare the request once (§16.6 steps 3-7), then fork to the first group."""
        if ctx.cancelled:
            return self.send_final(ctx, reply(ctx.request, 487, "Request Terminated"), now)
        mf = fwd.max_forwards
        fwd.set("Max-Forwards", str(mf - 1 if mf is not None else 70))
        ctx.base = fwd
        ctx.later_groups = groups[1:]
        media = self.media
        if media is not None and ctx.is_invite and not ctx.offered:
            ctx.offered = True
            caller_nat = caller_behind_nat(ctx.request, ctx.source)
            callee_nat = any(t.nat for group in groups for t in group)
            if media.relays(fwd, caller_nat=caller_nat, callee_nat=callee_nat):
                return [self._offer(media, ctx, fwd, groups[0], caller_nat, now)]
        return self.fork(ctx, groups[0], now)

    def _offer(self, media: MediaRelay, ctx: Context, fwd: Request, first: list[Target],
               nat: bool, now: float) -> ProxyAction:
        """rtpengine's SDP in ``fwd`` first, then the first group's branches.

        Meanwhile the request counts as still being forwarded: a CANCEL
        waits for the answer, and is answered 487 once it is there.
        """
        ctx.forwarding = True

        def offered(relayed: bool, later: float) -> list[ProxyAction]:
            ctx.forwarding = False
            ctx.relayed = relayed
            if ctx.final_sent:
                if relayed and ctx.initial:
                    media.end(fwd.call_id)
                return []
            if ctx.cancelled:
                return self.send_final(ctx, reply(ctx.request, 487, "Request Terminated"), later)
            return self.safely(ctx, later, lambda: self.fork(ctx, first, later))

        return media.offer(fwd, ctx.source, nat, now, offered)

    def fork(self, ctx: Context, targets: list[Target], now: float) -> list[ProxyAction]:
        if not targets:
            return self.branch_gone(ctx, now, 480, "Temporarily Unavailable")
        if any(t.dest is None for t in targets):
            ctx.forwarding = True

            def resolve_all() -> list[Target]:
                out = []
                for t in targets:
                    if t.dest is None:
                        try:
                            host = resolve(t.host, t.port)
                        except OSError:
                            continue
                        # The name stays with the address: TLS checks the certificate by it.
                        t = Target(t.uri, Peer(t.transport, host, t.port, 0, t.host), t.routes,
                                   host, t.port, t.transport)
                    out.append(t)
                return out

            def resolved(outcome: Outcome[list[Target]], later: float) -> list[ProxyAction]:
                ctx.forwarding = False
                found = outcome.get() if outcome.error is None else []
                if not found:
                    return self.safely(ctx, later, lambda: self.branch_gone(
                        ctx, later, 503, "Cannot resolve next hop"))
                return self.safely(ctx, later, lambda: self.fork(ctx, found, later))

            return [Defer(resolve_all, resolved, name="resolve")]
        sendable: list[Target] = []
        for t in targets:
            refused = self._refusal(t, now)
            if refused is not None:
                status, phrase, why = refused
                self.stats.proxy_branches_refused += 1
                log.info("not sending %s to %s: %s (%s)", ctx.request.method, t.dest, phrase, why)
                ctx.responses.append((reply(ctx.request, status, phrase), True))
            else:
                sendable.append(t)
        room = min(ctx.breadth, MAX_BRANCHES - ctx.sent)
        if len(sendable) > room:
            self.stats.proxy_branches_refused += len(sendable) - room
            log.warning("%s %s: %d branch(es) over the limit not sent", ctx.request.method,
                        log_quote(ctx.request.call_id, 64), len(sendable) - room)
            if room <= 0 and not ctx.responses:
                ctx.responses.append((reply(ctx.request, 440, "Max-Breadth Exceeded"), True))
            sendable = sendable[:max(room, 0)]
        if not sendable:
            return self.maybe_done(ctx, now)
        breadth = max(1, ctx.breadth // len(sendable))
        out: list[ProxyAction] = []
        for t in sendable:
            out.extend(self._send_branch(ctx, t, now, breadth))
        return out

    def _refusal(self, t: Target, now: float) -> tuple[int, str, str] | None:
        """Status, phrase and why a branch must not go to ``t`` (its next hop is resolved)."""
        dest = t.dest
        assert dest is not None
        if self.identity.is_own_address(dest.host, dest.port):
            # A contact or route that leads back here would fork again.
            self.stats.proxy_loops += 1
            return 482, "Loop Detected", "the next hop is this server"
        why = self.destinations.refusal(dest_key(dest), now)
        if why is not None:
            return 480, "Temporarily Unavailable", why
        return None

    def _send_branch(self, ctx: Context, t: Target, now: float, breadth: int) -> list[ProxyAction]:
        base = ctx.base
        assert base is not None and t.dest is not None
        req = base.copy()
        req.set("Max-Breadth", str(breadth))
        req.uri_text = t.uri
        req._uri = None
        if t.routes:
            req.set_values("Route", [*t.routes, *req.values("Route")])
        host, port = self.router.addresses.for_peer(t.dest)
        if req.method in DIALOG_METHODS and ctx.initial:
            self._record_route(req, ctx.source, t.dest)
        branch = self.router.branch_id(ctx.request, ctx.target_tag, next(self._seq))
        # Made parsed: the transaction reads it, and its responses bring it back.
        req.prepend_via(Via(t.dest.transport.upper(),
                            (f"[{host}]" if ":" in host else host).lower(), port,
                            (("branch", branch), ("rport", None))))
        txn, events = self.transactions.client_request(req, t.dest, t.dest.reliable, now)
        b = Branch(ctx.server, txn, req, t.dest, unanswered=True, nat=t.nat)
        ctx.branches.append(b)
        ctx.sent += 1
        self.branches[txn] = b
        key = dest_key(t.dest)
        self.destinations.sent(key)
        self._by_dest.setdefault(key, {})[b] = None
        self.stats.proxy_branches += 1
        if req.method == "INVITE":
            self.deadlines.arm(b, TimerKind.C, now + TIMER_C)
        return list(events)

    def _record_route(self, req: Request, inbound: Peer, outbound: Peer) -> None:
        """§16.6 step 4, doubled when the two sides differ in transport or family
        so that each side reaches us the way it talks to us. The user part is
        the flow token of both sides (:mod:`~sipd.proxy.flowtoken`)."""
        token = self.router.flows.encode(inbound, outbound)
        user = f"{token}@" if token else ""

        def rr(peer: Peer) -> str:
            # The transport of the listener named, so that the side reaches
            # that very socket (tls, ws and wss included; udp is the default).
            transport, host, port = self.router.addresses.listener(peer)
            hp = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            t = f";transport={transport}" if transport != "udp" else ""
            return f"<sip:{user}{hp}{t};lr>"

        outer = rr(outbound)
        inner = rr(inbound)
        values = [outer] if outer == inner else [outer, inner]
        req.set_values("Record-Route", [*values, *req.values("Record-Route")])

    # ------------------------------------------------------------ responses

    def handle_event(self, event: Event, now: float) -> list[ProxyAction]:
        """An event of a transaction; those of others are not ours and ignored."""
        if isinstance(event, ResponseReceived):
            found = self.branches.get(event.txn)
            ctx = self.contexts.get(found.server) if found is not None else None
            if found is None or ctx is None:
                return []
            b, c = found, ctx
            return self.safely(c, now, lambda: self._on_response(c, b, event.response, now))
        if isinstance(event, (Timeout, TransportFailed)):
            txn = event.txn
            lost = self.branches.get(txn) if isinstance(txn, ClientTransaction) else None
            ctx = self.contexts.get(lost.server) if lost is not None else None
            if lost is None or ctx is None:
                return []
            failed, c = lost, ctx
            self._settle(failed, now, timed_out=isinstance(event, Timeout))
            status, reason = (408, "Request Timeout") if isinstance(event, Timeout) else (
                503, "Service Unavailable")
            return self.safely(c, now, lambda: self._branch_failed(c, failed, status, reason, now))
        if isinstance(event, Terminated):
            ended = event.txn
            if isinstance(ended, ClientTransaction):
                gone = self.branches.pop(ended, None)
                if gone is not None:
                    key = dest_key(gone.dest)
                    same = self._by_dest[key]
                    del same[gone]
                    if not same:
                        del self._by_dest[key]
                    self._settle(gone, now)
                    self.deadlines.disarm_all(gone)
                    ctx = self.contexts.get(gone.server)
                    if ctx is not None:
                        self._maybe_forget(ctx)
            elif isinstance(ended, ServerTransaction):
                ctx = self.contexts.get(ended)
                if ctx is not None:
                    ctx.final_sent = True
                    self._maybe_forget(ctx)
        return []

    def _maybe_forget(self, ctx: Context) -> None:
        if ctx.final_sent and not any(b.txn in self.branches for b in ctx.branches):
            self.contexts.pop(ctx.server, None)
            self.deadlines.disarm_all(ctx)

    def _settle(self, b: Branch, now: float, *, timed_out: bool = False) -> None:
        if b.unanswered:
            b.unanswered = False
            self.destinations.settled(dest_key(b.dest), timed_out=timed_out, now=now)

    def _on_response(self, ctx: Context, b: Branch, resp: Response,
                     now: float) -> list[ProxyAction]:
        status = resp.status
        self._settle(b, now)
        out: list[ProxyAction] = []
        if status < 200:
            if status == 100:
                return out
            b.provisional = True
            if TimerKind.C in b._timers:
                self.deadlines.arm(b, TimerKind.C, now + TIMER_C)
            if b.cancel_wanted and not b.cancel_sent:
                return self.cancel_branch(b, now)
            if b.superseded or ctx.final_sent:
                return out
            return self._pass_up(ctx, b, resp, now)
        if status < 300:
            b.final = b.final or status
            self.deadlines.disarm(b, TimerKind.C)
            out.extend(self._pass_up(ctx, b, resp, now))
            if not ctx.answered:
                ctx.answered = True
                ctx.final_sent = True
                self.deadlines.disarm(ctx, TimerKind.RING)
                if ctx.is_invite and ctx.call_started:
                    self.hooks.call_answered(ctx.request.call_id, self.wall(now))
                ctx.later_groups = []
                _settled(ctx)
                for other in ctx.live():
                    if other is not b:
                        out.extend(self.cancel_branch(other, now))
            return out
        # 3xx-6xx: the transaction layer has ACKed it already (hop by hop).
        if b.final:
            return out
        b.final = status
        self.deadlines.disarm(b, TimerKind.C)
        if b.superseded:
            return self.maybe_done(ctx, now)
        ctx.responses.append((resp, False))
        if status >= 600 and not ctx.final_sent:
            ctx.later_groups = []
            for other in ctx.live():
                out.extend(self.cancel_branch(other, now))
            return out + self.send_final(ctx, upstream(resp, ctx), now)
        return out + self.maybe_done(ctx, now)

    def _pass_up(self, ctx: Context, b: Branch, resp: Response, now: float) -> list[ProxyAction]:
        """Forward a provisional or 2xx upstream; the SDP answer to a relayed offer
        goes through rtpengine first, and then the response goes on."""
        up = upstream(resp, ctx)
        media = self.media
        if media is None or not ctx.relayed or not carries_sdp(up):
            return list(self.transactions.server_respond(ctx.server, up, now))
        cached = b.answered_sdp
        if cached is not None and cached[0] == up.body:
            # The same answer again (a 2xx sent again): rtpengine's SDP for it is known.
            up.body = cached[1]
            return list(self.transactions.server_respond(ctx.server, up, now))
        theirs = up.body

        def answered(relayed: bool, later: float) -> list[ProxyAction]:
            if relayed:
                b.answered_sdp = (theirs, up.body)
            # Late is still right: the transaction drops what it can no longer take.
            return list(self.transactions.server_respond(ctx.server, up, later))

        return [media.answer(up, b.dest.host, b.nat, answered)]

    def _branch_failed(self, ctx: Context, b: Branch, status: int, reason: str,
                       now: float) -> list[ProxyAction]:
        if b.final:
            return []
        b.final = status
        self.deadlines.disarm(b, TimerKind.C)
        if not b.superseded:
            ctx.responses.append((reply(ctx.request, status, reason), True))
        return self.maybe_done(ctx, now)

    def branch_gone(self, ctx: Context, now: float, status: int, reason: str) -> list[ProxyAction]:
        ctx.responses.append((reply(ctx.request, status, reason), True))
        return self.maybe_done(ctx, now)

    def maybe_done(self, ctx: Context, now: float) -> list[ProxyAction]:
        """When every branch has its final: the next q group, or the best response (§16.7 step 5)."""
        if ctx.final_sent or ctx.live() or ctx.forwarding:
            return []
        if ctx.later_groups and not ctx.cancelled:
            group = ctx.later_groups.pop(0)
            return self.fork(ctx, group, now)
        if not ctx.responses:
            if ctx.cancelled:
                return self.send_final(ctx, reply(ctx.request, 487, "Request Terminated"), now)
            return self.send_final(ctx, reply(ctx.request, 408, "Request Timeout"), now)
        return self.send_final(ctx, self._best(ctx), now)

    @staticmethod
    def _best(ctx: Context) -> Response:
        """§16.7 step 6: 6xx first, else the lowest class; challenges collected."""
        def rank(item: tuple[Response, bool]) -> tuple[int, int]:
            resp = item[0]
            cls = resp.status // 100
            if cls == 6:
                return (0, 0)
            preferred = resp.status in (401, 407, 415, 420, 484)
            return (cls, 0 if preferred else 1)

        resp, local = min(ctx.responses, key=rank)
        chosen = resp if local else upstream(resp, ctx)
        if resp.status == 503 and not local:
            # A 503 would make the caller think this proxy is overloaded.
            chosen = with_status(chosen, 500, "Server Internal Error")
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

    def send_final(self, ctx: Context, resp: Response, now: float) -> list[ProxyAction]:
        if ctx.final_sent:
            return []
        ctx.final_sent = True
        ctx.held = None
        _settled(ctx)
        for kind in (TimerKind.RING, TimerKind.CANCEL_WAIT, TimerKind.ANSWER):
            self.deadlines.disarm(ctx, kind)
        if resp.status >= 300:
            self.stats.proxy_rejected += 1
            if ctx.is_invite and ctx.call_started:
                self.hooks.call_failed(ctx.request.call_id, resp.status, self.wall(now))
            if ctx.relayed and ctx.initial and self.media is not None:
                # The call failed: rtpengine's session goes with it.
                self.media.end(ctx.request.call_id)
        out: list[ProxyAction] = [*self.transactions.server_respond(ctx.server, resp, now)]
        self._maybe_forget(ctx)
        return out

    # ------------------------------------------------------------ CANCEL and timers

    def cancel(self, invite: ServerTransaction, now: float) -> list[ProxyAction]:
        """The caller CANCELled ``invite`` (the endpoint has answered 200)."""
        ctx = self.contexts.get(invite)
        if ctx is None or ctx.final_sent:
            return []
        c = ctx

        def work() -> list[ProxyAction]:
            c.cancelled = True
            c.later_groups = []
            out: list[ProxyAction] = []
            live = c.live()
            for b in live:
                out.extend(self.cancel_branch(b, now))
            if not live and not c.forwarding:
                return out + self.send_final(c, reply(c.request, 487, "Request Terminated"), now)
            # The 487s of the branches normally end it; do not wait forever.
            self.deadlines.arm(c, TimerKind.CANCEL_WAIT, now + CANCEL_WAIT)
            return out

        return self.safely(c, now, work)

    def cancel_branch(self, b: Branch, now: float) -> list[ProxyAction]:
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
        self.deadlines.arm(b, TimerKind.C, now + CANCEL_WAIT)
        return list(events)

    def on_timer(self, owner: Context | Branch, kind: TimerKind, now: float) -> list[ProxyAction]:
        """One of the proxy's timers is due (the endpoint pops them from the Deadlines)."""
        if isinstance(owner, Branch):
            ctx = self.contexts.get(owner.server)
            if ctx is None:
                return []
            b, c = owner, ctx
            return self.safely(c, now, lambda: self._timer_c(c, b, now))
        ctx = owner
        if kind is TimerKind.ANSWER:
            held, ctx.held = ctx.held, None
            return [] if held is None else self.send_final(ctx, held, now)
        if kind is TimerKind.CANCEL_WAIT:
            return self.safely(ctx, now, lambda: self._give_up(ctx, now))
        return self.safely(ctx, now, lambda: self.ring_timeout(ctx, now))

    def _timer_c(self, ctx: Context, b: Branch, now: float) -> list[ProxyAction]:
        """§16.8: CANCEL a branch that rang too long; one that never answered is a 408."""
        if b.final or b.txn.terminated:
            return []
        if b.provisional and not b.cancel_sent:
            return self.cancel_branch(b, now)
        out = list(self.transactions.terminate(b.txn, now))
        return out + self._branch_failed(ctx, b, 408, "Request Timeout", now)

    def _give_up(self, ctx: Context, now: float) -> list[ProxyAction]:
        out: list[ProxyAction] = []
        for b in ctx.live():
            out.extend(self.transactions.terminate(b.txn, now))
        return out + self.send_final(ctx, reply(ctx.request, 487, "Request Terminated"), now)

    def supersede(self, ctx: Context, now: float) -> list[ProxyAction]:
        """Cancel what rings: the call goes elsewhere (``forward_noanswer``)."""
        ctx.later_groups = []
        out: list[ProxyAction] = []
        for b in ctx.live():
            b.superseded = True
            out.extend(self.cancel_branch(b, now))
        return out

    def connection_failed(self, peer: Peer, now: float) -> list[ProxyAction]:
        """The transport could not reach ``peer``: its waiting branches fail (503)."""
        out: list[ProxyAction] = []
        for b in list(self._by_dest.get(dest_key(peer), ())):
            if not b.provisional and not b.final:
                out.extend(self.transactions.transport_error(b.txn, now))
        return out


def _settled(ctx: Context) -> None:
    """The request's final is chosen: no branch is made from its base any more.

    The context lives on while its transactions wait (up to 32 s); its
    base request need not keep its parsed fields (see
    :meth:`TransactionLayer.compact_waiting` for the rest).
    """
    if ctx.base is not None:
        ctx.base.compact()

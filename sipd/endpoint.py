"""The sans-IO SIP endpoint: bytes and time in, bytes out (the aioquic pattern).

:meth:`Endpoint.receive` takes one datagram or one framed TCP message with
its :class:`Peer` and ``now``; :meth:`Endpoint.handle_timer` runs the
transaction timers; :meth:`Endpoint.get_timer` says when to call it next.
Nothing here reads a clock or touches a socket, so the whole receive path
is tested by passing bytes and numbers.

A request that fails validation gets the :class:`SipError`'s response
here, without a transaction; a :class:`SipError` raised while answering
becomes its response in :meth:`Server.guard` or, for a request the proxy
routes, in the proxy's ``Forker.safely``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Any

from sipd.core.flows import RegisteredFlows
from sipd.core.peer import Outgoing, Peer
from sipd.core.work import Action, Ask, Commit, Defer, Job, Later, Outcome
from sipd.proxy.calltrack import AccStats, CallTracker, acc_jobs
from sipd.proxy.context import PROXY_METHODS, ProxyAction
from sipd.proxy.keepalive import KeepAlive, Probe
from sipd.proxy.proxy import Proxy
from sipd.registrar.changelog import log_changes
from sipd.registrar.persistence import Persistence
from sipd.registrar.server import Reply, Server
from sipd.sip.errors import ParseError, SipError
from sipd.sip.framing import FramingError
from sipd.sip.headers import Via
from sipd.sip.message import Request, Response, make_response, parse
from sipd.sip.transaction import (
    Event,
    RequestReceived,
    Send,
    ServerTransaction,
    Transaction,
    TransactionLayer,
)
from sipd.sip.uri import SipURI
from srfs.files.acc import AccFiles
from srfs.logtext import quote
from srfs.state.location import LocationStore

log = logging.getLogger("sipd.endpoint")


@dataclass
class EndpointStats:
    messages_in: int = 0
    requests_in: int = 0
    responses_in: int = 0
    messages_out: int = 0
    keepalives: int = 0
    not_sip_dropped: int = 0
    oversize_dropped: int = 0
    bad_requests: int = 0
    bad_responses_dropped: int = 0
    unanswerable_dropped: int = 0
    expired: int = 0
    responses_sent: list[int] = field(default_factory=lambda: [0] * 6)
    """Responses sent, by status class (1xx at index 0): sipd's own and
    those it forwards, each once (retransmissions are the transactions')."""


def reply_peer(via: Via, peer: Peer) -> Peer:
    """Where responses to a request go (RFC 3261 §18.2.2, RFC 3581 §4).

    Over TCP the connection the request came on; over UDP the source
    address (``received``) and, when the client asked with ``rport``, the
    source port, else the port in Via's sent-by.
    """
    if peer.reliable:
        return peer
    rport = via.param("rport")
    port = int(rport) if rport else via.port or 5060
    # Usually the source itself: then no copy (a transaction keeps it 32 s).
    return peer if port == peer.port else Peer(peer.transport, peer.host, port, peer.conn)


def stamp_via(req: Request, peer: Peer) -> Via:
    """Add ``received`` and fill ``rport`` on the top Via (§18.2.1, RFC 3581).

    Returns the stamped Via. Raises :class:`ParseError` if the top Via is
    unusable, in which case no response can be routed at all.
    """
    via = req.top_via
    rport = via.has_param("rport")
    if not rport and via.host.strip("[]") == peer.host:
        return via
    # One pass over the parameters, on every request: keep their order,
    # set received (and rport), drop nothing else.
    params: list[tuple[str, str | None]] = []
    seen_received = False
    for k, v in via.params:
        lk = k.lower()
        if lk == "received":
            params.append((k, peer.host))
            seen_received = True
        elif lk == "rport":
            params.append((k, str(peer.port)))
        else:
            params.append((k, v))
    if not seen_received:
        params.append(("received", peer.host))
    stamped = Via(via.transport, via.host, via.port, tuple(params), via.protocol)
    req.set_top_via(stamped)
    return stamped


def _earlier(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None or a <= b:
        return a
    return b


@dataclass(eq=False, slots=True)
class _Held:
    """A response held back until its time (:class:`~sipd.core.work.Later`)."""

    txn: ServerTransaction
    response: Response
    _timers: dict[Any, int] = field(default_factory=dict)


class Endpoint:
    """The SIP side of the daemon with every piece of state it owns.

    ``now`` is a monotonic clock (transaction timers); the wall clock,
    which registrations expire by and which nonces carry, is ``now +
    wall_offset``: the I/O layer keeps the offset current, tests set it.
    """

    def __init__(
        self,
        server: Server,
        *,
        max_message_size: int,
        transactions: TransactionLayer | None = None,
        store: LocationStore | None = None,
        persistence: Persistence | None = None,
        proxy: Proxy | None = None,
        tracker: CallTracker | None = None,
        acc_files: AccFiles | None = None,
        acc_fsync: bool = False,
        keepalive: KeepAlive | None = None,
    ) -> None:
        self.server = server
        self.max_message_size = max_message_size
        # Not "or": an empty layer has len() 0 and is falsy.
        self.transactions = transactions if transactions is not None else TransactionLayer()
        self.store = store
        #: The TCP connections registrations were made over.
        self.flows = RegisteredFlows(store) if store is not None else None
        self.persistence = persistence
        #: Calls in progress and their records (``~/.sr/acc``); fed by the proxy.
        self.tracker = tracker
        self.acc_files = acc_files or AccFiles()
        self.acc_fsync = acc_fsync
        self.acc_stats = AccStats()
        self.wall_offset = 0.0
        self.stats = EndpointStats()
        self.transport_stats: Any = None
        self._pending: list[Action] = []
        #: Live connections by transport and remote address: how the proxy
        #: reaches a phone on the connection it registered over.
        self._tcp_peers: dict[tuple[str, str, int], Peer] = {}
        self.proxy = proxy
        #: Probes of the phones behind NAT, and what they find.
        self.keepalive = keepalive
        server.wall = self.wall
        server.in_transaction = self._in_transaction
        if persistence is not None:
            persistence.wall = self.wall
        if proxy is not None:
            proxy.wall = self.wall
            proxy.live_peer = lambda transport, host, port: self._tcp_peers.get(
                (transport, host, port))
        if keepalive is not None:
            keepalive.live_peer = lambda transport, host, port: self._tcp_peers.get(
                (transport, host, port))
        if self.flows is not None:
            # Requests for a UDP binding leave from the socket it registered on.
            if proxy is not None:
                proxy.udp_socket = self.flows.udp_socket
            if keepalive is not None:
                keepalive.udp_socket = self.flows.udp_socket

    def wall(self, now: float) -> float:
        return now + self.wall_offset

    def emit(self, action: Action) -> None:
        """Queue background work from a subscriber; sent with the next output."""
        self._pending.append(action)

    def _drain(self, out: list[Action], now: float) -> list[Action]:
        self.transactions.compact_waiting()
        if self.keepalive is not None:
            # Bindings added by what just ran get their first probe's time.
            self.keepalive.schedule(now)
        if self.persistence is not None:
            out.extend(self.persistence.jobs(now, self.wall(now)))
        if self._pending:
            out.extend(self._pending)
            self._pending = []
        media = self.proxy.forker.media if self.proxy is not None else None
        if media is not None:
            out.extend(media.take_pending())
        if self.tracker is not None:
            out.extend(acc_jobs(self.tracker, self.acc_files, fsync=self.acc_fsync,
                                stats=self.acc_stats))
        return out

    def take_pending(self, now: float) -> list[Action]:
        """Background work queued outside a receive or timer (start-up)."""
        return self._drain([], now)

    # -------------------------------------------------------------- input

    def receive(self, data: bytes, peer: Peer, now: float) -> list[Action]:
        return self._drain(self._receive(data, peer, now), now)

    def _receive(self, data: bytes, peer: Peer, now: float) -> list[Action]:
        if not data.strip(b"\r\n"):
            # RFC 5626 keep-alives over UDP and stray CRLFs: nothing to answer.
            self.stats.keepalives += 1
            return []
        self.stats.messages_in += 1
        if self.proxy is not None:
            self.proxy.destinations.heard_from(peer.host, peer.port)
        if peer.reliable:
            self._tcp_peers[(peer.transport, peer.host, peer.port)] = peer
        if len(data) > self.max_message_size:
            self.stats.oversize_dropped += 1
            return []
        try:
            msg = parse(data)
        except ParseError as exc:
            return self._unparsable(exc, peer)
        if isinstance(msg, Response):
            return self._response(msg, peer, now)
        return self._request(msg, peer, now)

    def framing_error(self, error: FramingError, peer: Peer) -> list[Action]:
        """A TCP stream that cannot be framed; the transport closes it after this."""
        return list(self._unparsable(error, peer))

    def connection_closed(self, peer: Peer, now: float) -> list[Action]:
        """A TCP connection ended: the proxy no longer sends on it.

        A request sent on it that got no answer at all will get none: the
        peer closed without reading it, or reset. Its branch fails now
        (§17.1.4), so the caller hears at once, not after Timer B. A branch
        with a provisional answer waits on: the callee may still answer
        over a new connection (§18.2.2).
        """
        key = (peer.transport, peer.host, peer.port)
        if self._tcp_peers.get(key) == peer:
            del self._tcp_peers[key]
        return self.connection_failed(peer, now)

    def connection_has_binding(self, peer: Peer) -> bool:
        """Whether a registration held now came over ``peer``'s TCP connection."""
        return self.flows is not None and self.flows.carries_binding(peer)

    def connection_failed(self, peer: Peer, now: float) -> list[Action]:
        """A TCP connection could not be opened, or could not take a request."""
        if self.proxy is None:
            return []
        return self._drain(self._run_proxy(self.proxy.connection_failed(peer, now), now), now)

    def _unparsable(self, exc: ParseError, peer: Peer) -> list[Action]:
        partial = exc.message
        if isinstance(partial, Request) and partial.method != "ACK":
            out = self._stateless_error(partial, peer, exc)
            if out:
                return out
        self.stats.not_sip_dropped += 1
        log.debug("dropped %s input from %s: %s", "unanswerable" if partial else "non-SIP", peer, exc.reason)
        return []

    def _stateless_error(self, req: Request, peer: Peer, exc: SipError) -> list[Action]:
        """Answer a broken request without a transaction, if its Via allows."""
        try:
            via = stamp_via(req, peer)
        except ParseError:
            self.stats.unanswerable_dropped += 1
            return []
        self.stats.bad_requests += 1
        log.info("%s %s from %s: %d %s", req.method, quote(req.uri_text, 80), peer, exc.status,
                 exc.reason)
        resp = make_response(req, exc.status, exc.reason, exc.headers)
        self._count_response(resp.status)
        return self._out(resp.to_bytes(), reply_peer(via, peer))

    def _request(self, req: Request, peer: Peer, now: float) -> list[Action]:
        self.stats.requests_in += 1
        try:
            via = stamp_via(req, peer)
        except ParseError as exc:
            if req.method == "ACK":
                return []
            return self._unparsable(exc, peer)
        try:
            req.validate()
        except SipError as exc:
            if req.method == "ACK":
                return []
            return self._stateless_error(req, peer, exc)
        dest = reply_peer(via, peer)
        if req.method != "ACK":
            # The challenge every call and registration begins with, made
            # without a transaction. Each path asks whether the request is a
            # retransmission in one (which answers it) only once its own
            # checks have passed: other requests are looked up once, below.
            proxy = self.proxy
            if proxy is not None and self._for_proxy(req):
                challenge = proxy.stateless_challenge(req, dest, now)
            else:
                challenge = self.server.stateless_challenge(req, dest, now)
            if challenge is not None:
                self._count_response(challenge.status)
                return self._out(challenge.to_bytes(), dest)
        events = self.transactions.receive_request(req, dest, dest.reliable, now)
        return self._run(events, now, dest)

    def _response(self, resp: Response, peer: Peer, now: float) -> list[Action]:
        self.stats.responses_in += 1
        resp.adopt_top_via(self.transactions.own_vias)
        try:
            resp.validate()
        except SipError:
            self.stats.bad_responses_dropped += 1
            return []
        return self._run(self.transactions.receive_response(resp, peer, now), now)

    # -------------------------------------------------------------- timers

    def handle_timer(self, now: float) -> list[Action]:
        out: list[Action] = []
        # One heap for the transactions', the proxy's and our own timers,
        # each entry dispatched by the kind of its owner.
        for owner, kind in self.transactions.deadlines.due(now):
            if isinstance(owner, Transaction):
                out.extend(self._run(self.transactions.on_timer(owner, kind, now), now))
            elif isinstance(owner, _Held):
                out.extend(self._run(self.transactions.server_respond(
                    owner.txn, owner.response, now), now))
            elif isinstance(owner, Probe):
                if self.keepalive is not None:
                    events, dropped = self.keepalive.on_timer(owner, kind, now)
                    out.extend(self._run(events, now))
                    log_changes(dropped, self.wall(now))
            elif self.proxy is not None:
                out.extend(self._run_proxy(self.proxy.on_timer(owner, kind, now), now))
        if self.store is not None:
            wall = self.wall(now)
            expired = self.store.expire(wall)
            self.stats.expired += len(expired)
            log_changes(expired, wall)
        if self.tracker is not None:
            self.tracker.expire(self.wall(now))
        return self._drain(out, now)

    def get_timer(self) -> float | None:
        # Asked after every batch of messages sent: no list, no generator.
        first = self.transactions.deadlines.next()
        if self.persistence is not None:
            first = _earlier(first, self.persistence.next_deadline())
        if self.store is not None:
            expiry = self.store.next_expiry()
            if expiry is not None:
                first = _earlier(first, expiry - self.wall_offset)
        if self.tracker is not None:
            calls_due = self.tracker.next_deadline()
            if calls_due is not None:
                first = _earlier(first, calls_due - self.wall_offset)
        if self.keepalive is not None and self.keepalive.pending:
            # Bindings wait for their first probe's time: at once.
            first = _earlier(first, 0.0)
        return first

    # ------------------------------------------------------- events to bytes

    def _run(self, events: list[Event], now: float, source: Peer | None = None) -> list[Action]:
        """Act on transaction events; ``source`` is where the request that
        caused them came from (its replies' way), when they come of one."""
        out: list[Action] = []
        for event in events:
            if isinstance(event, Send):
                dest = event.dest
                assert isinstance(dest, Peer)
                message = event.message
                if isinstance(message, Response) and not event.retransmission:
                    self._count_response(message.status)
                out.extend(self._out(message.to_bytes(), dest))
            elif isinstance(event, RequestReceived):
                out.extend(self._deliver(event, now, source))
            elif self.keepalive is not None and self.keepalive.owns(event.txn):
                # Not ``events``: compiled with mypyc, a loop over a list
                # reads the name again at each turn.
                more, dropped = self.keepalive.handle_event(event, now)
                out.extend(self._run(more, now))
                log_changes(dropped, self.wall(now))
            elif self.proxy is not None:
                out.extend(self._run_proxy(self.proxy.handle_event(event, now), now))
        return out

    def _run_proxy(self, actions: list[ProxyAction], now: float) -> list[Action]:
        out: list[Action] = []
        for action in actions:
            if isinstance(action, Outgoing):
                self.stats.messages_out += 1
                out.append(action)
            elif isinstance(action, Defer):
                out.append(self._proxy_job(action))
            elif isinstance(action, Ask):
                out.append(self._proxy_ask(action))
            else:
                out.extend(self._run([action], now))
        return out

    def _proxy_job(self, defer: Defer[Any, list[ProxyAction]]) -> Job[Any]:
        # The proxy's continuations take the monotonic time: they arm timers.
        def done(outcome: Outcome[Any], later: float) -> list[Action]:
            return self._drain(self._run_proxy(defer.then(outcome, later), later), later)

        return Job(defer.run, done, name=defer.name, directory=defer.directory)

    def _proxy_ask(self, ask: Ask[list[ProxyAction]]) -> Ask[list[Action]]:
        def then(outcome: Outcome[dict[str, Any]], later: float) -> list[Action]:
            return self._drain(self._run_proxy(ask.then(outcome, later), later), later)

        return Ask(ask.message, then, name=ask.name)

    def _in_transaction(self, req: Request) -> bool:
        return self.transactions.find_server(req) is not None

    def _for_proxy(self, req: Request) -> bool:
        """Requests the proxy forwards; the rest (REGISTER, OPTIONS to the
        server itself) are the server's."""
        if self.proxy is None or req.method not in PROXY_METHODS:
            return False
        try:
            uri = req.uri
        except ParseError:
            return True  # the proxy answers 416/400 for it
        to_server = (
            isinstance(uri, SipURI) and uri.user is None
            and self.server.identity.is_local_host(uri.host) and "Route" not in req
        )
        return not to_server

    def _deliver(self, event: RequestReceived, now: float,
                 source: Peer | None = None) -> list[Action]:
        req = event.request
        txn = event.txn
        if txn is None:
            # An ACK to a 2xx: end to end, the proxy passes it on.
            if self.proxy is None:
                return []
            return self._run_proxy(self.proxy.handle_ack(req, source), now)
        if req.method == "CANCEL":
            invite = self.transactions.find_invite_for_cancel(req)
            out = self._respond(txn, self._cancel(req), now)
            if invite is not None and self.proxy is not None:
                out.extend(self._run_proxy(self.proxy.cancel(invite, now), now))
            return out
        peer = txn.source
        assert isinstance(peer, Peer)
        if self.proxy is not None and self._for_proxy(req):
            return self._run_proxy(self.proxy.handle_request(txn, req, peer, now), now)
        if req.method == "REGISTER" and self.flows is not None:
            self.flows.heard(peer)
        return self._respond(txn, self.server.handle_request(req, peer, now), now)

    def _respond(self, txn: ServerTransaction, reply: Reply, now: float) -> list[Action]:
        if reply is None:
            return []
        if isinstance(reply, Defer):
            defer = reply

            def done(outcome: Outcome[Any], later: float) -> list[Action]:
                answer = self.server.guard(txn.request, lambda: defer.then(outcome, later))
                return self._drain(self._respond(txn, answer, later), later)

            return [Job(defer.run, done, name=defer.name, directory=defer.directory)]
        if isinstance(reply, Commit):
            return self._commit(txn, reply, now)
        if isinstance(reply, Later):
            due = reply.not_before - self.wall_offset
            if due > now:
                self.transactions.deadlines.arm(_Held(txn, reply.response), "held", due)
                return []
            reply = reply.response
        assert isinstance(reply, Response)
        return self._run(self.transactions.server_respond(txn, reply, now), now)

    def _commit(self, txn: ServerTransaction, commit: Commit[Reply], now: float) -> list[Action]:
        """Answer once the change is on disk and applied (see :mod:`sipd.registrar.persistence`)."""
        def finish(outcome: Outcome[None], later: float) -> list[Action]:
            answer = self.server.guard(txn.request, lambda: commit.then(outcome, later))
            return self._drain(self._respond(txn, answer, later), later)

        if self.persistence is not None:
            return self.persistence.commit(commit.user, commit.plan, finish, now,
                                           owner=commit.owner)
        if self.store is None:
            return finish(Outcome(error=RuntimeError("no location store")), now)
        # No disk behind this endpoint (tests): plan and apply at once.
        wall = self.wall(now)
        try:
            changes = self.store.apply(commit.plan(wall))
        except Exception as exc:  # noqa: BLE001 - the refusal is the answer
            return finish(Outcome(error=exc), now)
        log_changes(changes, wall)
        return finish(Outcome(), now)

    def _cancel(self, cancel: Request) -> Response:
        """RFC 3261 §9.2: 200 if the INVITE is known, else 481."""
        invite = self.transactions.find_invite_for_cancel(cancel)
        if invite is None:
            return Server.reply(cancel, 481, "Call/Transaction Does Not Exist")
        # The proxy ends the INVITE itself (487) once its branches are done.
        return Server.reply(cancel, 200, "OK")

    def _count_response(self, status: int) -> None:
        # The parser holds status codes to 100-699.
        if 100 <= status <= 699:
            self.stats.responses_sent[status // 100 - 1] += 1

    def _out(self, data: bytes, peer: Peer) -> list[Action]:
        self.stats.messages_out += 1
        return [Outgoing(data, peer)]

    def statistics(self) -> dict[str, int]:
        out = {f.name: getattr(self.stats, f.name) for f in fields(self.stats)
               if f.name != "responses_sent"}
        for f in fields(self.server.stats):
            out[f.name] = getattr(self.server.stats, f.name)
        return out

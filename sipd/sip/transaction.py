"""The RFC 3261 §17 transaction layer, sans-IO, with RFC 6026's Accepted state.

Nothing here reads a clock or touches a socket. The caller hands in parsed
messages, an opaque peer value (``source``/``dest``: whatever the transport
uses to reach a peer - an address tuple, a connection object) and ``now``;
the layer answers with a list of :data:`Event` values to act on, and
:meth:`TransactionLayer.get_timer` says when to call
:meth:`TransactionLayer.handle_timer` next (the aioquic pattern)::

    events = layer.receive_request(req, addr, reliable=False, now=clock())
    for ev in events:
        match ev:
            case Send(message, dest, reliable):       transport.send(message, dest)
            case RequestReceived(request, txn):       tu.on_request(request, txn)
            case ResponseReceived(response, txn):     tu.on_response(response, txn)
            case Timeout(txn) | TransportFailed(txn): tu.on_failure(txn)  # 408 / 503
            case Terminated(txn):                     tu.forget(txn)

Four machines live here: INVITE client (Figure 5), non-INVITE client
(Figure 6), INVITE server (Figure 7) and non-INVITE server (Figure 8), all
amended by RFC 6026 when ``rfc6026=True`` (the default): a 2xx moves an
INVITE transaction to *Accepted* instead of ending it, so the INVITE
server absorbs request retransmissions that would otherwise look like new
calls, and the INVITE client hands every 2xx retransmission (and the 2xx
of other forks) to the TU for 64*T1. RFC 6026 also makes a proxy drop
responses that match no transaction instead of forwarding them; this layer
always drops them (and counts them).

Timer durations come from :mod:`sipd.sip.timers`. The timers live in one
heap (:class:`~sipd.sip.timers.Deadlines`) that the layer shares with the
proxy and the endpoint; they are cancelled lazily (a stale heap entry is
skipped when it surfaces) and compacted when stale entries pile up.
Transactions leave the layer the moment they reach Terminated.

Why one module of this size: the four state machines share the
transaction table, the matching rules of §17.1.3/§17.2.3 and the timer
queue; apart, each would need the others' private state.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

from sipd.sip.errors import ParseError
from sipd.sip.headers import Via
from sipd.sip.message import Request, Response, make_response
from sipd.sip.timers import Deadlines, Timer, Timers

#: RFC 3261 §8.1.1.7: a branch starting with this was built to be unique.
MAGIC_COOKIE = "z9hG4bK"


class State(enum.Enum):
    """Transaction states of RFC 3261 §17 and RFC 6026."""

    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


# ------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class Send:
    """Hand ``message`` to the transport for ``dest``.

    ``txn`` is the transaction that sends it: report a failure to send with
    :meth:`TransactionLayer.transport_error`. ``retransmission`` is True for
    copies sent by a timer or in answer to a retransmitted request.
    """

    message: Request | Response
    dest: Hashable
    reliable: bool
    txn: Transaction
    retransmission: bool = False

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, message: Request | Response, dest: Hashable, reliable: bool, txn: Transaction,
                 retransmission: bool = False) -> None:
        object.__setattr__(self, "message", message)
        object.__setattr__(self, "dest", dest)
        object.__setattr__(self, "reliable", reliable)
        object.__setattr__(self, "txn", txn)
        object.__setattr__(self, "retransmission", retransmission)


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """A new request for the TU, with the server transaction that answers it.

    ``txn`` is None for an ACK that belongs to no INVITE transaction: the
    ACK of a 2xx, which is end-to-end and not part of any transaction.
    """

    request: Request
    txn: ServerTransaction | None

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, request: Request, txn: ServerTransaction | None) -> None:
        object.__setattr__(self, "request", request)
        object.__setattr__(self, "txn", txn)


@dataclass(frozen=True, slots=True)
class ResponseReceived:
    """A response for the TU (provisional, final, or a 2xx in Accepted)."""

    response: Response
    txn: ClientTransaction

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, response: Response, txn: ClientTransaction) -> None:
        object.__setattr__(self, "response", response)
        object.__setattr__(self, "txn", txn)


@dataclass(frozen=True, slots=True)
class Timeout:
    """No answer in time: Timer B or F (the TU acts as on a 408), or Timer H
    (a server never got the ACK for its non-2xx final)."""

    txn: Transaction
    timer: Timer

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, txn: Transaction, timer: Timer) -> None:
        object.__setattr__(self, "txn", txn)
        object.__setattr__(self, "timer", timer)


@dataclass(frozen=True, slots=True)
class TransportFailed:
    """The transport could not send for ``txn`` (the TU acts as on a 503)."""

    txn: Transaction

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, txn: Transaction) -> None:
        object.__setattr__(self, "txn", txn)


@dataclass(frozen=True, slots=True)
class Terminated:
    """``txn`` has ended and left the layer; the TU can drop its context."""

    txn: Transaction

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, txn: Transaction) -> None:
        object.__setattr__(self, "txn", txn)


Event: TypeAlias = (
    Send | RequestReceived | ResponseReceived | Timeout | TransportFailed | Terminated
)


@dataclass(frozen=True, slots=True)
class TransactionStatistics:
    """Counters for status and metrics files (trio's ``statistics()`` style)."""

    #: Transactions alive now.
    server_transactions: int
    client_transactions: int
    #: Transactions created since start.
    server_created: int
    client_created: int
    #: Retransmitted requests (server side) and responses (client side) that
    #: the layer answered or swallowed without bothering the TU.
    retransmissions_absorbed: int
    #: Requests and responses re-sent by the layer (timers A/E/G, answers to
    #: retransmitted requests, repeated ACKs).
    retransmissions_sent: int
    #: Timers B, F and H that fired.
    timeouts: int
    transport_failures: int
    #: Responses that matched no client transaction, or were too broken to
    #: match one; dropped.
    stray_responses: int
    #: Timers armed now.
    timers_pending: int


# ------------------------------------------------------------ transactions

_ServerKey: TypeAlias = tuple[object, ...]
_ClientKey: TypeAlias = tuple[str, str]


class Transaction:
    """What client and server transactions share.

    The attributes are for reading; only the layer changes them. Transactions
    compare and hash by identity, so the TU can key its own state on them.
    """

    __slots__ = (
        "request",
        "method",
        "reliable",
        "state",
        "created",
        "last_response",
        "_layer",
        "_timers",
        "_interval",
    )

    is_invite: ClassVar[bool] = False

    def __init__(
        self, layer: TransactionLayer, request: Request, reliable: bool, now: float
    ) -> None:
        #: The request that created the transaction. Once a non-INVITE server
        #: transaction has sent its final response, only its start line
        #: (:meth:`Request.stub`), and its final response only its bytes
        #: (:meth:`Response.freeze`).
        self.request = request
        self.method = request.method
        self.reliable = reliable
        self.state = State.TERMINATED  # set by _start()
        self.created = now
        #: The last response sent (server) or received (client).
        self.last_response: Response | None = None
        self._layer = layer
        # Timer -> sequence number of its live heap entry.
        self._timers: dict[Timer, int] = {}
        # Current interval of the retransmission timer (A, E or G).
        self._interval = 0.0

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    @property
    def peer(self) -> Hashable:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.state.value}>"

    # The machines call these; they are thin so the machine code reads like
    # the RFC's figures.

    def _send(self, message: Request | Response, out: list[Event], again: bool = False) -> None:
        if again:
            self._layer._retransmissions_sent += 1
        out.append(Send(message, self.peer, self.reliable, self, again))

    def _arm(self, timer: Timer, delay: float, now: float) -> None:
        self._layer._arm(self, timer, now + delay)

    def _arm_retransmit(self, timer: Timer, now: float) -> None:
        delay = self._layer.timers.duration(timer, self.reliable)
        if delay is not None:
            self._interval = delay
            self._arm(timer, delay, now)

    def _rearm_retransmit(self, timer: Timer, now: float, interval: float | None = None) -> None:
        self._interval = (
            self._layer.timers.next_interval(timer, self._interval)
            if interval is None
            else interval
        )
        self._arm(timer, self._interval, now)

    def _arm_timeout(self, timer: Timer, now: float) -> None:
        delay = self._layer.timers.duration(timer, self.reliable)
        assert delay is not None, timer
        self._arm(timer, delay, now)

    def _disarm(self, *timers: Timer) -> None:
        for timer in timers:
            self._layer._disarm(self, timer)

    def _linger(self, timer: Timer, now: float, out: list[Event]) -> None:
        """Wait ``timer`` for stray retransmissions, then end; at once if it is 0."""
        delay = self._layer.timers.duration(timer, self.reliable)
        if not delay:
            self._layer._finish(self, out)
        else:
            self._arm(timer, delay, now)
            self._layer._wait(self)

    def _accept(self, timer: Timer, now: float) -> None:
        """RFC 6026's Accepted: wait ``timer`` (L or M) for 2xx and INVITE retransmissions."""
        self.state = State.ACCEPTED
        self._arm_timeout(timer, now)
        self._layer._wait(self)

    def _timed_out(self, timer: Timer, out: list[Event]) -> None:
        self._layer._timeouts += 1
        out.append(Timeout(self, timer))
        self._layer._finish(self, out)

    def _absorbed(self) -> None:
        self._layer._absorbed += 1

    def _on_timer(self, timer: Timer, now: float, out: list[Event]) -> None:
        raise NotImplementedError


class ClientTransaction(Transaction):
    """A client transaction (§17.1): sends a request and collects responses."""

    __slots__ = ("dest", "ack", "_key", "_via_text")

    def __init__(
        self,
        layer: TransactionLayer,
        request: Request,
        dest: Hashable,
        reliable: bool,
        key: _ClientKey,
        now: float,
    ) -> None:
        super().__init__(layer, request, reliable, now)
        self.dest = dest
        self._key = key
        #: The ACK this transaction generated for a non-2xx final (INVITE only).
        self.ack: Request | None = None
        # Its top Via field, while it is in the layer's own Vias.
        self._via_text: str | None = None

    @property
    def peer(self) -> Hashable:
        return self.dest

    def _start(self, now: float, out: list[Event]) -> None:
        raise NotImplementedError

    def _on_response(self, response: Response, now: float, out: list[Event]) -> None:
        raise NotImplementedError


class InviteClientTransaction(ClientTransaction):
    """RFC 3261 Figure 5, with RFC 6026 Figure 5's Accepted state."""

    __slots__ = ()
    is_invite = True

    def _start(self, now: float, out: list[Event]) -> None:
        self.state = State.CALLING
        self._send(self.request, out)
        self._arm_retransmit(Timer.A, now)
        self._arm_timeout(Timer.B, now)

    def _on_response(self, response: Response, now: float, out: list[Event]) -> None:
        status = response.status
        if self.state in (State.CALLING, State.PROCEEDING):
            self.last_response = response
            # Any response proves the request arrived, so retransmitting it
            # (A) is pointless; B only guards the wait for a first answer.
            self._disarm(Timer.A, Timer.B)
            if status < 200:
                self.state = State.PROCEEDING
                out.append(ResponseReceived(response, self))
            elif status < 300:
                # The TU acknowledges a 2xx itself (§13.2.2.4): that ACK is
                # end-to-end and may take another route.
                out.append(ResponseReceived(response, self))
                if self._layer.rfc6026:
                    self._accept(Timer.M, now)
                else:
                    self._layer._finish(self, out)
            else:
                self.ack = build_ack(self.request, response)
                self._send(self.ack, out)
                out.append(ResponseReceived(response, self))
                self.state = State.COMPLETED
                self._linger(Timer.D, now, out)
        elif self.state is State.COMPLETED:
            # A retransmitted final means our ACK was lost (§17.1.1.2).
            self._absorbed()
            if status >= 300 and self.ack is not None:
                self._send(self.ack, out, again=True)
        elif self.state is State.ACCEPTED:
            if 200 <= status < 300:
                # A retransmission, or the 2xx of another fork: the TU must
                # see each one to (re)send its ACK (RFC 6026 §7.2).
                out.append(ResponseReceived(response, self))
            else:
                self._absorbed()

    def _on_timer(self, timer: Timer, now: float, out: list[Event]) -> None:
        if timer is Timer.A and self.state is State.CALLING:
            self._send(self.request, out, again=True)
            self._rearm_retransmit(Timer.A, now)
        elif timer is Timer.B and self.state is State.CALLING:
            self._timed_out(Timer.B, out)
        elif (timer is Timer.D and self.state is State.COMPLETED) or (
            timer is Timer.M and self.state is State.ACCEPTED
        ):
            self._layer._finish(self, out)


class NonInviteClientTransaction(ClientTransaction):
    """RFC 3261 Figure 6."""

    __slots__ = ()

    def _start(self, now: float, out: list[Event]) -> None:
        self.state = State.TRYING
        self._send(self.request, out)
        self._arm_retransmit(Timer.E, now)
        self._arm_timeout(Timer.F, now)

    def _on_response(self, response: Response, now: float, out: list[Event]) -> None:
        if self.state in (State.TRYING, State.PROCEEDING):
            self.last_response = response
            if response.status < 200:
                # E keeps running: unlike INVITE, a provisional does not
                # stop retransmissions, it only slows them to T2.
                self.state = State.PROCEEDING
                out.append(ResponseReceived(response, self))
            else:
                self._disarm(Timer.E, Timer.F)
                out.append(ResponseReceived(response, self))
                self.state = State.COMPLETED
                self._linger(Timer.K, now, out)
        elif self.state is State.COMPLETED:
            self._absorbed()

    def _on_timer(self, timer: Timer, now: float, out: list[Event]) -> None:
        if timer is Timer.E and self.state in (State.TRYING, State.PROCEEDING):
            self._send(self.request, out, again=True)
            t2 = self._layer.timers.t2 if self.state is State.PROCEEDING else None
            self._rearm_retransmit(Timer.E, now, t2)
        elif timer is Timer.F and self.state in (State.TRYING, State.PROCEEDING):
            self._timed_out(Timer.F, out)
        elif timer is Timer.K and self.state is State.COMPLETED:
            self._layer._finish(self, out)


class ServerTransaction(Transaction):
    """A server transaction (§17.2): receives a request, sends the TU's responses."""

    __slots__ = ("source", "response_to_tag", "_key")

    def __init__(
        self,
        layer: TransactionLayer,
        request: Request,
        source: Hashable,
        reliable: bool,
        key: _ServerKey,
        now: float,
    ) -> None:
        super().__init__(layer, request, reliable, now)
        self.source = source
        #: To tag of the last final response sent, for INVITE transactions (an
        #: RFC 2543 ACK must carry it); None for the others, which no ACK matches.
        self.response_to_tag: str | None = None
        self._key = key

    @property
    def peer(self) -> Hashable:
        return self.source

    def _start(self, now: float, out: list[Event]) -> None:
        raise NotImplementedError

    def _on_request(self, request: Request, now: float, out: list[Event]) -> None:
        raise NotImplementedError

    def _respond(self, response: Response, now: float, out: list[Event]) -> None:
        raise NotImplementedError

    def _sent_final(self, response: Response) -> None:
        self.last_response = response


class InviteServerTransaction(ServerTransaction):
    """RFC 3261 Figure 7, with RFC 6026 Figure 7's Accepted state."""

    __slots__ = ()
    is_invite = True

    def _sent_final(self, response: Response) -> None:
        self.last_response = response
        try:
            self.response_to_tag = response.to.tag
        except ParseError:
            self.response_to_tag = None

    def _start(self, now: float, out: list[Event]) -> None:
        self.state = State.PROCEEDING
        if self._layer.auto_trying:
            # §17.2.1: a 100 at once stops the client's Timer A; proxies
            # cannot know the TU will answer within 200 ms, so they always send it.
            extra = []
            timestamp = self.request.get("Timestamp")
            if timestamp is not None:
                extra.append(("Timestamp", timestamp))  # §8.2.6.1
            trying = make_response(self.request, 100, headers=extra)
            self.last_response = trying
            self._send(trying, out)
        out.append(RequestReceived(self.request, self))

    def _on_request(self, request: Request, now: float, out: list[Event]) -> None:
        if request.method == "ACK":
            if self.state is State.COMPLETED:
                self.state = State.CONFIRMED
                self._disarm(Timer.G, Timer.H)
                self._linger(Timer.I, now, out)
            elif self.state is State.ACCEPTED:
                # An ACK for our 2xx is the TU's business (RFC 6026 §7.1).
                out.append(RequestReceived(request, None))
            else:
                self._absorbed()
            return
        self._absorbed()
        if self.state in (State.PROCEEDING, State.COMPLETED) and self.last_response is not None:
            self._send(self.last_response, out, again=True)
        # Confirmed and Accepted swallow INVITE retransmissions: in Accepted
        # the UAS core retransmits its 2xx on its own schedule.

    def _respond(self, response: Response, now: float, out: list[Event]) -> None:
        status = response.status
        if self.state is State.PROCEEDING:
            if status < 200:
                self.last_response = response
                self._send(response, out)
            elif status < 300:
                self._sent_final(response)
                self._send(response, out)
                if self._layer.rfc6026:
                    self._accept(Timer.L, now)
                else:
                    self._layer._finish(self, out)
            else:
                self._sent_final(response)
                self._send(response, out)
                self.state = State.COMPLETED
                self._arm_retransmit(Timer.G, now)
                self._arm_timeout(Timer.H, now)
        elif self.state is State.ACCEPTED and 200 <= status < 300:
            # The TU's own 2xx retransmissions, or a 2xx from another fork.
            self.last_response = response
            self._send(response, out)
        # Anything else comes too late (final already sent, or transaction
        # ended): a proxy racing a CANCEL or a timeout hits this; drop it.

    def _on_timer(self, timer: Timer, now: float, out: list[Event]) -> None:
        if timer is Timer.G and self.state is State.COMPLETED:
            assert self.last_response is not None
            self._send(self.last_response, out, again=True)
            self._rearm_retransmit(Timer.G, now)
        elif timer is Timer.H and self.state is State.COMPLETED:
            self._timed_out(Timer.H, out)
        elif (timer is Timer.I and self.state is State.CONFIRMED) or (
            timer is Timer.L and self.state is State.ACCEPTED
        ):
            self._layer._finish(self, out)


class NonInviteServerTransaction(ServerTransaction):
    """RFC 3261 Figure 8."""

    __slots__ = ()

    def _start(self, now: float, out: list[Event]) -> None:
        self.state = State.TRYING
        out.append(RequestReceived(self.request, self))

    def _on_request(self, request: Request, now: float, out: list[Event]) -> None:
        self._absorbed()
        if self.state is not State.TRYING and self.last_response is not None:
            self._send(self.last_response, out, again=True)

    def _respond(self, response: Response, now: float, out: list[Event]) -> None:
        if self.state not in (State.TRYING, State.PROCEEDING):
            return  # too late, see InviteServerTransaction._respond
        if response.status < 200:
            self.state = State.PROCEEDING
            self.last_response = response
            self._send(response, out)
        else:
            self._sent_final(response)
            self._send(response, out)
            self.state = State.COMPLETED
            # Completed only resends this final for 32 s (Timer J over UDP),
            # and a burst of registrations keeps thousands of these alive:
            # keep the response's bytes and the request's start line. The
            # memory of a burst is their high-water mark, which the heap
            # keeps (fragmented) long after they end.
            self.request = self.request.stub()
            response.freeze()
            self._linger(Timer.J, now, out)

    def _on_timer(self, timer: Timer, now: float, out: list[Event]) -> None:
        if timer is Timer.J and self.state is State.COMPLETED:
            self._layer._finish(self, out)


# -------------------------------------------------------------- helpers


def _hop_request(method: str, request: Request, to_value: str | None) -> Request:
    """A request for the same hop as ``request``: its top Via and Route set,
    Request-URI, From, Call-ID and CSeq number, with ``method``."""
    headers: list[tuple[str, str]] = [("Via", request.values("Via")[0])]
    headers.extend(("Route", route) for route in request.get_all("Route"))
    max_forwards = request.get("Max-Forwards")
    headers.append(("Max-Forwards", max_forwards if max_forwards is not None else "70"))
    for name, value in (
        ("From", request.get("From")),
        ("To", to_value),
        ("Call-ID", request.get("Call-ID")),
    ):
        if value is not None:
            headers.append((name, value))
    headers.append(("CSeq", f"{request.cseq.seq} {method}"))
    return Request(method, request.uri_text, headers)


def build_ack(invite: Request, response: Response) -> Request:
    """The ACK a client transaction sends for a 3xx-6xx final (§17.1.1.3).

    Same Request-URI, Call-ID, From and CSeq number as the INVITE; To from
    the response (its tag names the UAS that refused); only the INVITE's top
    Via, so the ACK takes the same hop and matches the server transaction;
    the INVITE's Route header fields, so it follows the same path.
    """
    return _hop_request("ACK", invite, response.get("To") or invite.get("To"))


def build_cancel(request: Request) -> Request:
    """A CANCEL for ``request`` (§9.1), to send in a client transaction of its own.

    Identical Request-URI, Call-ID, To, From and CSeq number; only the top Via
    (same branch, so the next hop matches it to the INVITE) and the Route set.
    """
    return _hop_request("CANCEL", request, request.get("To"))


def is_rfc3261_branch(branch: str | None) -> bool:
    """True if ``branch`` carries the magic cookie and can be matched on alone."""
    return (
        branch is not None and branch.startswith(MAGIC_COOKIE) and len(branch) > len(MAGIC_COOKIE)
    )


def _server_key(request: Request, method: str) -> tuple[_ServerKey, bool]:
    """The §17.2.3 matching key of ``request`` as if its method were ``method``.

    Returns ``(key, rfc2543)``. Raises :class:`ParseError` when a field the
    key needs is missing or bad.
    """
    via: Via = request.top_via
    branch = via.branch
    if is_rfc3261_branch(branch):
        return ("3261", branch, via.host, via.port, method), False
    return _legacy_key(request, method, request.to.tag), True


def _legacy_key(request: Request, method: str, to_tag: str | None) -> _ServerKey:
    # RFC 2543 peers give no unique branch, so a transaction is what shares
    # Request-URI, tags, Call-ID, CSeq and top Via. Text equality is enough:
    # a retransmission repeats the bytes, and §17.1.1.3 makes the ACK repeat
    # the INVITE's Request-URI and Via.
    return (
        "2543",
        request.uri_text.strip(),
        request.from_.tag,
        to_tag,
        request.call_id,
        request.cseq.seq,
        method,
        request.top_via,
    )


def _match_method(method: str) -> str:
    # An ACK for a non-2xx belongs to the INVITE transaction it acknowledges.
    return "INVITE" if method == "ACK" else method


# ---------------------------------------------------------------- the layer


class TransactionLayer:
    """Every transaction of one SIP element, with their timers in a :class:`Deadlines`.

    ``timers`` gives T1/T2/T4. ``auto_trying`` makes INVITE server
    transactions answer 100 Trying at once (what a proxy does, §16.2).
    ``rfc6026`` selects RFC 6026's Accepted state for INVITE transactions
    that see a 2xx (on by default; off gives RFC 3261's original machines).
    """

    def __init__(
        self,
        timers: Timers | None = None,
        *,
        auto_trying: bool = False,
        rfc6026: bool = True,
        deadlines: Deadlines[Any] | None = None,
    ) -> None:
        self.timers = timers if timers is not None else Timers()
        #: The timers of the transactions, and of whoever shares them (the proxy).
        self.deadlines: Deadlines[Any] = deadlines if deadlines is not None else Deadlines()
        self.auto_trying = auto_trying
        self.rfc6026 = rfc6026
        self._servers: dict[_ServerKey, ServerTransaction] = {}
        self._clients: dict[_ClientKey, ClientTransaction] = {}
        self._server_alive = 0
        self._client_alive = 0
        self._server_created = 0
        self._client_created = 0
        self._absorbed = 0
        self._retransmissions_sent = 0
        self._timeouts = 0
        self._transport_failures = 0
        self._stray = 0
        #: Transactions that began to wait (Completed, Confirmed, Accepted)
        #: in the step now running: see :meth:`compact_waiting`.
        self._waiting: list[Transaction] = []
        # The top Via of the request of each client transaction not yet
        # answered, parsed, by its field's text: see own_vias.
        self._own_vias: dict[str, Via] = {}

    @property
    def own_vias(self) -> Mapping[str, Via]:
        """The Vias on top of the requests of the client transactions still
        waiting for their final response, by their fields' text.

        Each response to them brings one back on top
        (:meth:`~sipd.sip.message.Message.adopt_top_via`): parsing those
        again was about 3 % of a proxied call's CPU.
        """
        return self._own_vias

    def _wait(self, txn: Transaction) -> None:
        if isinstance(txn, ClientTransaction):
            # Its answer is in: a late copy of it is rare enough to be parsed.
            self._forget_via(txn)
        waiting = self._waiting
        if len(waiting) >= 1024:
            # An element that never calls compact_waiting() must not grow.
            self.compact_waiting()
        waiting.append(txn)

    def _forget_via(self, txn: ClientTransaction) -> None:
        if txn._via_text is not None:
            # A CANCEL shares its INVITE's Via: whichever is answered first
            # leaves the other's responses to be parsed, as any are.
            self._own_vias.pop(txn._via_text, None)
            txn._via_text = None

    def compact_waiting(self) -> None:
        """Drop the parsed forms of the messages kept by transactions that only wait now.

        Called by the element after each step, once the TU has read the
        messages: a transaction that waits out Timer D, I, K, L or M (up
        to 32 s) keeps its request and last response for retransmissions
        only. Their typed fields (URIs, addresses, Vias) would otherwise
        fill the garbage collector's oldest generation at every call, and
        make each full collection walk them. Nothing is lost: a field read
        later is parsed again.
        """
        for txn in self._waiting:
            txn.request.compact()
            if txn.last_response is not None:
                txn.last_response.compact()
        self._waiting.clear()

    # ------------------------------------------------------------ input

    def receive_request(
        self, request: Request, source: Hashable, reliable: bool, now: float
    ) -> list[Event]:
        """A request from the transport.

        A retransmission is answered or absorbed here; a new request creates a
        server transaction and reaches the TU as :class:`RequestReceived`; an
        ACK that matches no INVITE transaction (the ACK of a 2xx) reaches the
        TU with ``txn=None``. A CANCEL is a transaction of its own; use
        :meth:`find_invite_for_cancel` to find what it cancels.

        Raises :class:`ParseError` if the request lacks a field needed to
        match it (Via, CSeq; for RFC 2543 branches also From, To, Call-ID);
        the transport answers that with a 400 where it can.
        """
        method = request.method
        key, rfc2543 = _server_key(request, _match_method(method))
        out: list[Event] = []
        txn = self._servers.get(key)
        if rfc2543 and method == "ACK":
            txn = self._legacy_ack_match(request, key)
        if txn is not None:
            txn._on_request(request, now, out)
            return out
        if method == "ACK":
            out.append(RequestReceived(request, None))
            return out
        cls = InviteServerTransaction if method == "INVITE" else NonInviteServerTransaction
        txn = cls(self, request, source, reliable, key, now)
        self._servers[key] = txn
        self._server_alive += 1
        self._server_created += 1
        txn._start(now, out)
        return out

    def find_server(self, request: Request) -> ServerTransaction | None:
        """The server transaction ``request`` would be a retransmission in, if any.

        Raises :class:`ParseError` as :meth:`receive_request` does.
        """
        key, _ = _server_key(request, _match_method(request.method))
        return self._servers.get(key)

    def receive_response(self, response: Response, source: Hashable, now: float) -> list[Event]:
        """A response from the transport; never raises.

        It goes to the client transaction with the same top Via branch and
        CSeq method (§17.1.3); ``source`` is not used for matching. A
        response that matches nothing is dropped and counted.
        """
        try:
            branch = response.top_via.branch
            method = response.cseq.method
        except ParseError:
            branch = None
            method = ""
        txn = self._clients.get((branch, method)) if branch else None
        if txn is None:
            self._stray += 1
            return []
        out: list[Event] = []
        txn._on_response(response, now, out)
        return out

    # ------------------------------------------------------------ TU calls

    def server_respond(self, txn: ServerTransaction, response: Response, now: float) -> list[Event]:
        """The TU answers ``txn``.

        A response the machine cannot take any more (a second final, or any
        response after the transaction ended) is dropped: a proxy racing a
        CANCEL, a timeout or a transport failure legitimately produces one.
        """
        out: list[Event] = []
        if not txn.terminated:
            txn._respond(response, now, out)
        return out

    def client_request(
        self, request: Request, dest: Hashable, reliable: bool, now: float
    ) -> tuple[ClientTransaction, list[Event]]:
        """Start a client transaction that sends ``request`` to ``dest``.

        The TU must have put a top Via with a unique branch (magic cookie and
        all) in ``request``. An ACK is never sent through a client transaction:
        the ACK of a 2xx goes straight to the transport, the ACK of a non-2xx
        is made here. Raises :class:`ValueError` for those mistakes.
        """
        if request.method == "ACK":
            raise ValueError("an ACK is not sent through a client transaction")
        try:
            branch = request.top_via.branch
        except ParseError as exc:
            raise ValueError(f"request has no usable top Via: {exc.reason}") from None
        if not branch:
            raise ValueError("the top Via of a client request needs a branch")
        key = (branch, request.method)
        if key in self._clients:
            raise ValueError(f"a client transaction with branch {branch!r} already exists")
        cls = InviteClientTransaction if request.method == "INVITE" else NonInviteClientTransaction
        txn = cls(self, request, dest, reliable, key, now)
        self._clients[key] = txn
        text = request.get("Via")
        if text is not None and "," not in text:  # the field is that one Via
            self._own_vias[text] = request.top_via
            txn._via_text = text
        self._client_alive += 1
        self._client_created += 1
        out: list[Event] = []
        txn._start(now, out)
        return txn, out

    def transport_error(self, txn: Transaction, now: float) -> list[Event]:
        """The transport failed to send for ``txn`` (§17.1.4, §17.2.4)."""
        if txn.terminated:
            return []
        self._transport_failures += 1
        out: list[Event] = [TransportFailed(txn)]
        self._finish(txn, out)
        return out

    def terminate(self, txn: Transaction, now: float) -> list[Event]:
        """End ``txn`` now, on the TU's decision.

        For what the machines leave to the TU: an INVITE client transaction
        in Proceeding waits for a final forever, and a proxy's Timer C
        (§16.8) has to end it after its CANCEL went unanswered; a server
        transaction whose TU gave up without answering.
        """
        out: list[Event] = []
        if not txn.terminated:
            self._finish(txn, out)
        return out

    def find_invite_for_cancel(self, cancel: Request) -> InviteServerTransaction | None:
        """The INVITE server transaction a CANCEL refers to (§9.2), if alive.

        §17.2.3 matching with the CANCEL's method taken as INVITE: branch and
        sent-by for RFC 3261 branches; otherwise Request-URI, From tag, To
        tag, Call-ID, CSeq number and top Via.
        """
        try:
            key, _ = _server_key(cancel, "INVITE")
        except ParseError:
            return None
        txn = self._servers.get(key)
        return txn if isinstance(txn, InviteServerTransaction) else None

    # ------------------------------------------------------------ time

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called; None if never."""
        return self.deadlines.next()

    def handle_timer(self, now: float) -> list[Event]:
        """Fire every timer due at ``now``, in deadline order (the layer's own Deadlines)."""
        out: list[Event] = []
        for txn, timer in self.deadlines.due(now):
            assert isinstance(txn, Transaction), "a shared Deadlines is dispatched by its owner"
            txn._on_timer(timer, now, out)
        return out

    def on_timer(self, txn: Transaction, timer: Timer, now: float) -> list[Event]:
        """One due timer of ``txn``, popped from a Deadlines shared with others."""
        out: list[Event] = []
        txn._on_timer(timer, now, out)
        return out

    # ------------------------------------------------------------ reading

    def statistics(self) -> TransactionStatistics:
        return TransactionStatistics(
            server_transactions=self._server_alive,
            client_transactions=self._client_alive,
            server_created=self._server_created,
            client_created=self._client_created,
            retransmissions_absorbed=self._absorbed,
            retransmissions_sent=self._retransmissions_sent,
            timeouts=self._timeouts,
            transport_failures=self._transport_failures,
            stray_responses=self._stray,
            timers_pending=len(self.deadlines),
        )

    def __len__(self) -> int:
        """Transactions alive."""
        return self._server_alive + self._client_alive

    # ------------------------------------------------------------ internals

    def _legacy_ack_match(self, ack: Request, key: _ServerKey) -> ServerTransaction | None:
        """The INVITE transaction an RFC 2543 ACK acknowledges (§17.2.3).

        The ACK carries the To tag of the *response*; the INVITE carried none
        (a new call) or that same tag (a re-INVITE), so both keys are tried,
        and the tag must be the one the transaction answered with: an ACK
        with another tag acknowledges someone's 2xx, not our final.
        """
        to_tag = ack.to.tag
        for candidate in (key, _legacy_key(ack, "INVITE", None)):
            txn = self._servers.get(candidate)
            if txn is not None and txn.response_to_tag == to_tag:
                return txn
        return None

    def _arm(self, txn: Transaction, timer: Timer, deadline: float) -> None:
        assert not txn.terminated
        self.deadlines.arm(txn, timer, deadline)

    def _disarm(self, txn: Transaction, timer: Timer) -> None:
        self.deadlines.disarm(txn, timer)

    def _finish(self, txn: Transaction, out: list[Event]) -> None:
        txn.state = State.TERMINATED
        self.deadlines.disarm_all(txn)
        if isinstance(txn, ServerTransaction):
            if self._servers.get(txn._key) is txn:
                del self._servers[txn._key]
            self._server_alive -= 1
        else:
            assert isinstance(txn, ClientTransaction)
            if self._clients.get(txn._key) is txn:
                del self._clients[txn._key]
            self._forget_via(txn)
            self._client_alive -= 1
        out.append(Terminated(txn))


__all__ = [
    "MAGIC_COOKIE",
    "ClientTransaction",
    "Event",
    "InviteClientTransaction",
    "InviteServerTransaction",
    "NonInviteClientTransaction",
    "NonInviteServerTransaction",
    "RequestReceived",
    "ResponseReceived",
    "Send",
    "ServerTransaction",
    "State",
    "Terminated",
    "Timeout",
    "Transaction",
    "TransactionLayer",
    "TransactionStatistics",
    "TransportFailed",
    "build_ack",
    "build_cancel",
    "is_rfc3261_branch",
]

"""Keep-alive probes to phones behind NAT, and what they find: sans-IO.

A phone behind a NAT is reachable only while the NAT keeps the mapping its
REGISTER opened, and UDP mappings commonly expire after 30 to 60 seconds of
silence. :class:`KeepAlive` sends each such binding an OPTIONS every
``interval`` seconds, the way a call would go (:func:`binding_target`: back
to the REGISTER's source over UDP, over the phone's own connection over
TCP), which keeps the mapping open and tells whether the phone is still
there. What it finds is each binding's
:class:`~srfs.state.location.Reachability` in the location store: ``yes``
with the round-trip time when any response came (a 404 or 501 is a phone
that is alive), ``no`` when none came in time, ``unknown`` for bindings
that are not probed. With ``drop_after`` set, a binding unreachable that
long is removed like an expired one.

Which bindings are probed (:func:`probed`): those registered from another
address than their Contact names (:func:`behind_nat`), which includes
nearly every registration over TCP (a connection's source port is not the
port a phone listens on). Not probed: static contacts, contacts behind a
Path (the edge proxy that added it owns that flow), and phones whose
Contact is where their REGISTER came from.

Probes are spread over the interval: each binding has a phase of its own
(a hash of its identity), so a thousand phones make a steady trickle, not
a burst. A probe waits for its answer until the next one is due, at most
Timer F; the transaction layer retransmits it meanwhile (over UDP) and
matches its answers by Via branch, and the keep-alive owns those client
transactions: their events reach it, never the proxy. Timers are kinds in
the core's one :class:`~sipd.sip.timers.Deadlines`; the endpoint hands the
due ones to :meth:`KeepAlive.on_timer`.

Time: ``now`` is the core's monotonic clock in every call. A binding
added to the store is scheduled at the next :meth:`KeepAlive.schedule`,
which the endpoint calls after every input, with that input's ``now``.
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
import secrets
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sipd.media.relay import behind_nat as hosts_differ
from sipd.proxy.targets import LivePeer, LocalAddresses, binding_target
from sipd.sip.errors import ParseError, SipError
from sipd.sip.message import Request
from sipd.sip.timers import Deadlines, Timer
from sipd.sip.transaction import (
    MAGIC_COOKIE,
    ClientTransaction,
    Event,
    ResponseReceived,
    Terminated,
    Timeout,
    TransactionLayer,
    TransportFailed,
)
from sipd.sip.uri import SipURI, parse_uri
from srfs.files.usrloc import format_rtt
from srfs.logtext import quote
from srfs.state.location import (
    UNPROBED,
    Binding,
    Change,
    ChangeKind,
    LocationStore,
    Reach,
    Reachability,
    RemoveReason,
)

log = logging.getLogger("sipd.keepalive")

__all__ = ["BRANCH_PREFIX", "KeepAlive", "KeepAliveStats", "Probe", "ProbeTimer", "behind_nat",
           "probed"]

#: The Via branch of a probe: never one of the proxy's (``z9hG4bKsr``).
BRANCH_PREFIX = MAGIC_COOKIE + "ka"


def _received(b: Binding) -> tuple[str, str, int] | None:
    """``transport, host, port`` of where ``b``'s REGISTER came from."""
    if not b.received:
        return None
    transport, _, rest = b.received.partition(":")
    host, _, port = rest.rpartition(":")
    if not port.isdigit():
        return None
    return transport, host.strip("[]"), int(port)


def behind_nat(b: Binding) -> bool:
    """Whether ``b``'s REGISTER came from another address than its Contact names.

    The case RFC 3581 and every NAT traversal recipe start from: the
    Contact says where the phone thinks it is (a private address, a port
    of its own), the source says where it is seen. Hosts compare as
    addresses; a Contact naming a host by name differs from any source.
    """
    source = _received(b)
    if source is None:
        return False
    _, host, port = source
    try:
        uri = parse_uri(b.contact)
    except ParseError:
        return False
    if not isinstance(uri, SipURI):
        return False
    if hosts_differ(uri.host, host):
        return True
    return (uri.port or (5061 if uri.secure else 5060)) != port


def probed(b: Binding) -> bool:
    """Whether the keep-alive probes ``b`` (see the module text)."""
    return not b.static and not b.path and behind_nat(b)


class ProbeTimer(enum.Enum):
    """The keep-alive's timers, beside the transactions' in the same Deadlines."""

    SEND = "send"
    """The binding's next probe is due."""
    WAIT = "wait"
    """The probe in flight had its time to be answered."""


@dataclass(eq=False, slots=True)
class Probe:
    """One probed binding's schedule and the probe in flight."""

    aor: str
    key: str
    phase: float
    """Where in each interval this binding's probes go, in [0, 1)."""
    txn: ClientTransaction | None = None
    """The probe in flight, until answered or given up."""
    sent: float = 0.0
    down_since: float | None = None
    """When the binding was found unreachable (monotonic); None while it answers."""
    _timers: dict[Any, int] = field(default_factory=dict, repr=False)


@dataclass
class KeepAliveStats:
    probes: int = 0
    answers: int = 0
    timeouts: int = 0
    dropped: int = 0
    unreachable: int = 0
    """Bindings whose last probe went unanswered (a gauge)."""


class KeepAlive:
    """Every probed binding's schedule; the one writer of bindings' reachability.

    ``interval`` 0 turns probing off (every binding is ``unknown``);
    ``drop_after`` 0 never drops a binding for not answering.
    """

    def __init__(self, store: LocationStore, transactions: TransactionLayer,
                 addresses: LocalAddresses, *, interval: float, drop_after: float = 0.0) -> None:
        self.store = store
        self.transactions = transactions
        self.deadlines: Deadlines[Any] = transactions.deadlines
        self.addresses = addresses
        self.interval = interval
        self.drop_after = drop_after
        #: Live connections by transport and remote address; set by the endpoint.
        self.live_peer: LivePeer = lambda transport, host, port: None
        #: Our UDP socket of a registered flow; set by the endpoint.
        self.udp_socket: Callable[[str], int] = lambda received: 0
        self.stats = KeepAliveStats()
        self._probes: dict[tuple[str, str], Probe] = {}
        self._by_txn: dict[ClientTransaction, Probe] = {}
        #: Probes whose next SEND is still to be armed (they need a ``now``).
        self._pending: set[tuple[str, str]] = set()
        self._salt = secrets.token_hex(4)
        self._seq = itertools.count(1)
        for b in store:
            self._consider(b)
        store.subscribe(self._changed)

    # ------------------------------------------------------------ schedule

    def configure(self, interval: float, drop_after: float) -> None:
        """New settings (SIGHUP): every probe is scheduled again at the next input."""
        changed = interval != self.interval
        self.interval = interval
        self.drop_after = drop_after
        if not changed:
            return
        if interval <= 0:
            for ident in list(self._probes):
                self._forget(ident, reset=True)
            return
        for ident, probe in self._probes.items():
            self.deadlines.disarm(probe, ProbeTimer.SEND)
            self._pending.add(ident)
        for b in self.store:
            self._consider(b)

    @property
    def pending(self) -> bool:
        """Whether bindings wait for :meth:`schedule`."""
        return bool(self._pending)

    def schedule(self, now: float) -> None:
        """Arm the first probe of every binding added since the last call."""
        if not self._pending:
            return
        for ident in self._pending:
            probe = self._probes.get(ident)
            if probe is not None:
                self.deadlines.arm(probe, ProbeTimer.SEND, self._next_slot(probe, now))
        self._pending.clear()

    def _next_slot(self, probe: Probe, now: float) -> float:
        """The first time after ``now`` at ``probe``'s phase of the interval."""
        offset = probe.phase * self.interval
        return offset + (math.floor((now - offset) / self.interval) + 1) * self.interval

    def _changed(self, change: Change) -> None:
        b = change.binding
        ident = (b.aor, b.key)
        if change.kind is ChangeKind.REMOVED:
            self._forget(ident)
            return
        prev = change.previous
        if prev is not None and prev.received != b.received and ident in self._probes:
            # The phone is somewhere else now: what was found was about the old way.
            self._forget(ident, reset=True)
        self._consider(b)

    def _consider(self, b: Binding) -> None:
        ident = (b.aor, b.key)
        if self.interval <= 0 or not probed(b):
            if ident in self._probes:
                self._forget(ident, reset=True)
            return
        if ident not in self._probes:
            phase = zlib.crc32(f"{b.aor}\n{b.key}".encode("utf-8", "surrogateescape")) / 2**32
            self._probes[ident] = Probe(b.aor, b.key, phase)
            self._pending.add(ident)

    def _forget(self, ident: tuple[str, str], *, reset: bool = False) -> None:
        probe = self._probes.pop(ident, None)
        self._pending.discard(ident)
        if probe is not None:
            # A probe in flight runs out in its transaction; its answer is
            # no longer this binding's news (see _current).
            self.deadlines.disarm_all(probe)
        if reset:
            self.store.set_reachability(*ident, UNPROBED)

    def _current(self, probe: Probe | None, txn: ClientTransaction) -> Probe | None:
        if probe is None or probe.txn is not txn:
            return None
        return probe if self._probes.get((probe.aor, probe.key)) is probe else None

    # ------------------------------------------------------------ probing

    def on_timer(self, probe: Probe, kind: ProbeTimer, now: float) -> tuple[list[Event], list[Change]]:
        """A due timer of ``probe``: transaction events to run, bindings dropped."""
        if self._probes.get((probe.aor, probe.key)) is not probe:
            return [], []
        if kind is ProbeTimer.WAIT:
            return self._unanswered(probe, now)
        self.deadlines.arm(probe, ProbeTimer.SEND, self._next_slot(probe, now))
        events: list[Event] = []
        changes: list[Change] = []
        if probe.txn is not None:
            # Not answered by now (a WAIT longer than the interval): settle it first.
            events, changes = self._unanswered(probe, now)
            if changes:
                return events, changes
        return events + self._send(probe, now), changes

    def _send(self, probe: Probe, now: float) -> list[Event]:
        b = self.store.get(probe.aor, probe.key)
        if b is None:
            return []
        try:
            target = binding_target(b, self.live_peer, self.udp_socket)
        except (SipError, ParseError):
            return []
        dest = target.dest
        if dest is None:
            return []  # a host name to resolve: probes never block on DNS
        n = next(self._seq)
        host, port = self.addresses.for_peer(dest)
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        req = Request("OPTIONS", b.contact, [
            ("Via", f"SIP/2.0/{dest.transport.upper()} {hostport};"
                    f"branch={BRANCH_PREFIX}{self._salt}{n:x};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:keepalive@{hostport}>;tag=ka{self._salt}{n:x}"),
            ("To", f"<{b.contact}>"),
            ("Call-ID", f"ka{self._salt}{n:x}@{host}"),
            ("CSeq", "1 OPTIONS"),
            ("User-Agent", "sipd keep-alive"),
        ])
        try:
            txn, events = self.transactions.client_request(req, dest, dest.reliable, now)
        except ValueError:
            return []
        probe.txn = txn
        probe.sent = now
        self._by_txn[txn] = probe
        self.stats.probes += 1
        timer_f = self.transactions.timers.duration(Timer.F, dest.reliable) or self.interval
        self.deadlines.arm(probe, ProbeTimer.WAIT, now + min(self.interval, timer_f))
        return list(events)

    def owns(self, txn: object) -> bool:
        """Whether ``txn`` is one of the keep-alive's probes."""
        return txn in self._by_txn

    def handle_event(self, event: Event, now: float) -> tuple[list[Event], list[Change]]:
        """An event of a probe's transaction (see :meth:`owns`)."""
        if isinstance(event, Terminated):
            txn = event.txn
            probe = self._by_txn.pop(txn, None) if isinstance(txn, ClientTransaction) else None
            if probe is not None and probe.txn is txn:
                probe.txn = None
            return [], []
        if isinstance(event, ResponseReceived):
            probe = self._current(self._by_txn.get(event.txn), event.txn)
            if probe is not None:
                self._answered(probe, now)
            return [], []
        if isinstance(event, (Timeout, TransportFailed)):
            txn = event.txn
            if isinstance(txn, ClientTransaction):
                probe = self._current(self._by_txn.get(txn), txn)
                if probe is not None:
                    return self._unanswered(probe, now)
        return [], []

    def _answered(self, probe: Probe, now: float) -> None:
        """Any response, 100 to 699: the phone is there."""
        probe.txn = None
        self.deadlines.disarm(probe, ProbeTimer.WAIT)
        self.stats.answers += 1
        rtt = now - probe.sent
        before = self.store.reachability(probe.aor, probe.key)
        self.store.set_reachability(probe.aor, probe.key, Reachability(Reach.YES, rtt))
        if before.state is Reach.NO:
            b = self.store.get(probe.aor, probe.key)
            if b is not None:
                log.info("contact %s of user %s is reachable again (rtt %s)", quote(b.contact),
                         quote(b.user), format_rtt(rtt))
        probe.down_since = None

    def _unanswered(self, probe: Probe, now: float) -> tuple[list[Event], list[Change]]:
        """No answer in time: the binding is unreachable; dropped once long enough."""
        txn, probe.txn = probe.txn, None
        self.deadlines.disarm(probe, ProbeTimer.WAIT)
        events = list(self.transactions.terminate(txn, now)) if txn is not None else []
        self.stats.timeouts += 1
        before = self.store.reachability(probe.aor, probe.key)
        b = self.store.get(probe.aor, probe.key)
        if b is None:
            return events, []
        if before.state is not Reach.NO:
            probe.down_since = now
            log.info("contact %s of user %s is unreachable: OPTIONS to %s unanswered for %.3g s",
                     quote(b.contact), quote(b.user), b.received, now - probe.sent)
        self.store.set_reachability(probe.aor, probe.key, replace(before, state=Reach.NO))
        down = probe.down_since if probe.down_since is not None else now
        if self.drop_after > 0 and now - down >= self.drop_after:
            change = self.store.remove(probe.aor, probe.key, RemoveReason.UNREACHABLE)
            if change is not None:
                self.stats.dropped += 1
                return events, [change]
        return events, []

    # ------------------------------------------------------------ reading

    def statistics(self) -> KeepAliveStats:
        return replace(self.stats, unreachable=self.store.unreachable())

    def __len__(self) -> int:
        """Bindings probed."""
        return len(self._probes)

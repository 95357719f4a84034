"""The keep-alive, sans-IO: which bindings are probed, when, and what their answers mean.

Time moves only when a test says so; probes leave as bytes to a Peer and
their answers come back as bytes, through the endpoint and the
transaction layer, as they would from the network.
"""

from __future__ import annotations

import logging

import pytest

from sipd.core.identity import LocalIdentity
from sipd.core.peer import Outgoing, Peer
from sipd.core.work import run_inline
from sipd.endpoint import Endpoint
from sipd.proxy.keepalive import BRANCH_PREFIX, KeepAlive, behind_nat, probed
from sipd.proxy.targets import LocalAddresses
from sipd.registrar.server import Server
from sipd.sip.message import Request, make_response, parse
from sipd.sip.transaction import TransactionLayer
from srfs.state.location import UNPROBED, Binding, LocationStore, Reach, RemoveReason

ME = ("192.0.2.1", 5060)
NAT = Peer("udp", "203.0.113.5", 40000, conn=0)
NAT2 = Peer("udp", "203.0.113.6", 41000, conn=0)


def nated(aor: str = "jan", contact_host: str = "10.0.0.5", peer: Peer = NAT,
          expires: float | None = 1e12, **kw: object) -> Binding:
    """A binding registered through a NAT: a private Contact, seen from ``peer``."""
    return Binding(aor, aor, f"sip:{aor}@{contact_host}:5060", expires,
                   received=f"{peer.transport}:{peer.host}:{peer.port}", **kw)  # type: ignore[arg-type]


class World:
    """An endpoint with a store and a keep-alive; time moves when told."""

    def __init__(self, interval: float = 30.0, drop_after: float = 0.0) -> None:
        identity = LocalIdentity(frozenset({"sip.test", "192.0.2.1"}), frozenset({5060}))
        self.store = LocationStore()
        layer = TransactionLayer()
        self.keepalive = KeepAlive(self.store, layer,
                                   LocalAddresses({("udp", 4): ME, ("tcp", 4): ME}),
                                   interval=interval, drop_after=drop_after)
        self.ep = Endpoint(Server(identity), max_message_size=65535, transactions=layer,
                           store=self.store, keepalive=self.keepalive)
        self.now = 1000.0

    def add(self, b: Binding) -> Binding:
        self.store.upsert(b)
        # What the endpoint does after every input: the new binding's first time.
        run_inline(self.ep.take_pending(self.now), self.now)
        return b

    def until(self, to: float) -> list[tuple[Request, Peer, float]]:
        """Run every timer up to ``to``; the requests sent, each with its time."""
        sent: list[tuple[Request, Peer, float]] = []
        while True:
            due = self.ep.get_timer()
            if due is None or due > to:
                break
            self.now = max(self.now, due)
            for out in run_inline(self.ep.handle_timer(self.now), self.now):
                msg = parse(out.data)
                if isinstance(msg, Request):
                    sent.append((msg, out.peer, self.now))
        self.now = to
        return sent

    def probe(self, limit: float = 60.0) -> tuple[Request, Peer, float]:
        """Run the timers up to the next request sent, and return it (``now`` is then)."""
        end = self.now + limit
        while True:
            due = self.ep.get_timer()
            assert due is not None and due <= end, "no probe sent"
            self.now = max(self.now, due)
            sent = [(msg, out.peer) for out in run_inline(self.ep.handle_timer(self.now), self.now)
                    if isinstance(msg := parse(out.data), Request)]
            if sent:
                (req, peer), = sent
                return req, peer, self.now

    def answer(self, req: Request, peer: Peer, status: int = 200, at: float | None = None) -> None:
        if at is not None:
            self.now = at
        resp = make_response(req, status, to_tag="phone")
        assert run_inline(self.ep.receive(resp.to_bytes(), peer, self.now), self.now) == []

    def reach(self, b: Binding) -> tuple[Reach, float | None]:
        r = self.store.reachability(b.aor, b.key)
        return r.state, r.rtt


# ------------------------------------------------------------------ who is probed


@pytest.mark.parametrize(("contact", "received", "expected"), [
    ("sip:jan@10.0.0.5:5060", "udp:203.0.113.5:40000", True),    # private Contact
    ("sip:jan@203.0.113.5:5060", "udp:203.0.113.5:40000", True),  # same host, NAT's port
    ("sip:jan@203.0.113.5:40000", "udp:203.0.113.5:40000", False),
    ("sip:jan@203.0.113.5", "udp:203.0.113.5:5060", False),       # 5060 by default
    ("sips:jan@203.0.113.5", "tcp:203.0.113.5:5061", False),      # 5061 for sips
    ("sip:jan@[2001:db8::5]:5060", "udp:[2001:db8:0::5]:5060", False),  # compared as addresses
    ("sip:jan@phone.example.org:5060", "udp:203.0.113.5:5060", True),   # a name: the source
    ("sip:jan@203.0.113.5:5060;transport=tcp", "tcp:203.0.113.5:49152", True),
])
def test_behind_nat_when_the_register_came_from_elsewhere(contact: str, received: str,
                                                          expected: bool) -> None:
    assert behind_nat(Binding("jan", "jan", contact, 1e12, received=received)) is expected


def test_static_contacts_paths_and_direct_phones_are_not_probed() -> None:
    assert probed(nated())
    assert not probed(nated(expires=None))
    assert not probed(nated(path=("<sip:edge.example.org;lr>",)))
    assert not probed(Binding("jan", "jan", "sip:jan@10.0.0.5:5060", 1e12))  # no source
    assert not probed(nated(contact_host="203.0.113.5", peer=Peer("udp", "203.0.113.5", 5060, 0)))


# ------------------------------------------------------------------ schedule


def test_probes_are_spread_over_the_interval_and_repeat_at_it() -> None:
    w = World(interval=30.0)
    phones = [w.add(nated(f"u{i}", peer=Peer("udp", "203.0.113.5", 40000 + i, 0)))
              for i in range(20)]
    w.add(nated("direct", contact_host="203.0.113.9", peer=Peer("udp", "203.0.113.9", 5060, 0)))
    start = w.now
    first = []
    for _ in phones:
        req, peer, t = w.probe()
        w.answer(req, peer)  # at once: no retransmission gets in the way
        first.append((str(req.uri), t))
    assert sorted(uri for uri, _ in first) == sorted(b.contact for b in phones)
    times = [t for _, t in first]
    assert all(start < t <= start + 30.0 for t in times)
    # Spread, not a burst: the 20 probes of one interval take most of it.
    assert times[-1] - times[0] > 15.0
    assert len({round(t, 3) for t in times}) == 20
    by_uri = dict(first)
    for _ in phones:
        req, peer, t = w.probe()
        w.answer(req, peer)
        assert t - by_uri[str(req.uri)] == pytest.approx(30.0)


def test_a_probe_is_an_options_to_the_contact_sent_where_the_register_came_from() -> None:
    w = World()
    b = w.add(nated())
    req, peer, _ = w.probe()
    assert req.method == "OPTIONS" and req.uri_text == b.contact
    assert peer == NAT
    via = req.top_via
    assert (via.transport, via.host, via.port) == ("UDP", *ME)
    assert via.branch is not None and via.branch.startswith(BRANCH_PREFIX)
    assert via.has_param("rport")
    assert req.get("To") == f"<{b.contact}>"
    assert req.cseq.method == "OPTIONS" and req.max_forwards == 70


def test_over_tcp_the_probe_takes_the_phones_connection() -> None:
    w = World()
    conn = Peer("tcp", "203.0.113.5", 49152, conn=7)
    b = w.add(Binding("jan", "jan", "sip:jan@10.0.0.5:5060;transport=tcp", 1e12,
                      received="tcp:203.0.113.5:49152"))
    # The phone's connection is alive: it sent on it.
    w.ep.receive(b"\r\n\r\n", conn, w.now)
    w.ep.receive(Request("OPTIONS", "sip:192.0.2.1", [
        ("Via", "SIP/2.0/TCP 10.0.0.5:5060;branch=z9hG4bKtcp1"), ("From", "<sip:a@b>;tag=1"),
        ("To", "<sip:192.0.2.1>"), ("Call-ID", "c1"), ("CSeq", "1 OPTIONS"),
        ("Max-Forwards", "70")]).to_bytes(), conn, w.now)
    req, peer, _ = w.probe()
    assert peer == conn
    assert req.top_via.transport == "TCP"
    w.answer(req, conn, 200)
    assert w.reach(b)[0] is Reach.YES


# ------------------------------------------------------------------ answers


@pytest.mark.parametrize("status", [100, 200, 404, 405, 481, 501, 603])
def test_any_answer_means_reachable_with_its_round_trip_time(status: int) -> None:
    w = World()
    b = w.add(nated())
    assert w.reach(b) == (Reach.UNKNOWN, None)
    req, peer, sent = w.probe()
    w.answer(req, peer, status, at=sent + 0.012)
    state, rtt = w.reach(b)
    assert state is Reach.YES and rtt == pytest.approx(0.012)
    assert w.keepalive.stats.answers == 1
    # Answered: nothing left to time out.
    w.until(sent + 29.0)
    assert w.reach(b)[0] is Reach.YES and w.keepalive.stats.timeouts == 0


def test_probe_answers_are_the_keepalives_and_never_the_proxys() -> None:
    w = World()
    w.add(nated())
    req, peer, _ = w.probe()
    w.answer(req, peer)
    # Its retransmission, matched by the branch, is absorbed by the transaction.
    w.answer(req, peer)
    stats = w.ep.transactions.statistics()
    assert stats.stray_responses == 0 and stats.retransmissions_absorbed == 1
    assert stats.client_created == 1


def test_no_answer_marks_unreachable_once_then_an_answer_marks_it_back(
        caplog: pytest.LogCaptureFixture) -> None:
    w = World(interval=30.0)
    b = w.add(nated())
    caplog.set_level(logging.INFO, "sipd.keepalive")
    req, peer, sent = w.probe()
    w.answer(req, peer, at=sent + 0.02)
    # The phone goes away: the next probe is retransmitted until the one after is due.
    lost, _, first = w.probe()
    again = w.until(first + 30.0 - 0.001)
    assert len(again) > 3
    assert {r.top_via.branch for r, _, _ in again} == {lost.top_via.branch}
    assert w.reach(b)[0] is Reach.YES
    w.until(first + 30.0)
    state, rtt = w.reach(b)
    assert state is Reach.NO and rtt == pytest.approx(0.02)  # the last one measured
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [f'contact "{b.contact}" of user "jan" is unreachable: OPTIONS to '
                     f"udp:203.0.113.5:40000 unanswered for 30 s"]
    assert w.keepalive.statistics().unreachable == 1
    # Still gone: one more timeout, no second line; the next probe goes with it.
    w.until(first + 60.0 - 0.001)
    req, peer, sent = w.probe()
    assert sent == first + 60.0
    assert len(caplog.records) == 1 and w.keepalive.stats.timeouts == 2
    # Back: the first answer says so, once.
    w.answer(req, peer, 486, at=sent + 0.005)
    assert w.reach(b)[0] is Reach.YES
    assert caplog.records[-1].getMessage() == (
        f'contact "{b.contact}" of user "jan" is reachable again (rtt 5ms)')
    assert w.keepalive.statistics().unreachable == 0


def test_unreachable_long_enough_is_dropped_like_an_expiry(
        caplog: pytest.LogCaptureFixture) -> None:
    w = World(interval=10.0, drop_after=25.0)
    b = w.add(nated())
    other = w.add(nated("bob", peer=NAT2))
    removed: list[RemoveReason | None] = []
    w.store.subscribe(lambda c: removed.append(c.reason))
    caplog.set_level(logging.INFO)
    start = w.now
    answered_until = start + 10.0
    while w.now < start + 60.0:
        for req, peer, t in w.until(w.now + 1.0):
            if str(req.uri) == other.contact or t < answered_until:
                w.answer(req, peer)
    # Unreachable from the first timeout (about start+20), dropped at the
    # first probe that failed 25 s or more after that.
    assert w.store.get("jan", b.key) is None
    assert w.store.get("bob", other.key) is not None
    assert removed == [RemoveReason.UNREACHABLE]
    assert w.keepalive.stats.dropped == 1 and len(w.keepalive) == 1
    assert ("sipd.registrar", logging.INFO,
            f'contact dropped, unreachable (keepalive_drop_after): aor "jan" contact "{b.contact}"'
            ) in caplog.record_tuples
    # Nothing of it is left armed: the next timers are bob's alone.
    assert w.keepalive.statistics().unreachable == 0


def test_a_phone_seen_somewhere_else_starts_unknown_again() -> None:
    w = World()
    b = w.add(nated())
    req, peer, _ = w.probe()
    w.answer(req, peer)
    assert w.reach(b)[0] is Reach.YES
    # Refreshed from the same place: what was found stands.
    w.add(nated(callid="x", cseq=2))
    assert w.reach(b)[0] is Reach.YES
    # From another NAT address: the old finding was about the old way.
    w.add(nated(peer=NAT2))
    assert w.reach(b) == (Reach.UNKNOWN, None)
    _, peer, _ = w.probe()
    assert peer == NAT2


def test_a_binding_no_longer_behind_nat_is_no_longer_probed() -> None:
    w = World()
    b = w.add(nated(instance="<urn:uuid:1>"))
    req, peer, _ = w.probe()
    w.answer(req, peer)
    # The same phone (instance), now registering from where its Contact says.
    w.add(nated(contact_host="203.0.113.5", peer=Peer("udp", "203.0.113.5", 5060, 0),
                instance="<urn:uuid:1>"))
    assert w.reach(b) == (Reach.UNKNOWN, None) and len(w.keepalive) == 0
    assert w.until(w.now + 90.0) == []


def test_interval_zero_probes_nothing_and_turning_it_off_forgets_what_was_found() -> None:
    off = World(interval=0.0)
    b = off.add(nated())
    assert off.until(off.now + 300.0) == [] and off.reach(b)[0] is Reach.UNKNOWN
    w = World(interval=30.0)
    b = w.add(nated())
    req, peer, _ = w.probe()
    w.answer(req, peer)
    w.keepalive.configure(interval=0.0, drop_after=0.0)
    assert w.store.reachability(b.aor, b.key) == UNPROBED
    assert w.until(w.now + 300.0) == []
    # On again (SIGHUP): scheduled at the next input, at the new interval.
    w.keepalive.configure(interval=5.0, drop_after=0.0)
    assert w.ep.get_timer() == 0.0
    sent = w.until(w.now + 20.0)
    assert len(sent) >= 3


def test_removed_bindings_are_forgotten_with_their_timers() -> None:
    w = World()
    b = w.add(nated())
    w.store.remove(b.aor, b.key, RemoveReason.UNREGISTERED)
    assert len(w.keepalive) == 0
    assert w.until(w.now + 90.0) == []
    assert len(w.ep.transactions.deadlines) == 0


def test_an_answer_after_the_binding_went_is_nobodys_news() -> None:
    w = World()
    b = w.add(nated())
    req, peer, _ = w.probe()
    w.store.remove(b.aor, b.key, RemoveReason.UNREGISTERED)
    w.store.upsert(b)
    w.answer(req, peer)
    assert w.reach(b)[0] is Reach.UNKNOWN


def test_outgoing_is_only_bytes_for_a_peer() -> None:
    w = World()
    w.add(nated())
    w.now += 30.0
    out = run_inline(w.ep.handle_timer(w.now), w.now)
    assert all(isinstance(o, Outgoing) for o in out)

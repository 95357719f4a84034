"""What one request, or a flood of them, can make the proxy send: sans-IO, time passed in.

The figures asserted here are the ones sipd(8) states under SECURITY.
"""

from __future__ import annotations

import collections

import pytest

from sipd.core.peer import Outgoing, Peer
from sipd.core.work import run_inline
from sipd.proxy.context import MAX_BRANCHES
from tests.unit.sipd.proxy.test_proxy import (
    BOB1,
    CALLER,
    ME,
    REALM,
    Net,
    answer,
    invite,
    requests,
    responses,
)

#: Added headers (Via, Record-Route, Max-Breadth...) per copy stay under this.
OVERHEAD = 512
#: An INVITE over UDP is sent at most this often (Timer A until Timer B).
INVITE_COPIES = 7
#: A final response to a stranger who never ACKs: once, then Timer G until Timer H.
FINAL_COPIES = 11


def run_for(net: Net, seconds: float, step: float = 0.1) -> list[Outgoing]:
    out: list[Outgoing] = []
    end = net.now + seconds
    while net.now < end:
        net.now = round(net.now + step, 6)
        out += run_inline(net.ep.handle_timer(net.now), net.now)
    return out


def dead_contacts(net: Net, n: int) -> list[Peer]:
    peers = [Peer("udp", f"192.0.2.{50 + i}", 5070, conn=0) for i in range(n)]
    for p in peers:
        net.bind("bob", p)
    return peers


def test_one_stranger_invite_sends_a_bounded_multiple_of_its_size() -> None:
    net = Net()
    dead_contacts(net, 10)
    data = invite()
    sent = run_inline(net.ep.receive(data, CALLER, net.now), net.now) + run_for(net, 70)
    per_peer = collections.Counter(o.peer for o in sent if o.data.startswith(b"INVITE"))
    assert len(per_peer) == 10 and max(per_peer.values()) == INVITE_COPIES
    bound = (INVITE_COPIES * 10 + 1 + FINAL_COPIES) * (len(data) + OVERHEAD)
    total = sum(len(o.data) for o in sent)
    assert total <= bound, (total, bound)
    assert all(len(o.data) <= len(data) + OVERHEAD for o in sent)


def test_an_invite_flood_towards_a_contact_that_never_answers_is_bounded() -> None:
    """1,000 INVITEs in 10 s for a phone that never answers: at most 8 in flight
    there, then it rests until it is heard from; callers get 480 at once."""
    net = Net()
    net.bind("bob", BOB1)
    to_phone = 0
    finals = collections.Counter[int]()
    for i in range(1000):
        out = run_inline(net.ep.receive(invite(call_id=f"flood{i}"), CALLER, net.now), net.now)
        out += run_for(net, 0.01, step=0.01)
        to_phone += sum(1 for o in out if o.peer == BOB1)
        finals.update(s for s in responses(net._parse(out)) if s >= 200)
    later = run_for(net, 80)
    to_phone += sum(1 for o in later if o.peer == BOB1)
    assert to_phone <= 8 * INVITE_COPIES
    assert finals[480] >= 990
    assert net.proxy.destinations.resting() == 1
    # The proxy holds nothing for the flood once it is over.
    run_for(net, 40, step=1.0)
    assert len(net.proxy.forker.contexts) == 0
    # Heard from again (it registers, say): calls reach it at once.
    net.send(b"\r\n\r\n", BOB1)  # any datagram from its address
    (_, peer), = requests(net.send(invite(call_id="after"), CALLER), "INVITE")
    assert peer == BOB1


def test_branches_per_request_are_capped() -> None:
    net = Net()
    dead_contacts(net, MAX_BRANCHES + 8)
    sent = requests(net.send(invite(), CALLER), "INVITE")
    assert len(sent) == MAX_BRANCHES


@pytest.mark.parametrize(("breadth", "branches", "each"), [("5", 5, "1"), ("12", 3, "4")])
def test_max_breadth_is_honoured_and_shared(breadth: str, branches: int, each: str) -> None:
    """RFC 5393 §5: never more parallel branches than Max-Breadth, which they share."""
    net = Net()
    dead_contacts(net, 3 if branches == 3 else 8)
    sent = requests(net.send(invite(extra=f"Max-Breadth: {breadth}\r\n"), CALLER), "INVITE")
    assert len(sent) == branches
    assert {req.get("Max-Breadth") for req, _ in sent} == {each}


def test_max_breadth_zero_gets_440() -> None:
    net = Net()
    dead_contacts(net, 2)
    assert responses(net.send(invite(extra="Max-Breadth: 0\r\n"), CALLER)) == [100, 440]


@pytest.mark.parametrize("host", [ME[0], "127.0.0.1", "127.000.000.001", "0.0.0.0"])
def test_a_binding_at_this_servers_address_is_never_sent_to(host: str) -> None:
    """Even one that got past every check (a bug, an old file): 482, nothing sent."""
    net = Net()
    net.bind("bob", Peer("udp", host, ME[1], conn=0))
    out = net.send(invite(), CALLER)
    assert requests(out, "INVITE") == []
    assert responses(out) == [100, 482]


def test_the_same_request_for_the_same_user_never_comes_back_for_more() -> None:
    """A contact elsewhere that sends every INVITE back (a reflector) costs one pass."""
    net = Net()
    net.bind("bob", BOB1)
    (fwd, _), = requests(net.send(invite(), CALLER), "INVITE")
    for i in range(3):
        fwd.uri_text = f"sip:bob@{REALM};pass={i}"
        fwd._uri = None
        out = net.send(fwd, BOB1)
        assert requests(out, "INVITE") == []
        assert responses(out)[-1] == 482


def test_a_destination_that_answers_takes_a_burst_of_calls() -> None:
    """A PBX answering every call may have more than 8 in flight (calls come in
    bursts); one that stops answering is back to the bound at its first timeout."""
    net = Net()
    net.bind("bob", BOB1)
    first = requests(net.send(invite(call_id="warm"), CALLER), "INVITE")
    assert [p for _, p in first] == [BOB1]
    net.send(answer(first[0][0], 180), BOB1)  # it answers: alive
    burst = 0
    for i in range(40):
        out = net.send(invite(call_id=f"burst{i}"), CALLER)
        burst += sum(1 for _, p in requests(out, "INVITE") if p == BOB1)
        assert 480 not in responses(out)
    assert burst == 40
    # It falls silent: the burst times out, it rests, and calls get 480 at once.
    run_for(net, 40, step=0.5)
    assert net.proxy.destinations.resting() == 1
    assert 480 in responses(net.send(invite(call_id="after"), CALLER))


def test_a_busy_destination_a_little_behind_is_not_refused() -> None:
    """Hundreds in flight to a trunk that keeps answering (it runs a fraction of
    a second behind) all go; once it has answered nothing for a second with
    128 in flight, the rest get 480, until it answers again."""
    net = Net()
    net.bind("bob", BOB1)
    sent: list[bytes] = []
    for i in range(300):
        out = net.send(invite(call_id=f"busy{i}"), CALLER)
        assert 480 not in responses(out), i
        sent += [data for data, p in requests(out, "INVITE") if p == BOB1]
        if i >= 200 or i % 2:
            continue
        # It answers the oldest unanswered one now and then: 200 behind at most.
        net.send(answer(sent[i // 2], 180), BOB1)
    assert len(sent) == 300
    net.now += 1.5  # silent for 1.5 s, with far more than 128 in flight
    # One request a second still goes, so that it can show it is back.
    probe = net.send(invite(call_id="probe"), CALLER)
    assert 480 not in responses(probe) and requests(probe, "INVITE")
    assert 480 in responses(net.send(invite(call_id="stalled"), CALLER))
    net.now += 0.5
    assert 480 in responses(net.send(invite(call_id="stalled2"), CALLER))
    net.now += 0.6
    assert 480 not in responses(net.send(invite(call_id="probe2"), CALLER))
    net.send(answer(sent[200], 180), BOB1)  # it answers again
    assert 480 not in responses(net.send(invite(call_id="back"), CALLER))
    # Never more than 1,024 in flight, answering or not.
    for i in range(1000):
        out = net.send(invite(call_id=f"more{i}"), CALLER)
        if i % 50 == 0:
            net.send(answer(sent[201 + i // 50], 180), BOB1)
        sent += [data for data, p in requests(out, "INVITE") if p == BOB1]
    assert 480 in responses(out)
    assert net.proxy.destinations._unanswered[("udp", BOB1.host, BOB1.port)] == 1024


def test_a_live_destination_that_lost_an_answer_does_not_rest() -> None:
    """After an overload, a next hop that lost a few answers but answers the
    rest is not left alone for a minute; one that fell silent is."""
    net = Net()
    net.bind("bob", BOB1)
    lost = requests(net.send(invite(call_id="lost"), CALLER), "INVITE")
    assert [p for _, p in lost] == [BOB1]
    # It answers every later call, but never the first one.
    for i in range(80):
        out = net.send(invite(call_id=f"later{i}"), CALLER)
        for data, peer in requests(out, "INVITE"):
            net.send(answer(data, 180), peer)
        run_for(net, 0.5)
    assert net.proxy.destinations.resting() == 0  # "lost" timed out meanwhile
    assert 480 not in responses(net.send(invite(call_id="after"), CALLER))

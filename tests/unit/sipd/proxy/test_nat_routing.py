"""Dialogs with phones behind NAT: the flow token in Record-Route, sans-IO.

A caller behind a NAT writes its private address in its Contact; the
callee's requests inside the dialog name that address. They must reach
the caller anyway: where its INVITE came from.
"""

from __future__ import annotations

import re

import pytest

from sipd.core.peer import Peer
from sipd.io.daemon import own_sockets
from sipd.proxy import flowtoken
from sipd.proxy.flowtoken import FlowTokens
from sipd.sip.message import Request
from srfs.state.location import Binding
from tests.unit.sipd.proxy.test_proxy import BOB1, Net, answer, requests, responses

#: A caller behind a NAT: its Contact is private, its INVITE comes from the NAT.
NATTED = Peer("udp", "203.0.113.50", 61000, conn=3)
PRIVATE_CONTACT = "sip:zed@10.0.0.50:5060"


def natted_invite(call_id: str = "nat-call", transport: str = "UDP") -> bytes:
    return (
        "INVITE sip:bob@sip.test SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 10.0.0.50:5060;branch=z9hG4bK{call_id};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:zed@example.com>;tag=caller1\r\n"
        "To: <sip:bob@sip.test>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <{PRIVATE_CONTACT}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def in_dialog(method: str, uri: str, routes: list[str], cseq: int = 2,
              via: str = "192.0.2.20:5070", call_id: str = "nat-call",
              from_tag: str = "t1", to_tag: str = "caller1") -> bytes:
    """A request inside the dialog, by default from bob to the caller."""
    extra = "".join(f"Route: {r}\r\n" for r in routes)
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {via};branch=z9hG4bKin{cseq}{method};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:bob@sip.test>;tag={from_tag}\r\n"
        f"To: <sip:zed@example.com>;tag={to_tag}\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def set_up_call(net: Net) -> tuple[Request, list[str]]:
    """The natted caller calls bob, bob answers; the INVITE bob got and its Record-Route."""
    net.bind("bob", BOB1)
    out = net.send(natted_invite(), NATTED)
    assert responses(out) == [100]
    (req, peer), = requests(out, "INVITE")
    assert peer == BOB1
    ok = net.send(answer(req, 200, "t1"), BOB1)
    (_, back), = ok
    assert back == NATTED  # responses follow Via: received and rport
    return req, req.values("Record-Route")


def test_the_callees_bye_reaches_the_natted_caller_where_it_called_from() -> None:
    net = Net()
    req, rr = set_up_call(net)
    # The callee sees the caller's Contact as the caller wrote it.
    assert req.get("Contact") == f"<{PRIVATE_CONTACT}>"
    (route,) = rr
    out = net.send(in_dialog("BYE", PRIVATE_CONTACT, [route]), BOB1)
    (bye, peer), = requests(out, "BYE")
    # Not to 10.0.0.50, which nobody can reach: over the caller's flow.
    assert peer == NATTED
    assert bye.uri_text == PRIVATE_CONTACT and "Route" not in bye
    assert responses(net.send(answer(bye, 200, "caller1"), NATTED)) == [200]


def test_the_callers_ack_and_bye_go_over_the_callees_flow() -> None:
    net = Net()
    _, (route,) = set_up_call(net)
    # The caller's requests name bob's Contact; they go where the branch went.
    ack = in_dialog("ACK", "sip:bob@192.0.2.20:5070", [route], cseq=1, via="10.0.0.50:5060",
                    from_tag="caller1", to_tag="t1")
    (fwd, peer), = requests(net.send(ack, NATTED), "ACK")
    assert peer == BOB1 and fwd.uri_text == "sip:bob@192.0.2.20:5070"
    bye = in_dialog("BYE", "sip:bob@192.0.2.20:5070", [route], cseq=3, via="10.0.0.50:5060",
                    from_tag="caller1", to_tag="t1")
    (_, peer), = requests(net.send(bye, NATTED), "BYE")
    assert peer == BOB1


def test_the_callees_reinvite_and_its_ack_reach_the_caller_too() -> None:
    net = Net()
    _, (route,) = set_up_call(net)
    out = net.send(in_dialog("INVITE", PRIVATE_CONTACT, [route], cseq=5), BOB1)
    (reinvite, peer), = requests(out, "INVITE")
    assert peer == NATTED
    assert responses(net.send(answer(reinvite, 200, "caller1"), NATTED)) == [200]
    ack = in_dialog("ACK", PRIVATE_CONTACT, [route], cseq=5)
    (_, peer), = requests(net.send(ack, BOB1), "ACK")
    assert peer == NATTED


@pytest.mark.parametrize("mangle", [
    lambda token: token[:-2] + ("AA" if not token.endswith("AA") else "BB"),  # another MAC
    lambda token: "A" + token,                                                # garbage
    lambda token: "zed",                                                      # a user name
])
def test_a_token_not_made_here_is_ignored(mangle: object) -> None:
    net = Net()
    _, (route,) = set_up_call(net)
    token = re.fullmatch(r"<sip:([^@]+)@(.*)>", route)
    assert token is not None
    forged = f"<sip:{mangle(token.group(1))}@{token.group(2)}>"  # type: ignore[operator]
    out = net.send(in_dialog("BYE", "sip:carol@198.51.100.99:5060", [forged]), BOB1)
    # Routed by its Request-URI, as without a token: nobody steers us with one of theirs.
    (_, peer), = requests(out, "BYE")
    assert (peer.host, peer.port) == ("198.51.100.99", 5060)


def test_a_request_from_neither_side_is_routed_by_its_request_uri() -> None:
    net = Net()
    _, (route,) = set_up_call(net)
    stranger = Peer("udp", "198.51.100.77", 5060, conn=1)
    out = net.send(in_dialog("BYE", "sip:carol@198.51.100.99:5060", [route],
                             via="198.51.100.77:5060"), stranger)
    (_, peer), = requests(out, "BYE")
    assert (peer.host, peer.port) == ("198.51.100.99", 5060)


def test_two_record_routes_when_the_sides_differ_in_family_and_both_carry_the_flows() -> None:
    """§16.6 step 4 doubled: the caller on IPv6, the callee on IPv4."""
    net = Net()
    v6_caller = Peer("udp", "2001:db8::50", 61000, conn=4)
    net.proxy.router.addresses.by_kind[("udp", 6)] = ("2001:db8::1", 5060)
    net.bind("bob", BOB1)
    data = natted_invite().replace(b"10.0.0.50:5060;branch", b"[2001:db8::50]:5060;branch")
    (req, _), = requests(net.send(data, v6_caller), "INVITE")
    outer, inner = req.values("Record-Route")
    assert re.fullmatch(r"<sip:[A-Za-z0-9_-]+@192\.0\.2\.1:5060;lr>", outer), outer
    assert re.fullmatch(r"<sip:[A-Za-z0-9_-]+@\[2001:db8::1\]:5060;lr>", inner), inner
    net.send(answer(req, 200, "t1"), BOB1)
    # bob's route set is both entries, outer first: both ours, both removed.
    out = net.send(in_dialog("BYE", PRIVATE_CONTACT, [outer, inner]), BOB1)
    (bye, peer), = requests(out, "BYE")
    assert peer == v6_caller and "Route" not in bye
    assert bye.top_via.host == "[2001:db8::1]"


def test_over_tcp_the_flow_is_the_callers_connection_while_it_is_open() -> None:
    net = Net()
    conn = Peer("tcp", "203.0.113.50", 50123, conn=9)
    net.bind("bob", BOB1)
    (req, _), = requests(net.send(natted_invite(transport="TCP"), conn), "INVITE")
    net.send(answer(req, 200, "t1"), BOB1)
    routes = req.values("Record-Route")
    out = net.send(in_dialog("BYE", PRIVATE_CONTACT, routes), BOB1)
    (_, peer), = requests(out, "BYE")
    assert peer == conn
    # The connection is gone: a phone behind NAT cannot be connected to, so
    # the request falls back to its Request-URI, as it would without a token.
    net.ep.connection_closed(conn, net.now)
    out = net.send(in_dialog("BYE", PRIVATE_CONTACT, routes, cseq=4), BOB1)
    (_, peer), = requests(out, "BYE")
    assert (peer.host, peer.port) == ("10.0.0.50", 5060)


def test_registered_callees_still_take_their_registered_way_for_new_calls() -> None:
    net = Net()
    nat_bob = Peer("udp", "203.0.113.60", 40000, conn=0)
    net.store.upsert(Binding("bob", "bob", "sip:bob@10.1.1.1:5060", 1e12,
                             received="udp:203.0.113.60:40000"))
    out = net.send(natted_invite(), NATTED)
    (_, peer), = requests(out, "INVITE")
    assert peer == nat_bob


def test_a_call_to_a_udp_binding_leaves_from_the_socket_it_registered_on() -> None:
    net = Net()
    net.store.upsert(Binding("bob", "bob", "sip:bob@10.1.1.1:5060", 1e12,
                             received="udp:203.0.113.60:40000"))
    net.proxy.udp_socket = lambda received: 5 if received == "udp:203.0.113.60:40000" else 0
    (_, peer), = requests(net.send(natted_invite(), NATTED), "INVITE")
    assert peer == Peer("udp", "203.0.113.60", 40000, conn=5)


def test_flow_tokens_round_trip_and_refuse_what_they_did_not_make() -> None:
    tokens = FlowTokens(b"k" * 32)
    a = Peer("udp", "203.0.113.50", 61000, 3)
    b = Peer("tcp", "2001:db8::7", 5061, 12)
    token = tokens.encode(a, b)
    assert token is not None and re.fullmatch(r"[A-Za-z0-9_-]+", token) and len(token) < 80
    assert tokens.decode(token) == (a, b)
    assert FlowTokens(b"x" * 32).decode(token) is None
    assert tokens.decode(token[:-1]) is None and tokens.decode("") is None
    assert FlowTokens.other((a, b), Peer("udp", "203.0.113.50", 61000, 99)) == b
    assert FlowTokens.other((a, b), Peer("tcp", "2001:db8:0::7", 5061, 1)) == a
    assert FlowTokens.other((a, b), Peer("tcp", "203.0.113.50", 61000, 3)) is None
    assert tokens.encode(Peer("udp", "phone.example.org", 5060, 0), b) is None


def test_flow_tokens_read_once_are_kept_within_a_bound_and_bad_ones_never() -> None:
    tokens = FlowTokens(b"k" * 32)
    a = Peer("udp", "203.0.113.50", 61000, 3)
    token = tokens.encode(a, Peer("udp", "192.0.2.20", 5070, 0))
    assert token is not None
    first = tokens.decode(token)
    # Kept by its text (compiled, a tuple comes back as a new object each time).
    assert first is not None and token in tokens._read and tokens.decode(token) == first
    # A token another proxy (another key) made is refused each time.
    forged = FlowTokens(b"x" * 32).encode(a, a)
    assert forged is not None
    assert tokens.decode(forged) is None and tokens.decode(forged) is None
    assert forged not in tokens._read
    for port in range(1, flowtoken.TOKENS_KEPT + 2):
        other = tokens.encode(a, Peer("udp", "192.0.2.21", port, 0))
        assert other is not None and tokens.decode(other) is not None
    assert len(tokens._read) == flowtoken.TOKENS_KEPT and token not in tokens._read
    # Read again from the token itself: the same flows.
    assert tokens.decode(token) == first


def test_what_leaves_a_socket_names_that_socket_in_via_and_record_route() -> None:
    """Listening on two addresses: each side is told the address it talks to."""
    net = Net()
    own_sockets(net.proxy.router.addresses, {3: ("192.0.2.2", 5080), 4: ("0.0.0.0", 5060)})
    assert net.proxy.router.addresses.by_socket == {3: ("192.0.2.2", 5080),
                                                     4: ("192.0.2.1", 5060)}
    net.store.upsert(Binding("bob", "bob", "sip:bob@10.1.1.1:5060", 1e12,
                             received="udp:203.0.113.60:40000"))
    net.proxy.udp_socket = lambda received: 3
    (req, peer), = requests(net.send(natted_invite(), NATTED), "INVITE")
    assert peer.conn == 3
    assert (req.top_via.host, req.top_via.port) == ("192.0.2.2", 5080)
    # Both sides came in on socket 3: one Record-Route, with its address.
    (rr,) = req.values("Record-Route")
    assert rr.endswith("@192.0.2.2:5080;lr>")
    # The caller on socket 4 (the wildcard): two, one for each side's address.
    (req, _), = requests(net.send(natted_invite("other-call"),
                                  Peer("udp", "203.0.113.50", 61000, conn=4)), "INVITE")
    outer, inner = req.values("Record-Route")
    assert outer.endswith("@192.0.2.2:5080;lr>") and inner.endswith("@192.0.2.1:5060;lr>")

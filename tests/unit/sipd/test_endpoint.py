"""The receive path, sans-IO: bytes and time in, bytes and peers out."""

from __future__ import annotations

import pytest

from sipd.core.identity import LocalIdentity
from sipd.core.peer import Outgoing, Peer
from sipd.endpoint import Endpoint
from sipd.registrar.server import Server
from sipd.sip.message import Response, parse
from tests.sipclient import options

SRC = Peer("udp", "192.0.2.7", 40000, conn=1)
TCP = Peer("tcp", "192.0.2.7", 40001, conn=9)


def make_endpoint() -> Endpoint:
    identity = LocalIdentity(frozenset({"sip.test", "192.0.2.1"}), frozenset({5060}))
    return Endpoint(Server(identity), max_message_size=65535)


def one(out: list[Outgoing]) -> tuple[Response, Peer]:
    assert len(out) == 1, out
    msg = parse(out[0].data)
    assert isinstance(msg, Response)
    return msg, out[0].peer


def req(uri: str = "sip:sip.test", **kw: object) -> bytes:
    return options(uri, via_host="192.0.2.7", via_port=40000, **kw)  # type: ignore[arg-type]


def test_options_to_server_gets_200_with_capabilities() -> None:
    ep = make_endpoint()
    resp, peer = one(ep.receive(req(), SRC, 0.0))
    assert resp.status == 200
    for name in ("Allow", "Accept", "Supported"):
        assert name in resp
    assert "OPTIONS" in resp.tokens("Allow")
    assert resp.to.tag
    assert peer == SRC


def test_retransmission_gets_the_same_response() -> None:
    ep = make_endpoint()
    data = req(branch="z9hG4bKretrans1")
    first, _ = one(ep.receive(data, SRC, 0.0))
    again, _ = one(ep.receive(data, SRC, 0.2))
    assert first.to.tag == again.to.tag
    assert ep.transactions.statistics().server_transactions == 1
    # Timer J (64*T1 on UDP) ends the transaction; the layer forgets it.
    ep.handle_timer(40.0)
    assert ep.transactions.statistics().server_transactions == 0


def test_rport_and_received_are_stamped_and_used() -> None:
    ep = make_endpoint()
    nat = Peer("udp", "203.0.113.9", 61000, conn=1)
    resp, peer = one(ep.receive(req(), nat, 0.0))
    via = resp.top_via
    assert via.param("received") == "203.0.113.9"
    assert via.param("rport") == "61000"
    assert peer == nat


def test_without_rport_the_reply_goes_to_received_and_sent_by_port() -> None:
    ep = make_endpoint()
    data = req().replace(b";rport", b"")
    resp, peer = one(ep.receive(data, Peer("udp", "203.0.113.9", 61000, 1), 0.0))
    assert resp.top_via.param("received") == "203.0.113.9"
    assert not resp.top_via.has_param("rport")
    assert (peer.host, peer.port) == ("203.0.113.9", 40000)


def test_tcp_replies_on_the_same_connection() -> None:
    ep = make_endpoint()
    _, peer = one(ep.receive(req(transport="TCP"), TCP, 0.0))
    assert peer == TCP


@pytest.mark.parametrize(
    ("data", "status", "reason_part"),
    [
        (req().replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505, "Version"),
        (req("mailto:jan@sip.test"), 416, "URI Scheme"),
        (req().replace(b"Max-Forwards: 70", b"Max-Forwards: 0"), 483, "Too Many Hops"),
        (req(extra="Proxy-Require: frobnicate\r\n"), 420, "Bad Extension"),
        (req(extra="Require: frobnicate\r\n"), 420, "Bad Extension"),
        (req(method="FROB"), 501, "Not Implemented"),
        (req(method="REGISTER"), 501, "Not Implemented"),
        (req().replace(b"Call-ID", b"X-Call-ID"), 400, "Call-ID"),
        (req().replace(b"CSeq: 1 OPTIONS", b"CSeq: one OPTIONS"), 400, "CSeq"),
        (req().replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE"), 400, "CSeq"),
        (req().replace(b"To: <sip:server@example.com>", b"To: <sip:server@exa mple.com"), 400, "To"),
        (req().replace(b"Content-Length: 0", b"Content-Length: 99"), 400, "Content-Length"),
        (req().replace(b"Max-Forwards: 70", b"Max-Forwards: many"), 400, "Max-Forwards"),
    ],
)
def test_rejections(data: bytes, status: int, reason_part: str) -> None:
    ep = make_endpoint()
    resp, _ = one(ep.receive(data, SRC, 0.0))
    assert resp.status == status
    assert reason_part in resp.reason
    if status == 420:
        assert resp.get("Unsupported") == "frobnicate"


def test_zero_max_forwards_wins_over_require() -> None:
    ep = make_endpoint()
    data = req(extra="Require: frobnicate\r\n").replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
    resp, _ = one(ep.receive(data, SRC, 0.0))
    assert resp.status == 483


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00\x01\x02garbage",
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.7:40000;branch=z9hG4bKnone\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n"
        b"Content-Length: 0\r\n\r\n",
        req(method="ACK"),
        req(method="ACK").replace(b"Call-ID", b"X-Call-ID"),
        req().replace(b"Via: SIP/2.0/UDP", b"Via: SIP/2.0/UDP ,,,"),
    ],
)
def test_dropped_without_answer(data: bytes) -> None:
    ep = make_endpoint()
    assert ep.receive(data, SRC, 0.0) == []


def test_counters_tell_garbage_from_stray_responses() -> None:
    ep = make_endpoint()
    ep.receive(b"GET / HTTP/1.1\r\n\r\n", SRC, 0.0)
    ep.receive(b"\r\n\r\n", SRC, 0.0)
    stray = (
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.7:40000;branch=z9hG4bKnone\r\n"
        b"From: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\r\n"
    )
    ep.receive(stray, SRC, 0.0)
    stats = ep.statistics()
    assert stats["not_sip_dropped"] == 1
    assert stats["keepalives"] == 1
    assert ep.transactions.statistics().stray_responses == 1


def test_oversize_dropped() -> None:
    ep = make_endpoint()
    big = req(extra="X-Pad: " + "a" * 70000 + "\r\n")
    assert ep.receive(big, SRC, 0.0) == []
    assert ep.statistics()["oversize_dropped"] == 1


def test_cancel_without_invite_gets_481_and_after_invite_200() -> None:
    ep = make_endpoint()
    resp, _ = one(ep.receive(req(method="CANCEL"), SRC, 0.0))
    assert resp.status == 481
    invite = req("sip:jan@sip.test", method="INVITE", branch="z9hG4bKinv1", call_id="c1")
    out = ep.receive(invite, SRC, 0.0)
    assert parse(out[-1].data).status == 501  # type: ignore[union-attr]
    cancel = req("sip:jan@sip.test", method="CANCEL", branch="z9hG4bKinv1", call_id="c1")
    resp, _ = one(ep.receive(cancel, SRC, 0.1))
    assert resp.status == 200


def test_invite_final_is_retransmitted_until_ack() -> None:
    ep = make_endpoint()
    invite = req("sip:jan@sip.test", method="INVITE", branch="z9hG4bKinv2", call_id="c2")
    resp, _ = one(ep.receive(invite, SRC, 0.0))
    assert resp.status == 501
    deadline = ep.get_timer()
    assert deadline is not None and deadline == pytest.approx(0.5)  # Timer G = T1
    again, _ = one(ep.handle_timer(0.5))
    assert again.status == 501 and again.to.tag == resp.to.tag
    ack = invite.replace(b"INVITE sip", b"ACK sip").replace(b"1 INVITE", b"1 ACK")
    ack = ack.replace(b"To: <sip:server@example.com>", f"To: {resp.get('To')}".encode())
    assert ep.receive(ack, SRC, 0.6) == []
    # Confirmed: no more retransmissions of the 501.
    assert ep.handle_timer(2.0) == []


def test_responses_sent_are_counted_by_class_once_each() -> None:
    ep = make_endpoint()
    data = req(branch="z9hG4bKcount1")
    assert one(ep.receive(data, SRC, 0.0))[0].status == 200
    # The transaction answers the retransmission: sent again, not counted again.
    assert one(ep.receive(data, SRC, 0.2))[0].status == 200
    # A request too broken for a transaction, answered statelessly.
    broken = req().replace(b"CSeq: 1 OPTIONS", b"CSeq: one OPTIONS")
    assert one(ep.receive(broken, SRC, 0.3))[0].status == 400
    invite = req("sip:jan@sip.test", method="INVITE", branch="z9hG4bKcount2", call_id="c9")
    assert one(ep.receive(invite, SRC, 0.4))[0].status == 501
    one(ep.handle_timer(0.9))  # Timer G: the 501 again
    assert ep.stats.responses_sent == [0, 1, 0, 1, 1, 0]
    assert ep.transactions.statistics().retransmissions_sent == 2

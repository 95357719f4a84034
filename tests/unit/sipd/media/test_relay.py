"""The media relay's policy and SDP swap, sans-IO: rtpengine's replies handed in, time explicit."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import sipd.media.relay as relay_module
from sipd.core.peer import Peer
from sipd.core.work import Outcome
from sipd.media.ng import NgError, NgTimeout
from sipd.media.relay import MediaRelay, Mode, behind_nat, caller_behind_nat, carries_sdp
from sipd.sip.message import Request, Response, make_response, parse

CALLER = Peer("udp", "198.51.100.7", 5062, 1)
SDP = (b"v=0\r\no=alice 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\n"
       b"t=0 0\r\nm=audio 6000 RTP/AVP 0\r\n")
RELAYED = ("v=0\r\no=alice 1 1 IN IP4 203.0.113.9\r\ns=-\r\nc=IN IP4 203.0.113.9\r\n"
           "t=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtcp:40001\r\n")


def invite(via_host: str = "198.51.100.7", body: bytes = SDP, to_tag: str = "",
           ctype: str = "application/sdp") -> Request:
    to = "<sip:bob@sip.test>" + (f";tag={to_tag}" if to_tag else "")
    head = (f"INVITE sip:bob@sip.test SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {via_host}:5062;branch=z9hG4bKx1;rport\r\n"
            f"From: <sip:alice@sip.test>;tag=ft1\r\nTo: {to}\r\n"
            f"Call-ID: call-1\r\nCSeq: 1 INVITE\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n")
    msg = parse(head.encode() + body)
    assert isinstance(msg, Request)
    return msg


def ok(req: Request, body: bytes = SDP.replace(b"6000", b"7000")) -> Response:
    resp = make_response(req, 200, None, (("Content-Type", "application/sdp"),), to_tag="tt1")
    resp.body = body
    return resp


def reply(sdp: str = RELAYED) -> Outcome[dict[str, Any]]:
    return Outcome({"result": "ok", "sdp": sdp})


def seen(relayed: bool, now: float) -> tuple[bool, float]:
    return relayed, now


# ------------------------------------------------------------------ policy


def test_an_sdp_body_is_application_sdp_and_not_empty() -> None:
    assert carries_sdp(invite())
    assert carries_sdp(invite(ctype="Application/SDP; charset=utf-8"))
    assert not carries_sdp(invite(body=b""))
    assert not carries_sdp(invite(ctype="multipart/mixed;boundary=x"))


@pytest.mark.parametrize(("advertised", "seen_at", "nat"), [
    ("198.51.100.7", "198.51.100.7", False),
    ("[2001:db8::1]", "2001:db8::1", False),
    ("127.1", "127.0.0.1", False),          # the same address, spelt otherwise
    ("192.168.1.10", "198.51.100.7", True),
    ("phone.example", "198.51.100.7", True),  # a name cannot vouch for the address
])
def test_behind_a_nat_means_seen_at_another_address(advertised: str, seen_at: str,
                                                     nat: bool) -> None:
    assert behind_nat(advertised, seen_at) is nat


def test_the_caller_is_behind_a_nat_when_its_via_names_another_host() -> None:
    assert not caller_behind_nat(invite(), CALLER)
    assert caller_behind_nat(invite(via_host="10.0.0.5"), CALLER)


@pytest.mark.parametrize(("mode", "caller", "callee", "relayed"), [
    ("always", False, False, True),
    ("nat", False, False, False),
    ("nat", True, False, True),
    ("nat", False, True, True),
    ("never", True, True, False),
])
def test_the_policy(mode: Mode, caller: bool, callee: bool, relayed: bool) -> None:
    relay = MediaRelay(mode, "udp:127.0.0.1:2223")
    assert relay.relays(invite(), caller_nat=caller, callee_nat=callee) is relayed


def test_no_offer_no_relay() -> None:
    relay = MediaRelay("always", "x")
    assert not relay.relays(invite(body=b""), caller_nat=True, callee_nat=True)


def test_a_reinvite_is_relayed_exactly_when_its_call_is() -> None:
    relay = MediaRelay("always", "x")
    reinvite = invite(to_tag="tt1")
    assert not relay.relays(reinvite, caller_nat=True, callee_nat=True)
    req = invite()
    relay.offer(req, CALLER, False, 1.0, seen).then(reply(), 1.1)
    relay.mode = "never"  # a SIGHUP meanwhile changes nothing for this call
    assert relay.relays(reinvite, caller_nat=False, callee_nat=False)
    # From the callee's side: its tag is From, the caller's To.
    back = invite(to_tag="ft1")
    back.set("From", "<sip:bob@sip.test>;tag=tt1")
    assert relay.relays(back, caller_nat=False, callee_nat=False)
    other = invite(to_tag="zz")
    other.set("From", "<sip:mallory@sip.test>;tag=zz2")
    assert not relay.relays(other, caller_nat=False, callee_nat=False)


# ------------------------------------------------------------------ offer and answer


def test_the_offer_message_and_the_sdp_swap() -> None:
    relay = MediaRelay("always", "x")
    req = invite()
    ask = relay.offer(req, CALLER, False, 5.0, seen)
    assert ask.message == {
        "command": "offer", "call-id": "call-1", "from-tag": "ft1", "sdp": SDP,
        "replace": ["origin", "session-connection"], "ICE": "remove",
        "received-from": ["IP4", "198.51.100.7"],
    }
    assert ask.then(reply(), 5.2) == (True, 5.2)
    assert req.body == RELAYED.encode()
    wire = req.to_bytes()
    assert f"Content-Length: {len(RELAYED)}\r\n".encode() in wire
    assert wire.endswith(RELAYED.encode())
    assert list(relay.sessions) == ["call-1"]
    assert relay.stats.offers == 1 and relay.stats.offer_failures == 0


def test_a_caller_behind_a_nat_gets_its_media_at_its_sip_source() -> None:
    relay = MediaRelay("nat", "x")
    ask = relay.offer(invite(via_host="10.0.0.5"), CALLER, True, 0.0, seen)
    assert ask.message["flags"] == ["SIP-source-address"]
    assert ask.message["received-from"] == ["IP4", "198.51.100.7"]
    v6 = relay.offer(invite(), Peer("udp", "2001:db8::7", 5060, 1), False, 0.0, seen)
    assert v6.message["received-from"] == ["IP6", "2001:db8::7"] and "flags" not in v6.message


def test_the_answer_message_and_the_sdp_swap() -> None:
    relay = MediaRelay("always", "x")
    req = invite()
    relay.offer(req, CALLER, False, 0.0, seen).then(reply(), 0.1)
    resp = ok(req)
    ask = relay.answer(resp, "192.0.2.20", True, seen)
    assert ask.message["command"] == "answer"
    assert ask.message["to-tag"] == "tt1" and ask.message["from-tag"] == "ft1"
    assert ask.message["flags"] == ["SIP-source-address"]
    answered = RELAYED.replace("40000", "40002")
    assert ask.then(reply(answered), 0.2) == (True, 0.2)
    assert resp.body == answered.encode()
    assert relay.stats.answers == 1


def test_a_reinvite_offer_names_both_tags() -> None:
    relay = MediaRelay("always", "x")
    relay.offer(invite(), CALLER, False, 0.0, seen).then(reply(), 0.1)
    ask = relay.offer(invite(to_tag="tt1"), CALLER, False, 9.0, seen)
    assert ask.message["to-tag"] == "tt1" and ask.message["from-tag"] == "ft1"


@pytest.mark.parametrize("outcome", [
    Outcome(error=NgTimeout("no answer in 1 s (3 tries)")),
    Outcome(error=NgError("Unknown call-id")),
    Outcome({"result": "ok"}),
])
def test_a_failure_leaves_the_message_alone_and_the_call_unrelayed(
        outcome: Outcome[dict[str, Any]], caplog: pytest.LogCaptureFixture) -> None:
    relay = MediaRelay("always", "udp:127.0.0.1:2223")
    req = invite()
    with caplog.at_level(logging.WARNING, "sipd.media"):
        assert relay.offer(req, CALLER, False, 0.0, seen).then(outcome, 1.0) == (False, 1.0)
    assert req.body == SDP
    assert relay.sessions == {}
    assert relay.stats.offer_failures == 1
    (line,) = caplog.messages
    assert line.startswith("media relay: rtpengine at udp:127.0.0.1:2223 failed the offer of "
                           'call-id "call-1"')
    assert line.endswith("the call goes on unrelayed")


def test_failures_are_logged_once_a_minute_with_the_count_of_the_rest(
        caplog: pytest.LogCaptureFixture) -> None:
    relay = MediaRelay("always", "x")
    timeout: Outcome[dict[str, Any]] = Outcome(error=NgTimeout("no answer"))
    with caplog.at_level(logging.WARNING, "sipd.media"):
        for t in (100.0, 110.0, 120.0, 159.0):
            relay.offer(invite(), CALLER, False, t, seen).then(timeout, t)
        assert len(caplog.messages) == 1
        relay.offer(invite(), CALLER, False, 161.0, seen).then(timeout, 161.0)
    assert len(caplog.messages) == 2
    assert "(3 more failure(s) since the last message)" in caplog.messages[1]
    assert relay.stats.offer_failures == 5


# ------------------------------------------------------------------ delete


def test_the_end_of_a_relayed_call_deletes_its_session_once() -> None:
    relay = MediaRelay("always", "x")
    relay.end("call-1")
    assert relay.take_pending() == []  # never relayed: nothing to ask
    relay.offer(invite(), CALLER, False, 0.0, seen).then(reply(), 0.1)
    relay.end("call-1")
    relay.end("call-1")
    (delete,) = relay.take_pending()
    assert delete.message == {"command": "delete", "call-id": "call-1", "from-tag": "ft1"}
    assert relay.take_pending() == []
    assert delete.then(Outcome({"result": "ok"}), 1.0) == []
    assert relay.stats.deletes == 1 and relay.stats.delete_failures == 0
    assert relay.sessions == {}


def test_a_failed_delete_is_counted() -> None:
    relay = MediaRelay("always", "x")
    relay.offer(invite(), CALLER, False, 0.0, seen).then(reply(), 0.1)
    relay.end("call-1")
    (delete,) = relay.take_pending()
    delete.then(Outcome(error=NgTimeout("no answer")), 2.0)
    assert relay.stats.delete_failures == 1


def test_sessions_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay_module, "MAX_SESSIONS", 2)
    relay = MediaRelay("always", "x")
    for n in range(3):
        req = invite()
        req.set("Call-ID", f"call-{n}")
        relay.offer(req, CALLER, False, float(n), seen).then(reply(), float(n))
    assert list(relay.sessions) == ["call-1", "call-2"]
    (delete,) = relay.take_pending()
    assert delete.message["call-id"] == "call-0"
    assert relay.stats.sessions_dropped == 1

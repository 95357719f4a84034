"""The proxy with a media relay, sans-IO: when it asks rtpengine, what it waits for, what it sends.

rtpengine's replies are handed in by the test (:class:`Engine`), as SIP
bytes are: a relayed SDP names 203.0.113.9 and a port of its own. The
real rtpengine is driven in tests/e2e/test_rtpengine_e2e.py.
"""

from __future__ import annotations

import re
from typing import Any

from sipd.core.peer import Outgoing, Peer
from sipd.core.work import Action, Ask, Job, Outcome
from sipd.media.ng import NgTimeout
from sipd.media.relay import MediaRelay, Mode
from sipd.proxy.calltrack import CallTracker, end_media_with_calls
from sipd.sip.message import Request, Response, parse
from srfs.state.calls import CallTable
from srfs.state.location import Binding
from tests.unit.sipd.proxy.test_proxy import (
    BOB1,
    BOB2,
    CALLER,
    Net,
    answer,
    bye,
    invite,
    requests,
    responses,
)

SDP = "v=0\r\no=zed 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n" \
      "m=audio 6000 RTP/AVP 0\r\n"
BOB_SDP = SDP.replace("198.51.100.7", "192.0.2.20").replace("6000", "7000")
WITH_SDP = f"Content-Type: application/sdp\r\nContent-Length: {len(SDP)}\r\n"

Sent = list[tuple[Request | Response, Peer]]


def offer(**kw: Any) -> bytes:
    """An INVITE from zed (a stranger) to bob with an SDP offer."""
    return invite(**kw).replace(b"Content-Length: 0\r\n\r\n", f"{WITH_SDP}\r\n{SDP}".encode())


def with_sdp(resp: Response, sdp: str = BOB_SDP) -> Response:
    resp.set("Content-Type", "application/sdp")
    resp.body = sdp.encode()
    return resp


def port_of(msg: Request | Response) -> int:
    found = re.search(rb"^m=audio (\d+) ", msg.body, re.M)
    assert found, msg.body
    return int(found.group(1))


class Engine:
    """rtpengine as the test plays it: each question recorded, answered now or held."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []
        self.held: list[Ask[list[Action]]] = []
        self.hold = False
        self.down = False
        self._port = 40000

    def reply(self, message: dict[str, Any]) -> Outcome[dict[str, Any]]:
        if self.down:
            return Outcome(error=NgTimeout("no answer in 1 s (3 tries)"))
        if message["command"] == "delete":
            return Outcome({"result": "ok"})
        self._port += 2
        sdp = re.sub(r"IN IP4 [\d.]+", "IN IP4 203.0.113.9", message["sdp"].decode())
        sdp = re.sub(r"m=audio \d+", f"m=audio {self._port}", sdp)
        return Outcome({"result": "ok", "sdp": sdp})

    def commands(self) -> list[str]:
        return [m["command"] for m in self.asked]


class MediaNet(Net):
    """The proxy of test_proxy with a relay; Asks go to :class:`Engine`."""

    def __init__(self, mode: Mode = "always") -> None:
        super().__init__()
        self.relay = MediaRelay(mode, "udp:127.0.0.1:2223")
        self.proxy.forker.media = self.relay
        self.engine = Engine()

    def _drive(self, actions: list[Action]) -> Sent:
        out: list[Outgoing] = []
        pending = list(actions)
        while pending:
            item = pending.pop(0)
            if isinstance(item, Job):
                pending[0:0] = item.done(Outcome(item.run()), self.now)
            elif isinstance(item, Ask):
                self.engine.asked.append(dict(item.message))
                if self.engine.hold:
                    self.engine.held.append(item)
                else:
                    pending[0:0] = item.then(self.engine.reply(dict(item.message)), self.now)
            else:
                out.append(item)
        return [(parse(o.data), o.peer) for o in out]

    def send(self, data: bytes | Request | Response, peer: Peer) -> Sent:
        raw = data if isinstance(data, bytes) else data.to_bytes()
        return self._drive(self.ep.receive(raw, peer, self.now))

    def tick(self, to: float) -> Sent:
        self.now = to
        return self._drive(self.ep.handle_timer(to))

    def release(self) -> Sent:
        """Answer the questions held back, in order."""
        held, self.engine.held = self.engine.held, []
        self.engine.hold = False
        out: Sent = []
        for ask in held:
            out.extend(self._drive(ask.then(self.engine.reply(dict(ask.message)), self.now)))
        return out


def call(net: MediaNet, data: bytes | None = None) -> Request:
    out = net.send(data or offer(call_id="media-1"), CALLER)
    assert responses(out) == [100]
    (req, _), = requests(out, "INVITE")
    return req


def test_the_offer_goes_through_rtpengine_before_any_branch() -> None:
    net = MediaNet()
    net.bind("bob", BOB1)
    net.bind("bob", BOB2)
    net.engine.hold = True
    out = net.send(offer(call_id="media-1"), CALLER)
    # The 100 at once; no branch while rtpengine is asked.
    assert responses(out) == [100] and requests(out) == []
    (asked,) = net.engine.asked
    assert asked["command"] == "offer" and asked["call-id"] == "media-1"
    assert asked["from-tag"] == "caller1" and asked["sdp"] == SDP.encode()
    assert asked["received-from"] == ["IP4", CALLER.host] and "flags" not in asked
    sent = requests(net.release(), "INVITE")
    assert {p for _, p in sent} == {BOB1, BOB2}
    for req, _ in sent:
        assert b"c=IN IP4 203.0.113.9\r\n" in req.body and port_of(req) == 40002
        assert req.content_length == len(req.body)
    assert list(net.relay.sessions) == ["media-1"]


def test_answers_go_through_rtpengine_and_a_2xx_again_reuses_the_answer() -> None:
    net = MediaNet()
    net.bind("bob", BOB1)
    req = call(net)
    ringing = net.send(answer(req, 180, "t1"), BOB1)
    assert responses(ringing) == [180] and net.engine.commands() == ["offer"]
    early = net.send(with_sdp(answer(req, 183, "t1")), BOB1)
    (resp, _), = early
    assert resp.status == 183 and port_of(resp) == 40004
    answer_asked = net.engine.asked[-1]
    assert answer_asked["command"] == "answer" and answer_asked["to-tag"] == "t1"
    assert answer_asked["received-from"] == ["IP4", BOB1.host]
    # The 200 changes the answer: asked again.
    changed = BOB_SDP.replace("7000", "7002")
    ok = with_sdp(answer(req, 200, "t1"), changed)
    (resp, _), = [(m, p) for m, p in net.send(ok, BOB1) if isinstance(m, Response)]
    assert resp.status == 200 and port_of(resp) == 40006
    assert b"203.0.113.9" in resp.body and resp.content_length == len(resp.body)
    # bob sends his 200 again: the same SDP, not asked again.
    again = net.send(with_sdp(answer(req, 200, "t1"), changed), BOB1)
    (resp, _), = [(m, p) for m, p in again if isinstance(m, Response)]
    assert port_of(resp) == 40006
    assert net.engine.commands() == ["offer", "answer", "answer"]


def test_bye_deletes_the_session() -> None:
    net = MediaNet()
    net.bind("bob", BOB1)
    req = call(net, offer(call_id="media-bye"))
    net.send(with_sdp(answer(req, 200, "callee1")), BOB1)
    data = bye("sip:bob@192.0.2.20:5070", ["<sip:192.0.2.1:5060;lr>"]).replace(
        b"Call-ID: ", b"Call-ID: media-bye\r\nX-Old: ")
    out = net.send(data, CALLER)
    assert requests(out, "BYE")
    assert net.engine.asked[-1] == {"command": "delete", "call-id": "media-bye",
                                    "from-tag": "caller1"}
    assert net.relay.sessions == {}


def test_a_failed_call_deletes_its_session() -> None:
    net = MediaNet()
    net.bind("bob", BOB1)
    req = call(net, offer(call_id="media-busy"))
    assert responses(net.send(answer(req, 486, "t1"), BOB1)) == [486]
    assert net.engine.commands() == ["offer", "delete"]


def test_a_cancel_while_rtpengine_is_asked_ends_the_call_once_it_answers() -> None:
    net = MediaNet()
    net.bind("bob", BOB1)
    net.engine.hold = True
    data = offer(call_id="media-cancel")
    out = net.send(data, CALLER)
    assert responses(out) == [100]
    # The same Via branch: the CANCEL matches the INVITE.
    head = data.split(b"\r\n\r\n", 1)[0].replace(b"INVITE sip:bob", b"CANCEL sip:bob")
    cancel = re.sub(rb"Content-(Type|Length): [^\r]*\r\n", b"", head + b"\r\n")
    cancel = cancel.replace(b"1 INVITE", b"1 CANCEL") + b"Content-Length: 0\r\n\r\n"
    assert responses(net.send(cancel, CALLER)) == [200]
    out = net.release()
    # No branch ever went out; the caller gets its 487; the session is deleted.
    assert requests(out, "INVITE") == []
    assert responses(out) == [487]
    assert net.engine.commands() == ["offer", "delete"]


def test_without_rtpengine_the_call_goes_on_unrelayed() -> None:
    net = MediaNet()
    net.bind("bob", BOB1)
    net.engine.down = True
    req = call(net)
    assert req.body == SDP.encode()
    net.engine.down = False
    (resp, _), = [(m, p) for m, p in net.send(with_sdp(answer(req, 200, "t1")), BOB1)
                  if isinstance(m, Response)]
    # The answer is not asked about either: the offer never went through.
    assert resp.body == BOB_SDP.encode()
    assert net.engine.commands() == ["offer"]
    assert net.relay.stats.offer_failures == 1 and net.relay.sessions == {}


def test_an_invite_without_sdp_is_not_relayed() -> None:
    net = MediaNet()
    net.bind("bob", BOB1)
    call(net, invite(call_id="late-offer"))
    assert net.engine.asked == []


def test_nat_leaves_a_call_between_phones_on_their_own_addresses_alone() -> None:
    net = MediaNet("nat")
    net.bind("bob", BOB1)
    req = call(net)
    assert req.body == SDP.encode() and net.engine.asked == []


def test_nat_relays_a_caller_whose_via_names_another_address() -> None:
    net = MediaNet("nat")
    net.bind("bob", BOB1)
    data = offer(call_id="nat-caller").replace(b"Via: SIP/2.0/UDP 198.51.100.7:5062",
                                               b"Via: SIP/2.0/UDP 10.0.0.7:5062")
    call(net, data)
    (asked,) = net.engine.asked
    assert asked["flags"] == ["SIP-source-address"]
    assert asked["received-from"] == ["IP4", CALLER.host]


def test_nat_relays_a_callee_registered_from_another_address() -> None:
    net = MediaNet("nat")
    behind = Peer("udp", "203.0.113.50", 40000, conn=0)
    net.store.upsert(Binding("bob", "bob", "sip:bob@10.0.0.5:5070", 1e12,
                             received="udp:203.0.113.50:40000"))
    req = call(net, offer(call_id="nat-callee"))
    assert b"203.0.113.9" in req.body
    (asked,) = net.engine.asked
    assert "flags" not in asked  # the caller is not behind a NAT
    net.send(with_sdp(answer(req, 200, "t1")), behind)
    assert net.engine.asked[-1]["command"] == "answer"
    assert net.engine.asked[-1]["flags"] == ["SIP-source-address"]
    assert net.engine.asked[-1]["received-from"] == ["IP4", "203.0.113.50"]


def test_a_reinvite_of_a_relayed_call_is_offered_with_both_tags() -> None:
    net = MediaNet()
    net.bind("bob", BOB1)
    req = call(net, offer(call_id="media-re"))
    net.send(with_sdp(answer(req, 200, "callee1")), BOB1)
    reinvite = offer(uri="sip:bob@192.0.2.20:5070", call_id="media-re", to_tag="callee1",
                     cseq=2, extra="Route: <sip:192.0.2.1:5060;lr>\r\n")
    out = net.send(reinvite, CALLER)
    (fwd, _), = requests(out, "INVITE")
    asked = net.engine.asked[-1]
    assert asked["command"] == "offer" and asked["to-tag"] == "callee1"
    assert b"203.0.113.9" in fwd.body


def test_a_reinvite_of_an_unrelayed_call_is_left_alone() -> None:
    net = MediaNet("never")
    net.bind("bob", BOB1)
    req = call(net, offer(call_id="plain-re"))
    net.send(with_sdp(answer(req, 200, "callee1")), BOB1)
    net.relay.mode = "always"
    reinvite = offer(uri="sip:bob@192.0.2.20:5070", call_id="plain-re", to_tag="callee1",
                     cseq=2, extra="Route: <sip:192.0.2.1:5060;lr>\r\n")
    (fwd, _), = requests(net.send(reinvite, CALLER), "INVITE")
    assert fwd.body == SDP.encode() and net.engine.asked == []


def test_a_call_record_that_times_out_deletes_the_session() -> None:
    relay = MediaRelay("always", "x")
    tracker = CallTracker(CallTable(), acc_enabled=False, ringing_timeout=60.0)
    end_media_with_calls(tracker, relay)
    req = parse(offer(call_id="media-lost"))
    assert isinstance(req, Request)
    relay.offer(req, CALLER, False, 0.0, lambda relayed, now: relayed).then(
        Outcome({"result": "ok", "sdp": SDP}), 0.0)
    tracker.call_started("media-lost", None, "bob", "sip:zed@example.com", "sip:bob@sip.test",
                         1000.0)
    tracker.call_forwarded("media-lost", "carol", 408, 1010.0)
    assert relay.take_pending() == []  # forwarded: the caller's call goes on
    tracker.expire(1000.0 + 61 + 10)
    (delete,) = relay.take_pending()
    assert delete.message["call-id"] == "media-lost"

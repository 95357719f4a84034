"""rtpengine's ng protocol, sans-IO: the wire format, and tries and time-outs in explicit time."""

from __future__ import annotations

import pytest

from sipd.media.ng import NgClient, NgError, NgTimeout, check, decode, encode

#: rtpengine 10.5's reply to an offer, as it sent it: "sdp" before "result",
#: which is not bencode's sorted order.
OFFER_REPLY = (b"c2 d3:sdp136:v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n"
               b"t=0 0\r\nm=audio 30000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
               b"a=rtcp:30001\r\n6:result2:oke")


def test_a_message_is_the_cookie_a_space_and_a_sorted_bencoded_dictionary() -> None:
    data = encode("abc_1", {"command": "offer", "call-id": "x@y", "replace": ["origin"],
                            "n": 3, "received-from": ["IP4", "192.0.2.1"]})
    assert data == (b"abc_1 d7:call-id3:x@y7:command5:offer1:ni3e13:received-froml3:IP4"
                    b"9:192.0.2.1e7:replacel6:originee")
    assert decode(data) == ("abc_1", {"command": "offer", "call-id": "x@y", "replace": ["origin"],
                                      "n": 3, "received-from": ["IP4", "192.0.2.1"]})


def test_rtpengines_own_reply_with_unsorted_keys_is_read() -> None:
    cookie, reply = decode(OFFER_REPLY)
    assert cookie == "c2"
    assert reply["result"] == "ok"
    assert "m=audio 30000 RTP/AVP 0\r\n" in reply["sdp"]
    assert len(reply["sdp"]) == 136


def test_bytes_that_are_not_utf8_come_back_unchanged() -> None:
    body = "v=0\r\ns=caf\udce9\r\n"  # a Latin-1 é, carried as a surrogate escape
    cookie, reply = decode(encode("k", {"sdp": body}))
    assert reply["sdp"] == body
    assert reply["sdp"].encode("utf-8", "surrogateescape") == b"v=0\r\ns=caf\xe9\r\n"


@pytest.mark.parametrize("data", [
    b"", b"nocookie", b" d6:result2:oke", b"k d6:result2:ok", b"k i3e", b"k d6:result2:okeXX",
    b"k l1:ae", b"k " + b"l" * 100 + b"e" * 100,
])
def test_anything_else_is_an_ng_error(data: bytes) -> None:
    with pytest.raises(NgError):
        decode(data)


@pytest.mark.parametrize("cookie", ["", "a b"])
def test_a_cookie_is_one_word(cookie: str) -> None:
    with pytest.raises(ValueError):
        encode(cookie, {"command": "ping"})


def test_check_tells_done_from_refused() -> None:
    assert check({"result": "ok", "sdp": "v=0"})["sdp"] == "v=0"
    assert check({"result": "pong"})
    with pytest.raises(NgError, match="Unknown call-id"):
        check({"result": "error", "error-reason": "Unknown call-id"})
    with pytest.raises(NgError, match="unexpected result"):
        check({"result": "load limit"})
    with pytest.raises(NgError):
        check({})


def cookie_of(data: bytes) -> str:
    return data.split(b" ", 1)[0].decode()


def test_three_tries_over_a_second_then_a_time_out() -> None:
    client: NgClient[str] = NgClient(prefix="p")
    first = client.request({"command": "ping"}, "token", now=100.0)
    assert cookie_of(first) == "p_1"
    assert client.next_deadline() == pytest.approx(100.0 + 1 / 3)
    assert client.due(100.3) == ([], [])
    again, expired = client.due(100.34)
    assert again == [first] and expired == []
    again, expired = client.due(100.67)
    assert again == [first] and expired == []
    assert client.next_deadline() == pytest.approx(101.0)
    again, expired = client.due(101.0)
    assert again == []
    (token, outcome), = expired
    assert token == "token" and isinstance(outcome.error, NgTimeout)
    assert "no answer in 1 s (3 tries)" in outcome.error.reason
    assert len(client) == 0 and client.next_deadline() is None
    # A reply after the time-out answers nothing.
    assert client.receive(b"p_1 d6:result4:ponge") is None


def test_a_reply_is_matched_by_its_cookie() -> None:
    client: NgClient[str] = NgClient(prefix="p")
    a = client.request({"command": "offer"}, "a", now=0.0)
    b = client.request({"command": "answer"}, "b", now=0.0)
    assert cookie_of(a) != cookie_of(b)
    assert client.receive(b"other d6:result2:oke") is None
    assert client.receive(b"garbage") is None
    found = client.receive(cookie_of(b).encode() + b" d6:result5:error12:error-reason3:bade")
    assert found is not None
    token, outcome = found
    assert token == "b" and isinstance(outcome.error, NgError) and outcome.error.reason == "bad"
    found = client.receive(cookie_of(a).encode() + b" d3:sdp3:v=06:result2:oke")
    assert found is not None and found[0] == "a" and found[1].get()["sdp"] == "v=0"
    # The same reply again (rtpengine answered a retry too) answers nothing.
    assert client.receive(cookie_of(a).encode() + b" d6:result2:oke") is None
    assert len(client) == 0


def test_each_request_keeps_its_own_schedule() -> None:
    client: NgClient[int] = NgClient(tries=2, timeout=0.5, prefix="p")
    client.request({"command": "ping"}, 1, now=10.0)
    client.request({"command": "ping"}, 2, now=10.2)
    again, _ = client.due(10.25)
    assert len(again) == 1
    _, expired = client.due(10.5)
    assert [t for t, _ in expired] == [1]
    # The second was sent again at 10.45 and runs out at 10.7.
    assert client.next_deadline() == pytest.approx(10.7)


def test_abandon_answers_everything_in_flight() -> None:
    client: NgClient[str] = NgClient(prefix="p")
    client.request({"command": "delete"}, "x", now=0.0)
    (token, outcome), = client.abandon()
    assert token == "x" and outcome.error is not None
    assert len(client) == 0


def test_cookies_differ_between_clients() -> None:
    a: NgClient[None] = NgClient()
    b: NgClient[None] = NgClient()
    assert cookie_of(a.request({}, None, 0.0)) != cookie_of(b.request({}, None, 0.0))

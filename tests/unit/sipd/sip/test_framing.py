"""Stream framing (sipd.sip.framing): RFC 3261 §18.3 and RFC 5626 §3.5.1."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipd.sip.errors import ParseError, SipError
from sipd.sip.framing import PING, PONG, FramingError, Ping, Pong, StreamFramer
from sipd.sip.message import Request, parse


def message(body: bytes = b"", clen: str | None = None, name: str = "Content-Length", extra: str = "") -> bytes:
    head = (
        "MESSAGE sip:bob@example.com SIP/2.0\r\n"
        "Via: SIP/2.0/TCP client.example.com;branch=z9hG4bK-f1\r\n"
        "From: <sip:alice@example.com>;tag=1\r\n"
        "To: <sip:bob@example.com>\r\n"
        "Call-ID: frame@client.example.com\r\n"
        "CSeq: 1 MESSAGE\r\n"
        f"{extra}"
    )
    if clen is None:
        clen = str(len(body))
    if clen != "-":
        head += f"{name}: {clen}\r\n"
    return head.encode() + b"\r\n" + body


def feed_all(framer: StreamFramer, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


def test_one_message_with_body() -> None:
    data = message(b"hello")
    assert StreamFramer().feed(data) == [data]
    assert parse(data).body == b"hello"


@pytest.mark.parametrize(
    "name", ["Content-Length", "content-length", "CONTENT-LENGTH", "l", "L", "Content-Length  ", "l\t"]
)
def test_content_length_spellings(name: str) -> None:
    data = message(b"body!", name=name)
    trailing = message(b"")
    assert StreamFramer().feed(data + trailing) == [data, trailing]


def test_content_length_with_space_after_colon_and_folded() -> None:
    data = message(b"abc", clen="   3  ")
    assert StreamFramer().feed(data) == [data]
    folded = message(b"abcd", clen="\r\n 4")
    assert StreamFramer().feed(folded + message()) == [folded, message()]


def test_missing_content_length_means_no_body_on_a_stream() -> None:
    first = message(clen="-")
    second = message(b"xyz")
    assert StreamFramer().feed(first + second) == [first, second]


def test_only_header_fields_count() -> None:
    # A "Content-Length" in the body or as part of another name is not one.
    body = b"l: 999\r\nContent-Length: 999\r\n"
    data = message(body, extra="X-Content-Length: 77\r\nContent-Lengthy: 5\r\n")
    assert StreamFramer().feed(data + data) == [data, data]


def test_pipelined_messages_in_one_feed() -> None:
    msgs = [message(b"a"), message(b""), message(b"0123456789")]
    assert StreamFramer().feed(b"".join(msgs)) == msgs


def test_byte_by_byte() -> None:
    msgs = [message(b"one"), message(b"two!")]
    stream = b"".join(msgs)
    framer = StreamFramer()
    got = feed_all(framer, [stream[i : i + 1] for i in range(len(stream))])
    assert got == msgs and not framer.pending


def test_pending_says_whether_a_message_is_unfinished() -> None:
    framer = StreamFramer()
    assert not framer.pending
    data = message(b"12345")
    assert framer.feed(data[:10]) == [] and framer.pending
    assert framer.feed(data[10:-1]) == [] and framer.pending  # headers done, body short
    assert framer.feed(data[-1:]) == [data] and not framer.pending
    assert framer.feed(b"\r\n") == [] and not framer.pending  # held: maybe half a ping


def test_ping_and_pong() -> None:
    framer = StreamFramer()
    frames = framer.feed(b"\r\n\r\n")
    assert frames == [PING] and isinstance(frames[0], Ping)
    assert framer.feed(b"\r\n") == []  # a pong, or the start of a ping: wait
    assert framer.feed(b"\r\n") == [PING]
    data = message()
    frames = framer.feed(b"\r\n" + data)
    assert frames == [PONG, data] and isinstance(frames[0], Pong)
    assert not isinstance(frames[1], Ping | Pong)


def test_ping_split_across_reads_is_still_a_ping() -> None:
    for cut in range(1, 4):
        framer = StreamFramer()
        assert framer.feed(b"\r\n\r\n"[:cut]) == []
        assert framer.feed(b"\r\n\r\n"[cut:]) == [PING]


def test_keepalives_between_pipelined_messages() -> None:
    a, b = message(b"x"), message(b"yy")
    stream = b"\r\n\r\n" + a + b"\r\n\r\n\r\n" + b + b"\r\n"
    assert StreamFramer().feed(stream) == [PING, a, PING, PONG, b]


def test_frames_are_bytes_for_code_that_expects_bytes() -> None:
    # Ping/Pong are bytes holding the keep-alive as received.
    assert PING == b"\r\n\r\n" and PONG == b"\r\n"
    assert not PING.strip(b"\r\n") and not PONG.strip(b"\r\n")


def test_bare_lf_peer() -> None:
    data = message(b"hi").replace(b"\r\n", b"\n")
    framer = StreamFramer()
    assert framer.feed(b"\n" + data + data) == [b"\n", data, data]
    assert parse(data).body == b"hi"


def test_lone_cr_between_messages_is_skipped() -> None:
    data = message()
    assert StreamFramer().feed(b"\r" + data) == [data]


def test_bad_content_length_closes_with_an_answerable_400() -> None:
    framer = StreamFramer()
    good = message(b"ok")
    with pytest.raises(FramingError) as info:
        framer.feed(good + message(clen="five"))
    err = info.value
    assert isinstance(err, ParseError) and isinstance(err, SipError)
    assert err.status == 400 and err.reason == "Bad Content-Length header"
    assert isinstance(err.message, Request)
    assert err.message.top_via.branch == "z9hG4bK-f1"
    assert err.frames == [good]
    with pytest.raises(FramingError) as again:  # stays broken
        framer.feed(message())
    assert again.value is err


@pytest.mark.parametrize("clen", ["-5", "+5", "5 5", "0x10", ""])
def test_content_length_not_a_number(clen: str) -> None:
    with pytest.raises(FramingError, match="Bad Content-Length header"):
        StreamFramer().feed(message(clen=clen))


def test_conflicting_content_lengths() -> None:
    data = message(b"abc", extra="l: 4\r\n")
    with pytest.raises(FramingError, match="Conflicting Content-Length headers") as info:
        StreamFramer().feed(data)
    assert info.value.status == 400
    same = message(b"abc", extra="l: 3\r\n")
    assert StreamFramer().feed(same) == [same]  # parse() still flags it: 400


def test_message_over_the_limit_fails_before_its_body_arrives() -> None:
    framer = StreamFramer(max_message_size=1000)
    with pytest.raises(FramingError) as info:
        framer.feed(message(clen="5000"))
    assert info.value.status == 513 and info.value.reason == "Message too large"
    assert isinstance(info.value.message, Request)
    huge = StreamFramer()
    with pytest.raises(FramingError, match="Message too large"):
        huge.feed(message(clen="9" * 40))


def test_header_block_over_the_limit() -> None:
    framer = StreamFramer(max_message_size=2000)
    head = message(clen="-")[:-2]  # no empty line yet
    framer.feed(head)
    with pytest.raises(FramingError) as info:
        framer.feed(b"X-Filler: " + b"a" * 3000)
    assert info.value.status == 513 and info.value.reason == "Header block too large"
    assert isinstance(info.value.message, Request)
    with pytest.raises(FramingError, match="Header block too large") as junk:
        StreamFramer(max_message_size=100).feed(b"x" * 200)
    assert junk.value.message is None


def test_exactly_at_the_limit_is_fine() -> None:
    data = message(b"z" * 100)
    assert StreamFramer(max_message_size=len(data)).feed(data) == [data]
    with pytest.raises(FramingError):
        StreamFramer(max_message_size=len(data) - 1).feed(data)


def test_large_message_in_tiny_chunks_is_linear() -> None:
    # Quadratic rescanning would make this take minutes, not milliseconds.
    body = b"b" * 60000
    data = message(body, extra="".join(f"X-H{i}: {'v' * 50}\r\n" for i in range(60)))
    framer = StreamFramer(max_message_size=70000)
    got = feed_all(framer, [data[i : i + 3] for i in range(0, len(data), 3)])
    assert got == [data]


# ------------------------------------------------------------- properties

BODY = st.binary(max_size=40)


@st.composite
def stream_items(draw: st.DrawFn) -> list[bytes]:
    """Messages and keep-alives as they may follow each other on a stream.

    A pong is only seen as one when a message follows it: "\r\n" then
    "\r\n\r\n" on the wire is a ping and a lone CRLF, not a pong and a ping.
    """
    items: list[bytes] = []
    before: list[list[bytes]] = [[], [], [PING], [PONG], [PING, PING], [PING, PONG]]
    keepalives = st.sampled_from(before)
    for _ in range(draw(st.integers(1, 5))):
        items.extend(draw(keepalives))
        kind = draw(st.sampled_from(["msg", "compact", "noclen"]))
        if kind == "msg":
            items.append(message(draw(BODY)))
        elif kind == "compact":
            items.append(message(draw(BODY), name=draw(st.sampled_from(["l", "L", "content-LENGTH "]))))
        else:
            items.append(message(clen="-"))
    if draw(st.booleans()):
        items.append(PING)
    return items


@settings(max_examples=300, deadline=None)
@given(stream_items(), st.lists(st.integers(0, 2000), max_size=12))
def test_any_split_gives_the_same_frames(items: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(items)
    whole = StreamFramer().feed(stream)
    assert whole == items
    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    framer = StreamFramer()
    assert feed_all(framer, chunks) == items
    assert [type(f) for f in feed_all(StreamFramer(), chunks)] == [type(f) for f in items]
    assert not framer.pending


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=8))
def test_arbitrary_bytes_frame_the_same_however_split(data: bytes, cuts: list[int]) -> None:
    def run(chunks: list[bytes]) -> tuple[list[bytes], str | None]:
        framer = StreamFramer(max_message_size=300)
        out: list[bytes] = []
        try:
            for chunk in chunks:
                out.extend(framer.feed(chunk))
        except FramingError as exc:
            return out + exc.frames, exc.reason
        return out, None

    whole = run([data])
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    split = run(chunks)
    if whole[1] is None and split[1] is None:
        assert split == whole
    else:
        # An error found later in a longer buffer may be found earlier when
        # less data has arrived ("too large" before the end is seen); the
        # frames before it agree.
        n = min(len(whole[0]), len(split[0]))
        assert whole[0][:n] == split[0][:n]

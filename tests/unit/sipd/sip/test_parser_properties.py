"""Property tests: no input makes the parser fail with anything but
ParseError/SipError, and what validates survives a serialise/parse round trip.

Bad input must cost a 400 or a silent drop, never an exception the
transport does not expect (KeyError, IndexError, UnicodeError, ValueError
from int(), RecursionError...).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sipd.sip.errors import ParseError, SipError
from sipd.sip.message import Message, Request, parse
from tests import TESTS

VECTORS = TESTS / "vectors"

SEEDS: list[bytes] = [p.read_bytes() for p in sorted(VECTORS.glob("*/*.sip"))]
SEEDS += [p.read_bytes() for p in sorted((VECTORS / "rfc4475").glob("*.dat"))]
SEEDS = [s for s in SEEDS if s]

# Bytes that matter to the grammar, to insert where they hurt most.
SPECIAL = [b"\r", b"\n", b"\r\n", b"\x00", b'"', b"<", b">", b";", b",", b":", b" ", b"\t",
           b"\\", b"=", b"@", b"%", b"[", b"]", b"?", b"\r\n ", b"\r\n\r\n", b"\xff", b"\xc3"]

FAST = settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def touch_everything(msg: Message) -> None:
    """Every typed accessor, as the core and the endpoint use them."""
    accessors: list[Callable[[], Any]] = [
        msg.validate,  # type: ignore[attr-defined]
        lambda: msg.vias,
        lambda: msg.top_via,
        lambda: msg.from_,
        lambda: msg.to,
        lambda: msg.call_id,
        lambda: msg.cseq,
        lambda: msg.max_forwards,
        lambda: msg.expires,
        lambda: msg.contacts,
        lambda: msg.contact_star,
        lambda: msg.content_length,
        lambda: msg.tokens("Require"),
        lambda: msg.tokens("Supported"),
        lambda: msg.addresses("Route"),
        lambda: msg.addresses("Record-Route"),
        lambda: msg.to_bytes(),
    ]
    if isinstance(msg, Request):
        accessors.append(lambda: msg.uri)
    for get in accessors:
        try:
            value = get()
        except SipError:
            continue
        if isinstance(value, list):
            for item in value:
                str(item)
        elif value is not None:
            str(value)


def feed(data: bytes) -> Message | None:
    try:
        msg = parse(data)
    except ParseError as exc:
        if exc.message is not None:
            touch_everything(exc.message)
        return None
    touch_everything(msg)
    return msg


@FAST
@given(st.binary(max_size=2000))
def test_arbitrary_bytes(data: bytes) -> None:
    feed(data)


@FAST
@given(st.lists(st.sampled_from(SPECIAL + [b"Via: ", b"SIP/2.0", b"sip:", b"INVITE ", b"l: 1",
                                         b"Contact: ", b"To: ", b"a", b"1"]), max_size=60))
def test_sip_shaped_noise(parts: list[bytes]) -> None:
    feed(b"".join(parts))
    feed(b"OPTIONS sip:a@b SIP/2.0\r\n" + b"".join(parts) + b"\r\n\r\n")


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "long", "dup"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from(SPECIAL))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "long":
            data[at:at] = draw(st.sampled_from([b"a", b"9", b";x", b" ", b"%4", b"\\\""])) * draw(
                st.integers(100, 20000)
            )
        elif kind == "dup":
            end = draw(st.integers(at, min(len(data), at + 200)))
            data[at:at] = data[at:end]
    return bytes(data)


@FAST
@given(mutated())
def test_mutated_messages(data: bytes) -> None:
    msg = feed(data)
    if msg is None:
        return
    try:
        msg.validate()  # type: ignore[attr-defined]
    except SipError:
        return
    # What validates round-trips: the same fields and body come back.
    again = parse(msg.to_bytes())
    assert _fields(again) == _fields(msg)
    assert again.body == msg.body
    assert again.content_length == len(msg.body)


def _fields(msg: Message) -> list[tuple[str, str]]:
    # to_bytes() rewrites Content-Length to the body's length by design.
    return [(n, v) for n, v in msg.headers() if n != "Content-Length"]


TOKEN = st.text(alphabet="abcXYZ019-.!%*_+`'~", min_size=1, max_size=12)
QUOTED_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="\"\\"),
    max_size=20,
)
HOST = st.sampled_from(["example.com", "192.0.2.1", "[2001:db8::1]", "a-b.example.org", "h"])


@st.composite
def valid_request(draw: st.DrawFn) -> bytes:
    """Requests built from the grammar: they must validate and round-trip."""
    method = draw(st.sampled_from(["INVITE", "REGISTER", "OPTIONS", "BYE", "MESSAGE"]))
    host = draw(HOST)
    user = draw(st.sampled_from(["alice", "%61lice", "+4930123", "a;b=c", "x.y"]))
    display = draw(st.one_of(st.none(), QUOTED_TEXT.map(lambda t: '"' + t + '" '), TOKEN.map(lambda t: t + " ")))
    params = draw(st.lists(st.tuples(TOKEN, st.one_of(st.none(), TOKEN, QUOTED_TEXT.map(lambda t: f'"{t}"'))),
                           max_size=3))
    pstr = "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)
    body = draw(st.binary(max_size=50))
    sep = draw(st.sampled_from(["\r\n", "\n"]))
    fold = draw(st.booleans())
    lines = [
        f"{method} sip:{user}@{host} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:5060;branch=z9hG4bK{draw(TOKEN)};rport",
        "Max-Forwards: 70",
        f"From: {display or ''}<sip:{user}@{host}>;tag={draw(TOKEN)}",
        f"To: <sip:{user}@{host}>" + (f"{sep}  {pstr}" if fold else pstr),
        f"Call-ID: {draw(TOKEN)}@{host}",
        f"CSeq: {draw(st.integers(0, 2**32 - 1))} {method}",
        f"Contact: {display or ''}<sip:{user}@{host}>{pstr}",
        f"Content-Length: {len(body)}",
    ]
    return (sep.join(lines) + sep + sep).encode("utf-8", "surrogateescape") + body


@FAST
@given(valid_request())
def test_generated_requests_validate_and_round_trip(data: bytes) -> None:
    msg = parse(data)
    msg.validate()
    again = parse(msg.to_bytes())
    again.validate()
    assert again.headers() == msg.headers()
    assert again.body == msg.body
    assert again.to == msg.to and again.contacts == msg.contacts
    assert parse(again.to_bytes()).to_bytes() == again.to_bytes()

"""Message parsing, validation and serialisation (sipd.sip.message).

The raw messages live in tests/vectors/{valid,invalid}/ and were written
from the RFC 3261 §25 grammar; the tables below say what each must give.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sipd.sip.errors import ParseError, SipError
from sipd.sip.headers import Address, Via
from sipd.sip.message import (
    KNOWN_METHODS,
    MAX_HEADERS,
    Message,
    Request,
    Response,
    canonical_name,
    make_response,
    parse,
)
from sipd.sip.uri import AbsoluteURI, SipURI, TelURI, parse_uri
from tests import TESTS

VECTORS = TESTS / "vectors"


def vector(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def parsed(name: str) -> Request | Response:
    msg = parse(vector(name))
    msg.validate()
    return msg


# ------------------------------------------------------------ valid vectors


def _register_outbound(m: Request | Response) -> None:
    assert isinstance(m, Request) and m.method == "REGISTER"
    assert m.top_via.param("rport") is None and m.top_via.has_param("rport")
    (contact,) = m.contacts
    assert contact.param("+sip.instance") == '"<urn:uuid:00000000-0000-1000-8000-000B82A1B2C3>"'
    assert contact.param("reg-id") == "1"
    assert contact.sip_uri is not None and contact.sip_uri.has_param("ob")
    assert m.expires == 3600 and m.max_forwards == 70
    assert m.tokens("Supported") == ["path", "outbound", "gruu"]
    assert [str(a.uri) for a in m.addresses("Path")] == ["sip:edge.example.net;lr"]
    assert (m.get("authorization") or "").startswith("Digest username=")


def _compact(m: Request | Response) -> None:
    assert [n for n, _ in m.headers()][:5] == ["Via", "From", "To", "Call-ID", "CSeq"]
    assert m.top_via.transport == "TCP"
    assert m.from_.display == "Alice" and m.from_.tag == "9fxced76sl"
    assert m.call_id == "3848276298220188511@client.example.com"
    assert m.tokens("k") == m.tokens("Supported") == ["timer", "100rel"]
    assert m.get("Subject") == "lunch?" and m.get("c") == "text/plain"
    assert m.body == b"hello" and m.content_length == 5


def _folding(m: Request | Response) -> None:
    assert m.top_via.branch == "z9hG4bKhjhs8ass877"
    assert m.max_forwards == 70
    assert m.from_.display == "Alice" and m.from_.tag == "1928301774"
    assert m.cseq.seq == 63104 and m.cseq.method == "OPTIONS"
    assert m.get("Subject") == "first line second line"


def _ipv6(m: Request | Response) -> None:
    assert isinstance(m, Request)
    uri = m.uri
    assert isinstance(uri, SipURI) and uri.host == "[2001:db8::20]" and uri.port == 5060
    first, second = m.vias
    assert first.host == "[2001:db8::10]" and first.port == 5070
    assert first.param("received") == "2001:db8::10"  # RFC 3261 form, no brackets
    assert second.host == "[::ffff:192.0.2.1]" and second.param("received") == "[2001:db8::99]"
    (contact,) = m.contacts
    assert contact.sip_uri is not None and contact.sip_uri.host == "[2001:db8::10]"
    assert [str(a.uri) for a in m.addresses("Route")] == ["sip:[2001:db8::1];lr"]


def _quoted_params(m: Request | Response) -> None:
    first, second = m.contacts
    assert first.display == '"Pat, the \\"boss\\""'
    assert first.display_text == 'Pat, the "boss"'
    assert first.param("methods") == '"INVITE,BYE;MESSAGE"'
    assert first.param("note") == '"a;b,c=d"'
    assert str(first).endswith(';methods="INVITE,BYE;MESSAGE";note="a;b,c=d"')
    assert second.param("q") == "0.1"


def _latin1(m: Request | Response) -> None:
    # Bytes that are not UTF-8 come back as surrogate escapes, unchanged.
    assert m.from_.display_text is not None
    assert m.from_.display_text.encode("utf-8", "surrogateescape") == b"J\xfcrgen M\xfcller"
    assert m.to.display is not None
    assert m.to.display.encode("utf-8", "surrogateescape") == b"J\xfcrgen"
    assert m.body == b"Gr\xfc\xdf"


def _contact_star(m: Request | Response) -> None:
    assert m.contact_star and m.contacts == [] and m.expires == 0


def _tel(m: Request | Response) -> None:
    assert isinstance(m, Request)
    assert isinstance(m.uri, TelURI) and m.uri.number == "+1-201-555-0123"
    assert m.uri.param("phone-context") == "example.com"
    assert isinstance(m.to.uri, TelURI)
    assert m.from_.sip_uri is not None and m.from_.sip_uri.param("user") == "phone"


def _escaped(m: Request | Response) -> None:
    assert isinstance(m, Request)
    assert isinstance(m.uri, SipURI) and m.uri.user == "%6Aan%20smith"
    assert m.uri.params == (("x", "%3B"),)
    assert m.from_.sip_uri is not None and m.from_.sip_uri.user == "user;par=u%40example.net"
    assert m.to.uri.equivalent(SipURI("sip", "example.com", user="jan smith"))  # type: ignore[union-attr]
    (contact,) = m.contacts
    assert contact.sip_uri is not None
    assert contact.sip_uri.headers == "Subject=hi%20there&Priority=urgent"


def _multi_via(m: Request | Response) -> None:
    assert isinstance(m, Response) and m.status == 200
    assert [v.host for v in m.vias] == ["proxy.example.com", "client.example.com", "third.example.com"]
    assert m.vias[1].port == 5061
    assert m.values("Via")[2] == "SIP/2.0/UDP third.example.com;branch=z9hG4bK-t1"


def _leading_crlf(m: Request | Response) -> None:
    assert isinstance(m, Request) and m.method == "OPTIONS"
    assert m.to_bytes() == vector("valid/leading_crlf.sip").lstrip(b"\r\n")


def _bare_lf(m: Request | Response) -> None:
    assert m.call_id == "lf@lf.example.com"
    assert m.body == b"ab\r\n"


def _no_reason(m: Request | Response) -> None:
    assert isinstance(m, Response) and m.status == 180 and m.reason == ""


def _unknown_scheme(m: Request | Response) -> None:
    # Parses and validates: the core answers 416 Unsupported URI Scheme.
    assert isinstance(m, Request)
    assert m.uri == AbsoluteURI("urn", "service:sos")
    assert isinstance(m.to.uri, AbsoluteURI)


def _register_ok(m: Request | Response) -> None:
    assert isinstance(m, Response)
    assert [c.param("expires") for c in m.contacts] == ["3521", "120"]
    assert m.top_via.param("received") == "203.0.113.5"
    assert m.get("Date") == "Sat, 13 Nov 2010 23:29:00 GMT"


def _redirect(m: Request | Response) -> None:
    # Two quoted display names in one Contact line: each ends at its own quote.
    assert isinstance(m, Response) and m.status == 302
    assert [(c.display_text, c.param("q")) for c in m.contacts] == [
        ("Alice Office", "0.7"), ("Alice Mobile", "0.3"),
    ]
    assert [c.sip_uri.host for c in m.contacts if c.sip_uri] == [
        "office.example.com", "mobile.example.com",
    ]


VALID: list[tuple[str, bool, Callable[[Request | Response], None]]] = [
    # file, to_bytes() gives back the same bytes, checks
    ("register_outbound.sip", True, _register_outbound),
    ("compact_forms.sip", False, _compact),
    ("folding.sip", False, _folding),
    ("ipv6.sip", True, _ipv6),
    ("quoted_params.sip", True, _quoted_params),
    ("latin1_display.sip", True, _latin1),
    ("contact_star.sip", True, _contact_star),
    ("tel_uri.sip", True, _tel),
    ("escaped_uri.sip", True, _escaped),
    ("multi_via_one_line.sip", True, _multi_via),
    ("leading_crlf.sip", False, _leading_crlf),
    ("bare_lf.sip", False, _bare_lf),
    ("no_reason_phrase.sip", False, _no_reason),
    ("unknown_scheme_ruri.sip", True, _unknown_scheme),
    ("register_200_ok.sip", True, _register_ok),
    ("redirect_display_names.sip", True, _redirect),
]


def test_every_valid_vector_is_in_the_table() -> None:
    assert {p.name for p in (VECTORS / "valid").iterdir()} == {name for name, _, _ in VALID}


@pytest.mark.parametrize(("name", "exact", "check"), VALID, ids=[v[0] for v in VALID])
def test_valid_vector(name: str, exact: bool, check: Callable[[Request | Response], None]) -> None:
    data = vector("valid/" + name)
    msg = parsed("valid/" + name)
    check(msg)
    if exact:
        assert msg.to_bytes() == data
    again = parse(msg.to_bytes())
    again.validate()
    assert _without_clen(again) == _without_clen(msg)
    assert again.body == msg.body and again.content_length == len(msg.body)


def _without_clen(msg: Message) -> list[tuple[str, str]]:
    return [(n, v) for n, v in msg.headers() if n != "Content-Length"]


# ---------------------------------------------------------- invalid vectors

# Where the error surfaces, what status it carries, and what the reason says.
PARSE = "parse"  # parse() raises ParseError, err.message is a Request: answer it
VALIDATE = "validate"  # parse() works, validate() raises SipError
DROP = "drop"  # parse() raises, err.message is None: not SIP, dropped

INVALID: list[tuple[str, str, int, str]] = [
    ("via_no_host.sip", VALIDATE, 400, "Bad Via sent-by"),
    ("via_not_sip.sip", VALIDATE, 400, "protocol is not SIP"),
    ("via_bad_received.sip", VALIDATE, 400, "Bad Via received"),
    ("via_bad_rport.sip", VALIDATE, 400, "Bad Via rport"),
    ("via_empty_branch.sip", VALIDATE, 400, "Bad Via parameter value"),
    ("via_ipv6_unclosed.sip", VALIDATE, 400, "Bad Via sent-by"),
    ("bad_branch_cookie_only.sip", VALIDATE, 400, "Bad Via branch"),
    ("missing_via.sip", VALIDATE, 400, "Missing Via header"),
    ("missing_call_id.sip", VALIDATE, 400, "Missing Call-ID header"),
    ("missing_cseq.sip", VALIDATE, 400, "Missing CSeq header"),
    ("bad_cseq.sip", VALIDATE, 400, "Bad CSeq header"),
    ("cseq_method_mismatch.sip", VALIDATE, 400, "CSeq method does not match"),
    ("cseq_too_large.sip", VALIDATE, 400, "sequence number too large"),
    ("bad_call_id.sip", VALIDATE, 400, "Bad Call-ID header"),
    ("unterminated_quote.sip", VALIDATE, 400, "Bad From header: unterminated quoted string"),
    ("display_not_token.sip", VALIDATE, 400, "Bad From header: bad display name"),
    ("missing_gt.sip", VALIDATE, 400, "Bad To header: missing '>'"),
    ("bad_from_param.sip", VALIDATE, 400, "Bad From header parameter"),
    ("addr_spec_with_headers.sip", VALIDATE, 400, "must be enclosed in <>"),
    ("max_forwards_too_big.sip", VALIDATE, 400, "Bad Max-Forwards"),
    ("bad_expires.sip", VALIDATE, 400, "Bad Expires header"),
    ("contact_star_mixed.sip", VALIDATE, 400, "'*' mixed with other contacts"),
    ("bad_ruri_port.sip", VALIDATE, 400, "Bad Request-URI: Bad port"),
    ("bad_ruri_host.sip", VALIDATE, 400, "Bad Request-URI: Bad host"),
    ("ruri_in_brackets.sip", VALIDATE, 400, "Bad Request-URI"),
    ("ruri_with_headers.sip", VALIDATE, 400, "header fields are not allowed"),
    ("version_3.sip", VALIDATE, 505, "Version Not Supported"),
    ("multiple_from.sip", VALIDATE, 400, "Multiple From headers"),
    ("bad_require.sip", VALIDATE, 400, "Bad Require header"),
    ("bad_route.sip", VALIDATE, 400, "Bad Route header"),
    ("response_bad_cseq.sip", VALIDATE, 400, "sequence number too large"),
    ("response_no_via.sip", VALIDATE, 400, "Missing Via header"),
    ("ruri_with_space.sip", PARSE, 400, "Bad Request-URI: contains whitespace"),
    ("bad_content_length.sip", PARSE, 400, "Bad Content-Length header"),
    ("negative_content_length.sip", PARSE, 400, "Bad Content-Length header"),
    ("content_length_too_big.sip", PARSE, 400, "Content-Length larger than the message body"),
    ("two_content_lengths.sip", PARSE, 400, "Multiple Content-Length headers"),
    ("bad_header_line.sip", PARSE, 400, "Bad header line"),
    ("header_name_not_token.sip", PARSE, 400, "Bad header line"),
    ("nul_in_header.sip", PARSE, 400, "NUL byte in Subject header"),
    ("bare_cr.sip", PARSE, 400, "Bare CR"),
    ("continuation_first.sip", PARSE, 400, "Continuation line before any header"),
    ("no_empty_line.sip", PARSE, 400, "Missing empty line"),
    ("status_code_short.sip", DROP, 400, "Bad status line"),
    ("status_code_700.sip", DROP, 400, "Bad status line"),
    ("not_sip.sip", DROP, 400, "Bad request line"),
    ("no_version.sip", DROP, 400, "Bad request line"),
    ("binary.sip", DROP, 400, "Bad request line"),
    ("empty.sip", DROP, 400, "Bad request line"),
]


def test_every_invalid_vector_is_in_the_table() -> None:
    assert {p.name for p in (VECTORS / "invalid").iterdir()} == {row[0] for row in INVALID}


@pytest.mark.parametrize(("name", "where", "status", "reason"), INVALID, ids=[v[0] for v in INVALID])
def test_invalid_vector(name: str, where: str, status: int, reason: str) -> None:
    data = vector("invalid/" + name)
    if where == VALIDATE:
        msg = parse(data)
        with pytest.raises(SipError) as info:
            msg.validate()
    else:
        with pytest.raises(ParseError) as info:
            parse(data)
        partial = info.value.message
        if where == PARSE:
            # Enough was read to answer: the Via is there and usable.
            assert isinstance(partial, Request)
            assert partial.top_via.branch == "z9hG4bK-bad"
        else:
            assert partial is None
    assert info.value.status == status
    assert reason in info.value.reason


# ------------------------------------------------------------ start lines


@pytest.mark.parametrize(
    ("line", "method", "uri", "version"),
    [
        ("INVITE sip:a@b SIP/2.0", "INVITE", "sip:a@b", "SIP/2.0"),
        ("INVITE  sip:a@b  SIP/2.0", "INVITE", "sip:a@b", "SIP/2.0"),  # RFC 4475 §3.1.2.9
        ("OPTIONS sip:a@b SIP/2.0  ", "OPTIONS", "sip:a@b", "SIP/2.0"),  # §3.1.2.10
        ("FOO.bar!~ sip:a@b sip/2.0", "FOO.bar!~", "sip:a@b", "sip/2.0"),
    ],
)
def test_request_line(line: str, method: str, uri: str, version: str) -> None:
    msg = parse(line.encode() + b"\r\n\r\n")
    assert isinstance(msg, Request)
    assert (msg.method, msg.uri_text, msg.version) == (method, uri, version)
    assert msg.start_line() == f"{method} {uri} {version}"


@pytest.mark.parametrize(
    ("line", "status", "reason"),
    [
        ("SIP/2.0 200 OK", 200, "OK"),
        ("SIP/2.0 100 ", 100, ""),
        ("SIP/2.0 180", 180, ""),
        ("SIP/2.0 486 Busy  Here", 486, "Busy  Here"),
        ("SIP/2.0 699 x", 699, "x"),
    ],
)
def test_status_line(line: str, status: int, reason: str) -> None:
    msg = parse(line.encode() + b"\r\n\r\n")
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (status, reason)


@pytest.mark.parametrize(
    "line",
    ["SIP/2.0 099 Low", "SIP/2.0 1000 Big", "SIP/2.0 20x OK", "SIP/x 200 OK", "HTTP/1.1 200 OK",
     "INVITE sip:a@b", "INVITE", "INV(ITE sip:a@b SIP/2.0", "INVITE sip:a@b HTTP/1.1", ""],
)
def test_unusable_start_line_is_dropped(line: str) -> None:
    with pytest.raises(ParseError) as info:
        parse(line.encode() + b"\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n")
    assert info.value.message is None


def test_unknown_method_passes_validation_even_with_cseq_mismatch() -> None:
    # RFC 4475 §3.1.2.18: the core answers 501 rather than 400.
    msg = parse(_request("NEWMETHOD", cseq="8 INVITE"))
    assert msg.method not in KNOWN_METHODS  # type: ignore[union-attr]
    msg.validate()


def _request(method: str = "OPTIONS", cseq: str | None = None, extra: str = "", body: bytes = b"") -> bytes:
    head = (
        f"{method} sip:bob@example.com SIP/2.0\r\n"
        "Via: SIP/2.0/UDP h.example.com;branch=z9hG4bK-x\r\n"
        "From: <sip:a@example.com>;tag=1\r\n"
        "To: <sip:bob@example.com>\r\n"
        "Call-ID: c1\r\n"
        f"CSeq: {cseq or '1 ' + method}\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# ------------------------------------------------------ framing in parse()


def test_datagram_bytes_after_content_length_are_ignored() -> None:
    msg = parse(_request(body=b"abc") + b"garbage after the body")
    assert msg.body == b"abc"


def test_missing_content_length_means_rest_of_datagram() -> None:
    data = _request(body=b"").replace(b"Content-Length: 0\r\n", b"") + b"v=0\r\n"
    msg = parse(data)
    assert msg.body == b"v=0\r\n" and msg.content_length is None


@pytest.mark.parametrize(
    "data",
    [
        b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n\nbody",  # CRLF lines, LF empty line
        b"OPTIONS sip:a@b SIP/2.0\nCall-ID: x\n\r\nbody",  # LF lines, CRLF empty line
        b"OPTIONS sip:a@b SIP/2.0\nCall-ID: x\r\n\nbody\r\n\r\n",  # a CRLFCRLF later on
    ],
)
def test_mixed_line_ends(data: bytes) -> None:
    msg = parse(data)
    assert msg.get("Call-ID") == "x"
    assert msg.body.startswith(b"body")


def test_too_many_headers_keeps_the_first_for_the_answer() -> None:
    extra = "".join(f"X-H{i}: {i}\r\n" for i in range(MAX_HEADERS))
    with pytest.raises(ParseError) as info:
        parse(_request(extra=extra))
    assert info.value.reason == "Too many header fields"
    partial = info.value.message
    assert isinstance(partial, Request) and len(partial.headers()) == MAX_HEADERS
    assert partial.top_via.branch == "z9hG4bK-x"


def test_nul_inside_quoted_pair_is_allowed() -> None:
    msg = parse(_request(extra='Subject: "a\\\x00b"\r\n'))
    assert msg.get("Subject") == '"a\\\x00b"'


def test_header_names_any_case_and_space_before_colon() -> None:
    msg = parse(_request(extra="mAx-FoRwArDs  : 12\r\nX-Custom\t: v\r\n"))
    assert msg.max_forwards == 12
    assert ("X-Custom", "v") in msg.headers()
    assert msg.get("x-custom") == "v"


# ------------------------------------------------------------- model API


def test_get_get_all_values_count_contains() -> None:
    msg = parse(
        b"OPTIONS sip:a@b SIP/2.0\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b\r\n"
        b"Via: SIP/2.0/UDP c\r\nContent-Length: 0\r\n\r\n"
    )
    assert msg.get("VIA") == "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b"
    assert msg.get_all("v") == ["SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b", "SIP/2.0/UDP c"]
    assert msg.values("Via") == ["SIP/2.0/UDP a;branch=z9hG4bK1", "SIP/2.0/UDP b", "SIP/2.0/UDP c"]
    assert msg.count("via") == 2
    assert "via" in msg and "Route" not in msg and 5 not in msg
    assert msg.get("Route") is None and msg.get_all("Route") == []


def test_changes_drop_cached_values() -> None:
    msg = parse(_request())
    assert msg.top_via.branch == "z9hG4bK-x"
    msg.prepend("Via", "SIP/2.0/TCP proxy.example.com;branch=z9hG4bK-p")
    assert msg.top_via.host == "proxy.example.com" and len(msg.vias) == 2
    msg.set("Max-Forwards", "69")
    assert msg.max_forwards == 69
    msg.remove("max-forwards")
    assert msg.max_forwards is None
    msg.add("Contact", "<sip:a@192.0.2.1>")
    assert [str(c.uri) for c in msg.contacts] == ["sip:a@192.0.2.1"]
    msg.set_values("Via", ["SIP/2.0/UDP one;branch=z9hG4bK1", "SIP/2.0/UDP two;branch=z9hG4bK2"])
    assert [v.host for v in msg.vias] == ["one", "two"]
    assert [n for n, _ in msg.headers()][:2] == ["Via", "Via"]
    msg.set_values("Via", [])
    assert "Via" not in msg


_RICH = _request("INVITE", extra=(
    "v: SIP/2.0/TCP second.example.com;branch=z9hG4bK-2, SIP/2.0/UDP third;branch=z9hG4bK-3\r\n"
    "Max-Forwards: 70\r\n"
    "Contact: <sip:a@192.0.2.1:5070>;expires=60\r\n"
    "Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n"
    "Record-Route: <sip:rr.example.com;lr>\r\n"
    "Supported: path, outbound\r\n"
    "Expires: 300\r\n"
    'Proxy-Authorization: Digest username="a", realm="example.com"\r\n'
))


def _read_everything(msg: Message) -> tuple[object, ...]:
    """Every typed accessor and the raw index, as the proxy reads them."""
    return (
        msg.top_via, msg.vias, msg.from_, msg.to, msg.call_id, msg.cseq, msg.contacts,
        msg.max_forwards, msg.expires, msg.addresses("Route"), msg.addresses("Record-Route"),
        msg.tokens("Supported"), msg.get_all("Proxy-Authorization"), msg.values("Via"),
        msg.count("Route"), "Expires" in msg, msg.headers(),
    )


_CHANGES: list[tuple[str, Callable[[Message], None]]] = [
    ("prepend Via", lambda m: m.prepend("Via", "SIP/2.0/UDP proxy.example.com;branch=z9hG4bK-p")),
    ("set Max-Forwards", lambda m: m.set("Max-Forwards", "69")),
    ("remove credentials", lambda m: m.remove("Proxy-Authorization")),
    ("set From", lambda m: m.set("From", '"Alice" <sip:a@example.com>;tag=1')),
    ("set_values Route", lambda m: m.set_values("Route", ["<sip:p2.example.com;lr>"])),
    ("set_values Record-Route", lambda m: m.set_values(
        "Record-Route", ["<sip:mine.example.com;lr>", "<sip:rr.example.com;lr>"])),
    ("add Contact", lambda m: m.add("Contact", "<sip:b@192.0.2.2>")),
    ("add Supported", lambda m: m.add("Supported", "timer")),
    ("remove Expires", lambda m: m.remove("expires")),
    ("set_values Route empty", lambda m: m.set_values("Route", [])),
    ("add compact To", lambda m: m.set("t", "<sip:carol@example.com>")),
    ("set_top_via", lambda m: m.set_top_via(Via("UDP", "h.example.com", None,
                                                  (("branch", "z9hG4bK-x"), ("received", "192.0.2.9"))))),
]


@pytest.mark.parametrize("first_read", [True, False], ids=["read-first", "unread"])
def test_every_change_reads_back_as_the_message_it_writes(first_read: bool) -> None:
    """After each change, every accessor gives what parsing the written bytes gives."""
    msg = parse(_RICH)
    for what, change in _CHANGES:
        if first_read:
            _read_everything(msg)
        change(msg)
        assert _read_everything(msg) == _read_everything(parse(msg.to_bytes())), what


def test_a_copy_starts_with_what_was_parsed_and_changes_alone() -> None:
    original = parse(_RICH)
    assert isinstance(original, Request)
    before = _read_everything(original)
    copy = original.copy()
    assert copy.vias[1] is original.vias[1] and copy.from_ is original.from_
    for what, change in _CHANGES:
        change(copy)
        assert _read_everything(copy) == _read_everything(parse(copy.to_bytes())), what
        assert _read_everything(original) == before, what
    # And the other way: the original's changes leave a copy as it was.
    copy = original.copy()
    kept = _read_everything(copy)
    for _, change in _CHANGES:
        change(original)
    assert _read_everything(copy) == kept


def test_a_change_keeps_what_was_parsed_from_the_other_fields() -> None:
    msg = parse(_RICH)
    vias, frm, contacts = msg.vias, msg.from_, msg.contacts
    msg.set("Max-Forwards", "69")
    msg.remove("Proxy-Authorization")
    msg.set_values("Route", [])
    assert msg.vias is vias and msg.from_ is frm and msg.contacts is contacts
    msg.set("From", "<sip:b@example.com>;tag=2")
    assert msg.from_ is not frm and msg.from_.uri == parse_uri("sip:b@example.com")
    assert msg.vias is vias


def test_set_top_via_keeps_the_other_vias_parsed() -> None:
    msg = parse(_RICH)
    second = msg.vias[1]
    stamped = Via("UDP", "h.example.com", None, (("branch", "z9hG4bK-x"), ("rport", "5062")))
    msg.set_top_via(stamped)
    assert msg.top_via is stamped and msg.vias[1] is second
    assert msg.values("Via")[0] == "SIP/2.0/UDP h.example.com;branch=z9hG4bK-x;rport=5062"
    assert [n for n, _ in msg.headers()][:3] == ["Via", "Via", "Via"]
    with pytest.raises(ParseError):
        Request("OPTIONS", "sip:a@b").set_top_via(stamped)


def test_the_vias_reuse_a_top_via_read_first_and_check_the_rest() -> None:
    msg = parse(_RICH)
    stamped = msg.top_via.with_param("received", "198.51.100.9")
    msg.set_top_via(stamped)
    # The request's check reads them all after the top one was stamped.
    assert msg.vias[0] is stamped and len(msg.vias) == len(parse(_RICH).vias)
    assert msg.vias[1:] == parse(_RICH).vias[1:]
    broken = parse(_RICH)
    broken.set_values("Via", [broken.values("Via")[0], "SIP/2.0/UDP"])
    broken = parse(broken.to_bytes())
    assert broken.top_via.host
    with pytest.raises(ParseError):
        broken.vias  # noqa: B018 - the access parses


def test_prepend_without_that_header_goes_first() -> None:
    msg = Request("OPTIONS", "sip:a@b", [("To", "<sip:a@b>")])
    msg.prepend("Route", "<sip:p;lr>")
    assert msg.headers()[0] == ("Route", "<sip:p;lr>")


def test_constructor_canonicalises_names() -> None:
    msg = Request("OPTIONS", "sip:a@b", [("v", "SIP/2.0/UDP h"), ("call-id", "x")])
    assert msg.headers() == [("Via", "SIP/2.0/UDP h"), ("Call-ID", "x")]
    assert canonical_name("WWW-AUTHENTICATE") == "WWW-Authenticate"
    assert canonical_name("X-Mine") == "X-Mine"


def test_to_bytes_fixes_content_length_in_place() -> None:
    msg = parse(_request(body=b"abc"))
    msg.body = b"hello"
    out = msg.to_bytes()
    assert b"Content-Length: 5\r\n\r\nhello" in out
    built = Request("OPTIONS", "sip:a@b", [("Via", "SIP/2.0/UDP h")], b"xy")
    assert built.to_bytes() == b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nContent-Length: 2\r\n\r\nxy"
    assert bytes(built) == built.to_bytes()


def test_request_uri_setter_and_copy() -> None:
    msg = parse(_request())
    assert isinstance(msg, Request)
    clone = msg.copy()
    clone.uri = SipURI("sip", "192.0.2.9", user="bob", port=5080)
    clone.add("X", "1")
    assert clone.uri_text == "sip:bob@192.0.2.9:5080"
    assert msg.uri_text == "sip:bob@example.com" and "X" not in msg
    resp = make_response(msg, 200)
    assert resp.copy().to_bytes() == resp.to_bytes()


def test_make_response_copies_dialog_fields_and_adds_to_tag() -> None:
    msg = parse(_request(extra="Via: SIP/2.0/UDP second;branch=z9hG4bK2\r\nRecord-Route: <sip:p;lr>\r\n"))
    assert isinstance(msg, Request)
    resp = make_response(msg, 486, to_tag="t9", headers=[("Retry-After", "30")])
    assert resp.start_line() == "SIP/2.0 486 Busy Here"
    assert [n for n, _ in resp.headers()] == ["Via", "From", "To", "Call-ID", "CSeq", "Via", "Retry-After"]
    assert resp.to.tag == "t9" and resp.get("Retry-After") == "30"
    resp.validate()
    assert make_response(msg, 100, to_tag="t9").to.tag is None  # never on a 100
    tagged = parse(_request().replace(b"To: <sip:bob@example.com>", b"To: <sip:bob@example.com>;tag=old"))
    assert isinstance(tagged, Request)
    assert make_response(tagged, 200, to_tag="new").to.tag == "old"


def test_typed_accessors_raise_parse_error_naming_the_field() -> None:
    msg = parse(b"OPTIONS sip:a@b SIP/2.0\r\nTo: <sip:a@b\r\nCSeq: x\r\nl: 0\r\n\r\n")
    getters: list[tuple[Callable[[], object], str]] = [
        (lambda: msg.to, "Bad To header"),
        (lambda: msg.from_, "Missing From header"),
        (lambda: msg.top_via, "Missing Via header"),
        (lambda: msg.cseq, "Bad CSeq header"),
        (lambda: msg.call_id, "Missing Call-ID header"),
    ]
    for getter, reason in getters:
        with pytest.raises(ParseError, match=reason):
            getter()


def test_response_validate_needs_only_transaction_fields() -> None:
    resp = Response(200, headers=[
        ("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"), ("From", "<sip:a@b>;tag=1"),
        ("To", "<sip:a@b>;tag=2"), ("Call-ID", "x"), ("CSeq", "1 INVITE"),
    ])
    resp.validate()
    assert repr(resp) == "<Response 200 OK>"
    assert isinstance(resp.top_via, Via) and isinstance(resp.to, Address)


# ------------------------------------------------ what a kept message costs

_KEPT = (
    b"REGISTER sip:example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKkept\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@example.com>;tag=f1\r\n"
    b"To: <sip:alice@example.com>\r\n"
    b"Call-ID: kept@192.0.2.1\r\n"
    b"CSeq: 7 REGISTER\r\n"
    b"Timestamp: 54\r\n"
    b"Contact: <sip:alice@192.0.2.1>\r\n"
    b'Authorization: Digest username="alice", realm="example.com", nonce="n", '
    b'uri="sip:example.com", response="00000000000000000000000000000000"\r\n'
    b"Content-Length: 4\r\n\r\nbody"
)


def test_compact_drops_parsed_values_and_they_come_back() -> None:
    msg = parse(_KEPT)
    assert isinstance(msg, Request)
    via, contacts, seq = msg.top_via, msg.contacts, msg.cseq.seq
    assert msg._index is not None and msg._cache
    msg.compact()
    assert msg._index is None and not msg._cache
    assert msg.top_via == via and msg.contacts == contacts and msg.cseq.seq == seq
    assert msg.get("Call-ID") == "kept@192.0.2.1" and msg.to_bytes() == parse(_KEPT).to_bytes()


def _tracked_below(obj: object) -> int:
    """Objects the cycle collector tracks that ``obj`` holds, directly or not."""
    import gc

    seen: set[int] = set()
    todo = gc.get_referents(obj)
    while todo:
        o = todo.pop()
        if id(o) in seen or isinstance(o, type) or not gc.is_tracked(o):
            continue
        seen.add(id(o))
        todo.extend(gc.get_referents(o))
    return len(seen)


def test_a_compacted_message_holds_one_object_for_the_collector() -> None:
    # What a transaction keeps for up to 32 s after its answer: the garbage
    # collector walks it once, at its first young collection. A tuple per
    # field made it eleven more.
    msg = parse(_KEPT)
    assert isinstance(msg, Request)
    assert msg.top_via and msg.contacts and msg.cseq  # parsed, as the core does
    msg.compact()
    assert _tracked_below(msg) == 1  # the field list
    copy = msg.copy()
    copy.set("Max-Forwards", "69")
    copy.prepend("Via", "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKcopy")
    copy.compact()
    assert _tracked_below(copy) == 1
    reply = make_response(msg, 200, headers=[("Contact", "<sip:alice@192.0.2.1>")])
    assert _tracked_below(reply) == 1


def test_prepend_via_puts_a_via_on_top_already_parsed() -> None:
    req = parse(_KEPT)
    assert isinstance(req, Request)
    req.vias  # noqa: B018 - the received Vias parsed, as the core has them
    via = Via("TLS", "[2001:db8::1]", 5061, (("branch", "z9hG4bKours"), ("rport", None)))
    req.prepend_via(via)
    assert req.top_via is via
    assert req.get_all("Via")[0] == "SIP/2.0/TLS [2001:db8::1]:5061;branch=z9hG4bKours;rport"
    again = parse(req.to_bytes())
    assert again.top_via == via and again.vias[1:] == req.vias[1:]
    assert [v.branch for v in req.vias] == ["z9hG4bKours", "z9hG4bKkept"]


def test_a_stub_keeps_the_start_line_only() -> None:
    req = parse(_KEPT)
    assert isinstance(req, Request)
    stub = req.stub()
    assert (stub.method, stub.uri_text, stub.version) == ("REGISTER", "sip:example.com", "SIP/2.0")
    assert stub.headers() == [] and stub.body == b""
    # The original is untouched.
    assert req.get("Authorization") is not None and req.body == b"body"


def test_a_frozen_response_is_its_bytes() -> None:
    req = parse(_KEPT)
    assert isinstance(req, Request)
    resp = make_response(req, 200, "OK", [("Contact", "<sip:a@192.0.2.1>")], b"x", to_tag="t")
    wire_form = resp.to_bytes()
    resp.freeze()
    assert resp.to_bytes() == wire_form and resp.to_bytes() is resp.to_bytes()
    assert resp.headers() == [] and resp.body == b"" and resp.get("Contact") is None
    assert (resp.status, resp.reason) == (200, "OK")


def test_parsed_requests_share_their_method_and_version_strings() -> None:
    a, b = parse(_KEPT), parse(_KEPT.replace(b"kept", b"other"))
    assert isinstance(a, Request) and isinstance(b, Request)
    assert a.method is b.method and a.version is b.version
    odd = parse(_KEPT.replace(b"REGISTER sip", b"FOO sip").replace(b"7 REGISTER", b"7 FOO"))
    assert isinstance(odd, Request) and odd.method == "FOO"


def test_fields_added_by_code_share_their_key_and_name() -> None:
    req = parse(_KEPT)
    assert isinstance(req, Request)
    a = make_response(req, 200, headers=[("contact", "<sip:a@192.0.2.1>"), ("Server", "x")])
    b = make_response(req, 200, headers=[("CONTACT", "<sip:b@192.0.2.1>"), ("m", "<sip:c@h>")])
    # The fields are flat: key, name, value, key, ...
    assert a._headers[-6:-4] == ["contact", "Contact"]
    assert a._headers[-6] is b._headers[-6] is b._headers[-3]
    assert a._headers[-5] is b._headers[-2]
    # Names outside the table are kept as written, as before.
    c = make_response(req, 200, headers=[("X-Thing", "1"), ("ACCEPT-CONTACT", "*")])
    assert c._headers[-6:-4] + c._headers[-3:-1] == [
        "x-thing", "X-Thing", "accept-contact", "ACCEPT-CONTACT"]

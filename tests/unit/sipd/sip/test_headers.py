"""Header field values (sipd.sip.headers): Via, name-addr, CSeq, lists, params."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipd.sip import headers as headers_module
from sipd.sip.errors import ParseError
from sipd.sip.headers import (
    Address,
    CSeq,
    Via,
    format_header_params,
    is_token,
    parse_address,
    parse_cseq,
    parse_params,
    parse_token_list,
    parse_uint,
    parse_via,
    quote,
    split_list,
    unquote,
)
from sipd.sip.uri import AbsoluteURI, SipURI, TelURI


@pytest.mark.parametrize(
    ("value", "items"),
    [
        ("", []),
        ("  a  ", ["a"]),
        ("a, b,c", ["a", "b", "c"]),
        ("a,,b, ,", ["a", "b"]),
        ('"x, y" <sip:a@b>, <sip:c@d>', ['"x, y" <sip:a@b>', "<sip:c@d>"]),
        ('<sip:a@b;x="1,2">;p="3,4", <sip:c,d@e>', ['<sip:a@b;x="1,2">;p="3,4"', "<sip:c,d@e>"]),
        ('"a \\" , b" <sip:a@b>, x', ['"a \\" , b" <sip:a@b>', "x"]),
        ('<sip:a@b>;+sip.instance="<urn:uuid:1>", <sip:c@d>', ['<sip:a@b>;+sip.instance="<urn:uuid:1>"', "<sip:c@d>"]),
    ],
)
def test_split_list(value: str, items: list[str]) -> None:
    assert split_list(value) == items


def test_split_list_unterminated_quote() -> None:
    with pytest.raises(ParseError, match="Unterminated quoted string"):
        split_list('"a, b')


@pytest.mark.parametrize(
    ("text", "params"),
    [
        ("", ()),
        (";lr", (("lr", None),)),
        (" ; tag = abc ;x", (("tag", "abc"), ("x", None))),
        (';+sip.instance="<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>";reg-id=1',
         (("+sip.instance", '"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"'), ("reg-id", "1"))),
        (';q="a;b,c=d";e', (("q", '"a;b,c=d"'), ("e", None))),
        (';x="\\"quoted\\""', (("x", '"\\"quoted\\""'),)),
        (";received=2001:db8::10;maddr=[2001:db8::1]", (("received", "2001:db8::10"), ("maddr", "[2001:db8::1]"))),
    ],
)
def test_parse_params(text: str, params: tuple[tuple[str, str | None], ...]) -> None:
    got, end = parse_params(text)
    assert got == params and end == len(text)
    assert parse_params(format_header_params(got))[0] == got


def test_parse_params_stops_at_a_comma_and_rejects_junk() -> None:
    assert parse_params(";a=1, next") == ((("a", "1"),), 4)
    for bad, reason in [(";", "Bad header parameter"), (";=1", "Bad header parameter"),
                        (";a=", "Bad header parameter value"), (';a="open', "Bad header parameter value"),
                        (";a;;b", "Bad header parameter"), (";a=b=c", "Bad header parameter value")]:
        with pytest.raises(ParseError) as info:
            parse_params(bad)
        assert info.value.reason == reason, bad


def test_quote_unquote() -> None:
    assert quote('a "b" \\c') == '"a \\"b\\" \\\\c"'
    assert unquote(quote('a "b" \\c')) == 'a "b" \\c'
    assert unquote("plain") == "plain" and unquote('"x"') == "x"
    assert is_token("abc-1.!%*_+`'~") and not is_token("a b") and not is_token("")


# --------------------------------------------------------------------- Via

VIAS: list[tuple[str, Via]] = [
    ("SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bK776asdhds",
     Via("UDP", "pc33.atlanta.com", None, (("branch", "z9hG4bK776asdhds"),))),
    ("SIP/2.0/tcp 192.0.2.1:5060;rport;branch=z9hG4bK1",
     Via("TCP", "192.0.2.1", 5060, (("rport", None), ("branch", "z9hG4bK1")))),
    ("SIP / 2.0 / UDP   first.example.com: 4000;ttl=16 ;maddr=224.2.0.1 ;branch=z9hG4bKa7c6a8dlze.1",
     Via("UDP", "first.example.com", 4000, (("ttl", "16"), ("maddr", "224.2.0.1"),
                                             ("branch", "z9hG4bKa7c6a8dlze.1")))),
    ("SIP/2.0/TCP [2001:db8::9:1]:5061;received=2001:db8::10;branch=z9hG4bKv6",
     Via("TCP", "[2001:db8::9:1]", 5061, (("received", "2001:db8::10"), ("branch", "z9hG4bKv6")))),
    ("SIP/2.0/UDP h;received=[2001:db8::10]", Via("UDP", "h", None, (("received", "[2001:db8::10]"),))),
    ("SIP/2.0/UDP h;received=host.example.com", Via("UDP", "h", None, (("received", "host.example.com"),))),
    ("sip/2.0/UNKNOWN HOST.Example.COM;x=\"y;z\"", Via("UNKNOWN", "host.example.com", None, (("x", '"y;z"'),))),
]


@pytest.mark.parametrize(("text", "via"), VIAS, ids=[v[0][:40] for v in VIAS])
def test_parse_via(text: str, via: Via) -> None:
    got = parse_via(text)
    assert got == via
    assert parse_via(str(got)) == got


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "Bad Via header"),
        ("SIP/2.0/UDP", "Bad Via header"),
        ("SIP/2.0 UDP host", "Bad Via header"),
        ("SIP/2.0/UDP ;branch=x", "Bad Via sent-by"),
        ("SIP/2.0/UDP host:99999", "Bad Via sent-by port"),
        ("SIP/2.0/UDP [::1", "Bad Via sent-by"),
        ("SIP/2.0/UDP [1:2:3]", "Bad Via sent-by host"),
        ("SIP/2.0/UDP 300.1.1.1", "Bad Via"),
        ("XIP/2.0/UDP host", "protocol is not SIP"),
        ("SIP/2.0/UDP host;branch", "Bad Via branch"),
        ("SIP/2.0/UDP host;branch=\"q\"", "Bad Via branch"),
        ("SIP/2.0/UDP host;received=1.2.3.999", "Bad Via received"),
        ("SIP/2.0/UDP host;received", "Bad Via received"),
        ("SIP/2.0/UDP host;rport=0", "Bad Via rport"),
        ("SIP/2.0/UDP host;rport=x", "Bad Via rport"),
        ("SIP/2.0/UDP host;ttl=256", "Bad Via ttl"),
        ("SIP/2.0/UDP host;maddr=not_a_host", "Bad Via maddr"),
        ("SIP/2.0/UDP host;;", "Bad Via parameter"),
        ("SIP/2.0/UDP host junk", "Bad Via header"),
    ],
)
def test_bad_via(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_via(text)
    assert reason in info.value.reason


def _via_or_reason(read: Callable[[], Via | None]) -> object:
    try:
        return read()
    except ParseError as exc:
        return exc.reason


def _mostly(common: str, *others: str) -> st.SearchStrategy[str]:
    # Half the time the usual spelling, so that the rest varies around it.
    return st.one_of(st.just(common), st.sampled_from(others))


_VIA_SOUP = st.tuples(
    _mostly("SIP/2.0/", "sip/2.0/", "SIP/3.0/", "SIP / 2.0 / ", "XIP/2.0/", ""),
    _mostly("UDP", "udp", "TCP", "Ws", "x/y", "", "UDP\t"),
    _mostly(" ", "  ", "\t", ""),
    st.sampled_from(["127.0.0.1", "pc33.example.com", "Host.Example.COM", "1.2.3.4.example.com",
                     "300.1.1.1", "[::1]", "[1:2:3]", "a_b", "a..b", "-a", "h", ""]),
    st.sampled_from(["", ":5060", ":65535", ":65536", ":0", ":123456", ":", ": 5060", ":x"]),
    st.lists(st.sampled_from([
        ";branch=z9hG4bK-1-1", ";rport", ";rport=5060", ";rport=0", ";received=192.0.2.1",
        ";received=[2001:db8::1]", ";received=1.2.3.999", ";ttl=16", ";ttl=300",
        ";maddr=224.2.0.1", ";maddr=a_b", ";x=\"q;r\"", ";a=", ";;", "; b=c", ";b=c d",
        ";Branch=z9hG4bKup", ";x=[", ",", " ", "é",
    ]), max_size=5).map("".join),
).map("".join)


@settings(max_examples=1000)
@given(_VIA_SOUP)
def test_a_via_as_phones_spell_it_reads_as_the_pattern_reads_it(text: str) -> None:
    # The quick reading gives the same Via, or the same refusal; the rest
    # is the pattern's.
    quick = _via_or_reason(lambda: headers_module._via_as_sent(text))
    if quick is not None:
        assert quick == _via_or_reason(lambda: headers_module._via_by_pattern(text))


@pytest.mark.parametrize("text", [
    "SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-1-1",  # sipp
    "SIP/2.0/UDP 192.0.2.7:5060;rport;branch=z9hG4bK.aB3xY",  # rport asked for
    "SIP/2.0/TCP pc33.example.com;branch=z9hG4bK776asdhds;received=192.0.2.1;rport=5061",
])
def test_the_vias_phones_send_are_read_quickly(text: str) -> None:
    quick = headers_module._via_as_sent(text)
    assert quick is not None
    assert quick == headers_module._via_by_pattern(text)


def test_via_changes() -> None:
    via = parse_via("SIP/2.0/UDP 192.0.2.1;rport;branch=z9hG4bK1")
    stamped = via.with_param("rport", "5062").with_param("received", "203.0.113.7")
    assert str(stamped) == "SIP/2.0/UDP 192.0.2.1;rport=5062;branch=z9hG4bK1;received=203.0.113.7"
    assert stamped.branch == "z9hG4bK1" and stamped.sent_by == "192.0.2.1"
    assert str(stamped.without_param("RPORT")) == "SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;received=203.0.113.7"
    assert via.param("rport") is None and via.has_param("rport")


# --------------------------------------------------------------- addresses

ADDRESSES: list[tuple[str, str | None, str, tuple[tuple[str, str | None], ...]]] = [
    # text, display as written, URI, params
    ("<sip:a@b>", None, "sip:a@b", ()),
    ('"Alice" <sip:alice@atlanta.com>;tag=1928301774', '"Alice"', "sip:alice@atlanta.com",
     (("tag", "1928301774"),)),
    ("Bob <sips:bob@biloxi.com> ;tag=a48s", "Bob", "sips:bob@biloxi.com", (("tag", "a48s"),)),
    ("A.  G. Bell  <sip:agb@bell-telephone.com>", "A. G. Bell", "sip:agb@bell-telephone.com", ()),
    ("caller<sip:caller@example.com>;tag=323", "caller", "sip:caller@example.com", (("tag", "323"),)),
    ('""<sip:a@b>', '""', "sip:a@b", ()),
    ("sip:+12125551212@server.phone2net.com;tag=887s", None, "sip:+12125551212@server.phone2net.com",
     (("tag", "887s"),)),
    ("sip:a@b ; tag = x", None, "sip:a@b", (("tag", "x"),)),
    ('sip:a@b;p="<not a name-addr>"', None, "sip:a@b", (("p", '"<not a name-addr>"'),)),
    ("<sip:a@b;lr>;expires=60;q=0.7", None, "sip:a@b;lr", (("expires", "60"), ("q", "0.7"))),
    ('"Mr. Watson" <mailto:watson@bell-telephone.com> ;q=0.1', '"Mr. Watson"',
     "mailto:watson@bell-telephone.com", (("q", "0.1"),)),
    ("<tel:+1-201-555-0123>", None, "tel:+1-201-555-0123", ()),
    ("isbn:2983792873", None, "isbn:2983792873", ()),
    ("J\u00fcrgen <sip:j@example.com>", "J\u00fcrgen", "sip:j@example.com", ()),
]


@pytest.mark.parametrize(("text", "display", "uri", "params"), ADDRESSES, ids=[a[0][:40] for a in ADDRESSES])
def test_parse_address(text: str, display: str | None, uri: str,
                       params: tuple[tuple[str, str | None], ...]) -> None:
    addr = parse_address(text, "To header")
    assert addr.display == display and str(addr.uri) == uri and addr.params == params
    assert parse_address(str(addr)) == addr


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "Bad To header: empty"),
        ("   ", "Bad To header: empty"),
        ('"Mr. J. User <sip:j.user@example.com>', "Bad To header: unterminated quoted string"),
        ('"a\x01" <sip:a@b>', "Bad To header: bad character in quoted string"),
        ('"Alice" sip:a@b', "Bad To header: display name without <URI>"),
        ("Bell, Alexander <sip:a.g.bell@example.com>", "Bad To header: bad display name"),
        ("<sip:a@b", "Bad To header: missing '>'"),
        ("< sip:t.watson@example.org >", "Bad To header: whitespace inside <URI>"),
        ("<sip:a@b <sip:c@d>>", "Bad To header: bad <URI>"),
        ("sip:user@example.com?Route=%3Csip:sip.example.com%3E", "must be enclosed in <>"),
        ("<sip:a@b>;tag=", "Bad To header parameter value"),
        ("<sip:a@b> junk", "Bad To header"),
        ("<sip:a@300.0.0.1>", "Bad To header: Bad host in URI"),
        ("<>", "Bad To header: Bad URI: no scheme"),
    ],
)
def test_bad_address(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_address(text, "To header")
    assert reason in info.value.reason
    assert info.value.status == 400


def test_address_helpers_keep_quoted_params_intact() -> None:
    text = '"Jan" <sip:jan@192.0.2.10;ob>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000B82A1B2C3>";reg-id=1'
    addr = parse_address(text)
    assert str(addr) == text  # echoed back in a 200 OK exactly as received
    assert addr.display_text == "Jan" and addr.param("+SIP.INSTANCE") is not None
    assert unquote(addr.param("+sip.instance") or "") == "<urn:uuid:00000000-0000-1000-8000-000B82A1B2C3>"
    assert isinstance(addr.sip_uri, SipURI) and addr.sip_uri.has_param("ob")
    changed = addr.with_param("expires", "60").without_param("reg-id")
    assert str(changed).endswith(';+sip.instance="<urn:uuid:00000000-0000-1000-8000-000B82A1B2C3>";expires=60')
    assert Address(TelURI("1")).sip_uri is None and Address(AbsoluteURI("urn", "x")).tag is None


def test_long_display_names_fail_fast() -> None:
    # A display name pattern that let "(word LWS)*" split one long word in
    # every possible way took seconds at 24 characters (found by hypothesis).
    for text in ["a" * 20000 + "!", "a " * 10000 + "!", '"' + "a" * 20000, "a" * 20000 + " <sip:x@y" + ";p" * 5000]:
        with pytest.raises(ParseError):
            parse_address(text)


# ------------------------------------------------------------ CSeq etc.


def test_cseq() -> None:
    assert parse_cseq("4711 INVITE") == CSeq(4711, "INVITE")
    assert parse_cseq(" 0009\tINVITE ") == CSeq(9, "INVITE")
    assert parse_cseq("4294967295 ACK") == CSeq(2**32 - 1, "ACK")
    assert str(CSeq(1, "BYE")) == "1 BYE"
    for bad in ["", "1", "INVITE", "1INVITE", "-1 INVITE", "1 INV ITE", "1 <INVITE>"]:
        with pytest.raises(ParseError, match="Bad CSeq header"):
            parse_cseq(bad)
    for big in ["4294967296 INVITE", "36893488147419103232 REGISTER", "9" * 5000 + " INVITE"]:
        with pytest.raises(ParseError, match="sequence number too large"):
            parse_cseq(big)


def test_uint() -> None:
    assert parse_uint(" 70 ", "Max-Forwards", 255) == 70
    assert parse_uint("0000000000000000000042", "Expires") == 42
    for bad in ["", "-1", "+1", "1.5", "٣", "0x10", "1 2"]:
        with pytest.raises(ParseError, match="Bad Expires header"):
            parse_uint(bad, "Expires")
    for big in ["4294967296", "9" * 10000]:
        with pytest.raises(ParseError, match="Bad Expires: value too large"):
            parse_uint(big, "Expires")


def test_token_lists() -> None:
    assert parse_token_list("100rel, timer ,path", "Supported") == ["100rel", "timer", "path"]
    assert parse_token_list("a,,b", "Supported") == ["a", "b"]
    assert parse_token_list("", "Supported") == []
    with pytest.raises(ParseError, match="Bad Require header"):
        parse_token_list("foo, b@r", "Require")


def test_fast_constructors_match_the_dataclasses() -> None:
    assert headers_module._VIA_FIELDS == tuple(f.name for f in dataclasses.fields(Via))
    assert headers_module._ADDRESS_FIELDS == tuple(f.name for f in dataclasses.fields(Address))
    via_args = ("UDP", "h", 5060, (("branch", "z9hG4bK1"),), "SIP/2.0")
    assert headers_module._via(*via_args) == Via(*via_args)
    uri = SipURI("sip", "h")
    assert headers_module._address(uri, '"x"', ()) == Address(uri, '"x"', ())


# ------------------------------------------------------------------ remembered answers

_ADDRESSES = [
    '"Alice" <sip:alice@sip.test;transport=tcp>;tag=a1',
    "<sip:bob@192.0.2.20:5070;ob>;expires=60;+sip.instance=\"<urn:uuid:1>\"",
    "sip:carol@sip.test;tag=x",
    "<tel:+15551234;phone-context=sip.test>",
    "Bob Smith <sips:bob@[2001:db8::1]:5061>",
]


@pytest.mark.parametrize("text", _ADDRESSES)
def test_a_remembered_address_is_what_parsing_gives(text: str) -> None:
    """The same immutable answer as a parse of the text, and the same object again."""
    headers_module._parse_address_cached.cache_clear()
    first = parse_address(text, "To header")
    assert first == headers_module._parse_address(text, "To header")
    assert parse_address(text, "From header") == first
    assert parse_address(text, "To header") is first
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.params = ()  # type: ignore[misc]


def test_a_bad_address_fails_each_time_with_its_field_named() -> None:
    headers_module._parse_address_cached.cache_clear()
    for what in ("To header", "From header"):
        with pytest.raises(ParseError, match=f"Bad {what}"):
            parse_address("<sip:bob@sip.test", what)
    assert headers_module._parse_address_cached.cache_info().currsize == 0


def test_remembered_addresses_are_bounded_and_long_ones_not_kept() -> None:
    cached = headers_module._parse_address_cached
    cached.cache_clear()
    for n in range(headers_module.PARSED_ADDRESSES + 100):
        parse_address(f"<sip:u{n}@sip.test>;tag={n}")
    assert cached.cache_info().currsize == headers_module.PARSED_ADDRESSES
    cached.cache_clear()
    long = "<sip:bob@sip.test>;x=" + "a" * headers_module.CACHED_TEXT_MAX
    assert parse_address(long).uri == parse_address("<sip:bob@sip.test>").uri
    assert cached.cache_info().currsize == 1  # the short one only

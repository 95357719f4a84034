"""URIs (sipd.sip.uri): RFC 3261 §19.1/§25.1, RFC 3966 tel, other schemes."""

from __future__ import annotations

import dataclasses

import pytest

from sipd.sip import uri as uri_module
from sipd.sip.errors import ParseError
from sipd.sip.uri import (
    AbsoluteURI,
    SipURI,
    TelURI,
    is_ipv4,
    is_ipv6,
    parse_sip_uri,
    parse_uri,
    parse_uri_params,
    split_hostport,
    valid_host,
)

VALID_SIP: list[tuple[str, dict[str, object]]] = [
    ("sip:example.com", {"host": "example.com", "user": None, "port": None}),
    ("sip:alice@example.com", {"user": "alice", "host": "example.com"}),
    ("SIP:Alice@EXAMPLE.com:5060", {"scheme": "sip", "user": "Alice", "host": "example.com", "port": 5060}),
    ("sips:bob@192.0.2.4:5061", {"scheme": "sips", "host": "192.0.2.4", "port": 5061}),
    ("sip:alice:secret@example.com", {"user": "alice", "password": "secret"}),
    ("sip:alice:@example.com", {"password": ""}),
    ("sip:+1-212-555-1212:1234@gateway.com;user=phone", {"user": "+1-212-555-1212", "password": "1234",
                                                          "params": (("user", "phone"),)}),
    ("sip:[2001:db8::1]", {"host": "[2001:db8::1]"}),
    ("sip:u@[2001:DB8::1]:5070;transport=tcp", {"host": "[2001:db8::1]", "port": 5070,
                                                "params": (("transport", "tcp"),)}),
    ("sip:u@[::ffff:192.0.2.1]", {"host": "[::ffff:192.0.2.1]"}),
    ("sip:proxy.example.com;lr", {"params": (("lr", None),)}),
    ("sip:a@b;maddr=239.255.255.1;ttl=15", {"params": (("maddr", "239.255.255.1"), ("ttl", "15"))}),
    ("sip:%61lice@example.com", {"user": "%61lice"}),
    ("sip:user;par=u%40example.net@example.com", {"user": "user;par=u%40example.net", "params": ()}),
    ("sip:a@b?subject=project%20x&priority=urgent", {"headers": "subject=project%20x&priority=urgent"}),
    ("sip:a@b;%6C%72;n%61me=v%61lue%25%34%31", {"params": (("%6C%72", None), ("n%61me", "v%61lue%25%34%31"))}),
    ("sip:a@host-with-dash.example.com.", {"host": "host-with-dash.example.com."}),
    ("sip:a@1.example.com", {"host": "1.example.com"}),
    ("sip:a@255.255.255.255:0", {"host": "255.255.255.255", "port": 0}),
]


@pytest.mark.parametrize(("text", "fields"), VALID_SIP, ids=[v[0] for v in VALID_SIP])
def test_valid_sip_uris(text: str, fields: dict[str, object]) -> None:
    uri = parse_uri(text)
    assert isinstance(uri, SipURI)
    for name, value in fields.items():
        assert getattr(uri, name) == value, name
    # str() gives a URI that parses to the same value
    assert parse_uri(str(uri)) == uri


INVALID: list[tuple[str, str]] = [
    ("example.com", "no scheme"),
    ("<sip:a@b>", "enclosed in <>"),
    ("sip:", "Bad host in URI"),
    ("sip:a@", "Bad host in URI"),
    ("sip:a b@example.com", "Bad user part"),
    ("sip:a@b c", "Bad"),
    ("sip:a@exa_mple.com", "Bad host"),
    ("sip:a@-bad.com", "Bad host"),
    ("sip:a@bad-.com", "Bad host"),
    ("sip:a@1.2.3.256", "Bad host"),
    ("sip:a@example.123", "Bad host"),
    ("sip:a@[2001:db8::1", "Unterminated IPv6 reference"),
    ("sip:a@[2001:db8:::1]", "Bad IPv6 host"),
    ("sip:a@[192.0.2.1]", "Bad IPv6 host"),
    ("sip:a@b:99999", "Bad port"),
    ("sip:a@b:123456", "Bad port"),
    ("sip:a@b:", "Bad"),
    ("sip:a@b;=x", "Bad URI parameter"),
    ("sip:a@b;x=", "Bad URI parameter value"),
    ("sip:a@b;x=\"q\"", "Bad URI parameter value"),
    ("sip:a@b?x=<y>", "Bad URI headers"),
    ("sip:a%zz@b", "Bad user part"),
    ("sip:a:p w@b", "Bad password"),
    ("tel:", "Bad tel URI"),
    ("tel:++12", "Bad tel URI"),
    ("1sip:a@b", "Bad URI scheme"),
    ("urn:", "Bad URI"),
    ("mailto:a b@c", "Bad URI"),
    ("http://x/\"", "Bad URI"),
]


@pytest.mark.parametrize(("text", "reason"), INVALID, ids=[v[0] for v in INVALID])
def test_invalid_uris(text: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_uri(text)
    assert reason in info.value.reason
    assert info.value.status == 400


def test_tel_uri() -> None:
    uri = parse_uri("tel:+1-201-555-0123;phone-context=example.com;ext=42")
    assert isinstance(uri, TelURI)
    assert uri.number == "+1-201-555-0123" and uri.scheme == "tel"
    assert uri.param("EXT") == "42"
    assert str(uri) == "tel:+1-201-555-0123;phone-context=example.com;ext=42"
    assert parse_uri("TEL:7042") == TelURI("7042")


@pytest.mark.parametrize(
    ("text", "scheme", "rest"),
    [
        ("urn:service:sos", "urn", "service:sos"),
        ("mailto:alice@example.com", "mailto", "alice@example.com"),
        ("soap.beep://192.0.2.103:3002", "soap.beep", "//192.0.2.103:3002"),
        ("nobodyKnowsThisScheme:totallyopaquecontent", "nobodyknowsthisscheme", "totallyopaquecontent"),
        ("http://[2001:db8::1]/a?b=c", "http", "//[2001:db8::1]/a?b=c"),
    ],
)
def test_other_schemes_are_absolute_uris(text: str, scheme: str, rest: str) -> None:
    uri = parse_uri(text)
    assert uri == AbsoluteURI(scheme, rest)
    assert str(uri) == f"{scheme}:{rest}"
    with pytest.raises(ParseError, match="Not a SIP URI"):
        parse_sip_uri(text)


def test_sip_uri_helpers() -> None:
    uri = parse_sip_uri("sips:bob@example.com:5061;Transport=TLS;lr")
    assert uri.secure and uri.transport == "tls" and uri.hostport == "example.com:5061"
    assert uri.has_param("LR") and uri.param("lr") is None
    changed = uri.with_params(transport="tcp", maddr="192.0.2.1")
    assert str(changed) == "sips:bob@example.com:5061;lr;transport=tcp;maddr=192.0.2.1"
    assert str(changed.without_params("maddr", "lr")) == "sips:bob@example.com:5061;transport=tcp"
    with pytest.raises(dataclasses.FrozenInstanceError):
        uri.host = "other"  # type: ignore[misc]
    assert hash(uri) == hash(parse_sip_uri("sips:bob@example.com:5061;Transport=TLS;lr"))


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp", True),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5", True),
        ("sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
         "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com", True),
        ("sip:alice@atlanta.com?subject=project%20x&priority=urgent",
         "sip:alice@atlanta.com?priority=urgent&subject=project%20x", True),
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP", False),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060", False),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp", False),
        ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off", False),
        ("sip:a@b", "sips:a@b", False),
    ],
)
def test_rfc3261_19_1_4_comparison(a: str, b: str, same: bool) -> None:
    # The examples of RFC 3261 §19.1.4.
    ua, ub = parse_sip_uri(a), parse_sip_uri(b)
    assert ua.equivalent(ub) is same and ub.equivalent(ua) is same
    assert not ua.equivalent(TelURI("1"))


def test_host_helpers() -> None:
    assert is_ipv4("192.0.2.1") and not is_ipv4("192.0.2.256") and not is_ipv4("1.2.3")
    assert is_ipv6("2001:db8::10") and is_ipv6("::1") and not is_ipv6("2001:db8:::1") and not is_ipv6("g::1")
    assert valid_host("[::1]") and valid_host("example.com") and valid_host("10.0.0.1")
    assert not valid_host("[::1") and not valid_host("300.0.0.1") and not valid_host("a_b")
    assert split_hostport("[::1]:5060") == ("[::1]", 5060)
    assert split_hostport("host") == ("host", None)
    assert split_hostport("host:1") == ("host", 1)
    for bad in ("[::1]x", "host:", "host:65536", "[::1"):
        with pytest.raises(ParseError):
            split_hostport(bad)
    assert parse_uri_params(";a;b=c") == (("a", None), ("b", "c"))
    assert parse_uri_params("") == ()


def test_fast_constructor_matches_the_dataclass() -> None:
    # The parser's slot-storing constructor must cover every field, in order.
    assert uri_module._SIP_URI_FIELDS == tuple(f.name for f in dataclasses.fields(SipURI))
    args = ("sip", "h", "u", "p", 5060, (("lr", None),), "x=y")
    assert uri_module._sip_uri(*args) == SipURI(*args)


def test_long_inputs_fail_fast() -> None:
    # Patterns written so that failing matches cannot backtrack for ages.
    for text in ["sip:" + "a" * 50000 + "!", "sip:a@" + "a-" * 20000, "sip:a@b" + ";x" * 20000 + "=",
                 "sip:" + "%41" * 20000 + "@", "sip:a@" + "a." * 20000 + "1"]:
        with pytest.raises(ParseError):
            parse_uri(text)


@pytest.mark.parametrize("text", [
    "sip:alice@sip.test;transport=tcp", "sips:[2001:db8::1]:5061", "tel:+15551234;ext=1",
    "mailto:alice@example.com", "SIP:Bob@SIP.TEST",
])
def test_a_remembered_uri_is_what_parsing_gives(text: str) -> None:
    uri_module._parse_uri_cached.cache_clear()
    first = parse_uri(text)
    assert first == uri_module._parse_uri(text)
    assert parse_uri(text) is first


def test_bad_and_long_uris_are_not_remembered() -> None:
    cached = uri_module._parse_uri_cached
    cached.cache_clear()
    for _ in range(2):
        with pytest.raises(ParseError):
            parse_uri("sip:")
    long = "sip:bob@sip.test;x=" + "a" * uri_module.CACHED_URI_MAX
    assert isinstance(parse_uri(long), SipURI)
    assert cached.cache_info().currsize == 0
    for n in range(uri_module.PARSED_URIS + 10):
        parse_uri(f"sip:u{n}@sip.test")
    assert cached.cache_info().currsize == uri_module.PARSED_URIS

"""Digest authentication: RFC known answers, parser vectors, nonces, the flow."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipd.sip import digest
from sipd.sip.digest import (
    AuthResult,
    Credentials,
    NonceCounts,
    NonceManager,
    NonceStatus,
    NotDigest,
    challenge_value,
    challenges,
    check_credentials,
    ha1,
    parse_credentials,
    response,
    verify,
)
from sipd.sip.errors import ParseError

SECRET = b"s" * 32
SECRET2 = b"t" * 32
SECRET3 = b"u" * 32
REALM = "example.org"


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------ RFC known answers

RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_REALM = "http-auth@example.org"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_ANSWERS = {
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_rfc7616_section_3_9_1_response(algorithm: str) -> None:
    key = ha1("Mufasa", RFC7616_REALM, "Circle of Life", algorithm)
    got = response(
        key,
        RFC7616_NONCE,
        "GET",
        "/dir/index.html",
        algorithm,
        qop="auth",
        nc="00000001",
        cnonce=RFC7616_CNONCE,
    )
    assert got == RFC7616_ANSWERS[algorithm]


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_rfc7616_section_3_9_1_header_parses_and_verifies(algorithm: str) -> None:
    header = (
        'Digest username="Mufasa",\r\n'
        f'    realm="{RFC7616_REALM}",\r\n'
        '    uri="/dir/index.html",\r\n'
        f"    algorithm={algorithm},\r\n"
        f'    nonce="{RFC7616_NONCE}",\r\n'
        "    nc=00000001,\r\n"
        f'    cnonce="{RFC7616_CNONCE}",\r\n'
        "    qop=auth,\r\n"
        f'    response="{RFC7616_ANSWERS[algorithm]}",\r\n'
        f'    opaque="{RFC7616_OPAQUE}"'
    )
    creds = parse_credentials(header)
    assert creds == Credentials(
        username="Mufasa",
        realm=RFC7616_REALM,
        nonce=RFC7616_NONCE,
        uri="/dir/index.html",
        response=RFC7616_ANSWERS[algorithm],
        algorithm=algorithm,
        cnonce=RFC7616_CNONCE,
        opaque=RFC7616_OPAQUE,
        qop="auth",
        nc="00000001",
    )
    assert creds.nonce_count == 1
    key = ha1("Mufasa", RFC7616_REALM, "Circle of Life", algorithm)
    assert verify(creds, "GET", key)
    assert not verify(creds, "POST", key)
    assert not verify(creds, "GET", ha1("Mufasa", RFC7616_REALM, "circle of life", algorithm))


def test_rfc2617_section_3_5_example() -> None:
    key = ha1("Mufasa", "testrealm@host.com", "Circle Of Life")
    got = response(
        key,
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        "GET",
        "/dir/index.html",
        "MD5",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert got == "6629fae49393a05397450978507c4ef1"


# SIP REGISTER, computed here from the RFC formulas with hashlib only.
REG = {
    "user": "jan",
    "password": "se:cr\u00e9t",
    "method": "REGISTER",
    "uri": "sip:example.org;transport=tcp",
    "nonce": "d2hhdGV2ZXI",
    "cnonce": "a,b c",
    "nc": "0000000a",
}


def test_sip_register_md5_qop_auth() -> None:
    r = REG
    expected_ha1 = md5(f"{r['user']}:{REALM}:{r['password']}")
    ha2 = md5(f"{r['method']}:{r['uri']}")
    expected = md5(f"{expected_ha1}:{r['nonce']}:{r['nc']}:{r['cnonce']}:auth:{ha2}")
    assert ha1(r["user"], REALM, r["password"]) == expected_ha1
    got = response(
        expected_ha1, r["nonce"], r["method"], r["uri"], "MD5", "auth", r["nc"], r["cnonce"]
    )
    assert got == expected


def test_sip_register_sha256_qop_auth() -> None:
    r = REG
    expected_ha1 = sha256(f"{r['user']}:{REALM}:{r['password']}")
    ha2 = sha256(f"{r['method']}:{r['uri']}")
    expected = sha256(f"{expected_ha1}:{r['nonce']}:{r['nc']}:{r['cnonce']}:auth:{ha2}")
    assert ha1(r["user"], REALM, r["password"], "SHA-256") == expected_ha1
    got = response(
        expected_ha1, r["nonce"], r["method"], r["uri"], "SHA-256", "auth", r["nc"], r["cnonce"]
    )
    assert got == expected


def test_rfc2069_form_without_qop() -> None:
    key = md5("jan:example.org:pw")
    expected = md5(f"{key}:abc:{md5('REGISTER:sip:example.org')}")
    assert response(key, "abc", "REGISTER", "sip:example.org") == expected


def test_auth_int_hashes_the_body() -> None:
    key = sha256("jan:example.org:pw")
    body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n"
    ha2 = sha256(f"INVITE:sip:bob@example.org:{hashlib.sha256(body).hexdigest()}")
    expected = sha256(f"{key}:n:00000001:c:auth-int:{ha2}")
    bh = digest.body_hash(body, "SHA-256")
    got = response(
        key, "n", "INVITE", "sip:bob@example.org", "SHA-256", "auth-int", "00000001", "c", bh
    )
    assert got == expected


@pytest.mark.parametrize(("algorithm", "h"), [("MD5-sess", md5), ("SHA-256-sess", sha256)])
def test_sess_variants(algorithm: str, h: Callable[[str], str]) -> None:
    key = h("jan:example.org:pw")
    session_key = h(f"{key}:n:c")
    expected = h(f"{session_key}:n:00000001:c:auth:{h('REGISTER:sip:example.org')}")
    got = response(key, "n", "REGISTER", "sip:example.org", algorithm, "auth", "00000001", "c")
    assert got == expected


def test_upper_case_ha1_is_hashed_as_lower_case() -> None:
    key = md5("jan:example.org:pw")
    args = ("n", "REGISTER", "sip:example.org", "MD5", "auth", "00000001", "c")
    assert response(key.upper(), *args) == response(key, *args)


def test_user_hash() -> None:
    assert digest.user_hash("jan", REALM) == sha256(f"jan:{REALM}")
    assert digest.user_hash("jan", REALM, "MD5") == md5(f"jan:{REALM}")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"algorithm": "SHA-512-256"},
        {"qop": "auth-conf", "nc": "00000001", "cnonce": "c"},
        {"qop": "auth"},
        {"qop": "auth-int", "nc": "00000001", "cnonce": "c"},
        {"algorithm": "MD5-sess"},
    ],
)
def test_response_refuses_missing_or_unknown_inputs(kwargs: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        response("0" * 32, "n", "REGISTER", "sip:x", **kwargs)


def test_algorithm_names() -> None:
    assert digest.normalize_algorithm("sha-256-SESS") == "SHA-256-sess"
    assert digest.base_algorithm("md5-sess") == "MD5"
    assert digest.hex_length("SHA-256-sess") == 64
    with pytest.raises(ValueError):
        digest.normalize_algorithm("SHA-1")


# ----------------------------------------------------------- parser

BASE = 'username="jan", realm="example.org", nonce="abc", uri="sip:example.org"'
R32 = "0123456789abcdef" * 2
R64 = R32 * 2


def creds_header(extra: str = "", response_hex: str = R32) -> str:
    return f'Digest {BASE}, response="{response_hex}"{extra}'


GOOD = [
    # (header value, expected fields)
    (creds_header(), {"username": "jan", "algorithm": "MD5", "qop": None, "nc": None}),
    # Scheme and parameter names are case-insensitive.
    (
        f'dIgEsT USERNAME="jan", Realm="example.org", NONCE="abc", Uri="sip:example.org", RESPONSE="{R32}"',
        {"username": "jan", "realm": "example.org"},
    ),
    # Commas, escaped quotes and backslashes inside quoted strings.
    (
        f'Digest username="a,b\\"c\\\\", realm="x, y", nonce="n,=", uri="sip:a@b;x=\\"1,2\\"", response="{R32}"',
        {"username": 'a,b"c\\', "realm": "x, y", "nonce": "n,=", "uri": 'sip:a@b;x="1,2"'},
    ),
    # Whitespace wherever LWS may go, tabs and a surviving fold.
    (
        f'Digest\t username =\t"jan" ,realm= "example.org",\r\n nonce = "abc" , uri="sip:example.org" , response="{R32}"  ',
        {"username": "jan", "nonce": "abc"},
    ),
    # Quoted qop and algorithm (common in the field), unquoted nc.
    (
        creds_header(', qop="AUTH", nc=0000000A, cnonce="xyz", algorithm="md5"'),
        {"qop": "auth", "nc": "0000000A", "cnonce": "xyz", "algorithm": "MD5"},
    ),
    (
        creds_header(", algorithm=sha-256, qop=auth-int, nc=00000002, cnonce=c", R64),
        {"algorithm": "SHA-256", "qop": "auth-int", "cnonce": "c", "response": R64},
    ),
    (
        creds_header(', algorithm=MD5-SESS, cnonce="c"'),
        {"algorithm": "MD5-sess", "cnonce": "c", "qop": None},
    ),
    # Upper-case response is normalised; opaque and unknown params kept.
    (
        creds_header(', opaque="", foo=Bar, X-Thing="a b"', R32.upper()),
        {"response": R32, "opaque": "", "params": (("foo", "Bar"), ("x-thing", "a b"))},
    ),
    # Empty list elements are skipped.
    (
        f'Digest ,{BASE},, response="{R32}",',
        {"username": "jan"},
    ),
    # Non-ASCII in quoted strings.
    (
        f'Digest username="j\u00e4n", realm="r", nonce="n", uri="u", response="{R32}"',
        {"username": "j\u00e4n"},
    ),
    (
        f'Digest username*=UTF-8\'\'J%C3%A4s%C3%B8n%20Doe, realm="r", nonce="n", uri="u", response="{R32}"',
        {"username": "J\u00e4s\u00f8n Doe"},
    ),
    (
        f'Digest username*=iso-8859-1\'en\'J%E4n, realm="r", nonce="n", uri="u", response="{R32}"',
        {"username": "J\u00e4n"},
    ),
    (
        f'Digest username="{sha256("jan:r").upper()}", userhash=TRUE, algorithm=SHA-256, realm="r", nonce="n", uri="u", response="{R64}"',
        {"username": sha256("jan:r"), "userhash": True},
    ),
    (creds_header(", userhash=false"), {"userhash": False}),
]


@pytest.mark.parametrize(("header", "fields"), GOOD)
def test_parse_good(header: str, fields: dict[str, object]) -> None:
    creds = parse_credentials(header)
    for name, value in fields.items():
        assert getattr(creds, name) == value, name
    assert parse_credentials(creds.to_header()) == creds


def test_param_lookup_is_case_insensitive() -> None:
    creds = parse_credentials(creds_header(", Foo=1"))
    assert creds.param("FOO") == "1"
    assert creds.param("bar") is None


BAD = [
    # (header value, what the reason must say)
    ("", "no scheme"),
    ("   ", "no scheme"),
    ('"Digest" x=1', "bad scheme"),
    ("Digest", "no parameters"),
    ("Digest   ", "no parameters"),
    ('Digest,username="a"', "no space after Digest"),
    (f'Digest realm="r", nonce="n", uri="u", response="{R32}"', "missing username"),
    (f'Digest username="a", nonce="n", uri="u", response="{R32}"', "missing realm"),
    (f'Digest username="a", realm="r", uri="u", response="{R32}"', "missing nonce"),
    (f'Digest username="a", realm="r", nonce="n", response="{R32}"', "missing uri"),
    ('Digest username="a", realm="r", nonce="n", uri="u"', "missing response"),
    (f'Digest username="", realm="r", nonce="n", uri="u", response="{R32}"', "empty username"),
    (f'Digest username="a", realm="r", nonce="", uri="u", response="{R32}"', "empty nonce"),
    (f'Digest username="a", realm="r", nonce="n", uri="", response="{R32}"', "empty uri"),
    (creds_header(', realm="again"'), "duplicate parameter 'realm'"),
    (creds_header(', REALM="again"'), "duplicate parameter 'realm'"),
    (creds_header(", qop=auth, cnonce=c, nc=0000001"), "nc is not 8 hex digits"),
    (creds_header(", qop=auth, cnonce=c, nc=0000000g"), "nc is not 8 hex digits"),
    (creds_header(", qop=auth, cnonce=c, nc=000000001"), "nc is not 8 hex digits"),
    (creds_header(", qop=auth, cnonce=c, nc=00000000"), "nc must start at 00000001"),
    (creds_header(response_hex=R32[:-1]), "response is not 32 hex digits for MD5"),
    (creds_header(response_hex=R32[:-1] + "g"), "response is not 32 hex digits for MD5"),
    (creds_header(", algorithm=SHA-256"), "response is not 64 hex digits for SHA-256"),
    (creds_header(response_hex=R64), "response is not 32 hex digits"),
    (creds_header(", algorithm=SHA-512-256"), "unsupported algorithm 'SHA-512-256'"),
    (creds_header(', algorithm="MD5 "'), "unsupported algorithm (unprintable)"),
    (creds_header(", qop=auth-conf, nc=00000001, cnonce=c"), "unsupported qop 'auth-conf'"),
    (creds_header(', qop="auth,auth-int", nc=00000001, cnonce=c'), "unsupported qop"),
    (creds_header(", qop=auth, cnonce=c"), "qop=auth without nc"),
    (creds_header(", qop=auth, nc=00000001"), "qop=auth without cnonce"),
    (creds_header(", nc=00000001"), "nc without qop"),
    (creds_header(", cnonce=c"), "cnonce without qop"),
    (creds_header(", algorithm=MD5-sess"), "MD5-sess without cnonce"),
    (creds_header(", userhash=yes"), "userhash must be true or false"),
    (creds_header(", userhash=true"), "userhash=true but username is not a hash"),
    (
        f'Digest username="a", username*=UTF-8\'\'a, realm="r", nonce="n", uri="u", response="{R32}"',
        "both username and username*",
    ),
    (
        f'Digest username*=UTF-16\'\'a, realm="r", nonce="n", uri="u", response="{R32}"',
        "bad username*",
    ),
    (
        f'Digest username*=UTF-8\'\'%C3, realm="r", nonce="n", uri="u", response="{R32}"',
        "bad username*",
    ),
    (
        f'Digest username*=UTF-8\'\'{"0" * 64}, userhash=true, algorithm=SHA-256, realm="r", nonce="n", uri="u", response="{R64}"',
        "username* with userhash=true",
    ),
    ('Digest username="jan, realm="r"', "',' expected after parameter 'username'"),
    ('Digest username="jan', "bad quoted string in parameter 'username'"),
    ('Digest username="ja\r\nn", realm="r"', "bad quoted string in parameter 'username'"),
    ('Digest username="ja\\\nn", realm="r"', "bad quoted string in parameter 'username'"),
    ('Digest username="a" realm="r"', "',' expected after parameter 'username'"),
    ("Digest username", "parameter 'username' has no value"),
    ('Digest username, realm="r"', "parameter 'username' has no value"),
    ("Digest username=", "bad value for parameter 'username'"),
    ("Digest username=<sip:a>", "bad value for parameter 'username'"),
    ("Digest =x", "parameter name expected"),
    ('Digest username="a",\r\nrealm="r"', "parameter name expected"),
]


@pytest.mark.parametrize(("header", "reason"), BAD)
def test_parse_bad(header: str, reason: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_credentials(header)
    assert not isinstance(info.value, NotDigest)
    assert info.value.status == 400
    assert info.value.reason.startswith("Bad Authorization header: ")
    assert reason in info.value.reason


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer abc.def", "NTLM", "AKA x=1"])
def test_other_schemes_are_reported_distinctly(header: str) -> None:
    with pytest.raises(NotDigest) as info:
        parse_credentials(header, "Proxy-Authorization")
    assert isinstance(info.value, ParseError)
    assert info.value.scheme == header.split()[0]
    assert info.value.reason.startswith("Bad Proxy-Authorization header: scheme")


def test_reason_names_the_header() -> None:
    with pytest.raises(ParseError, match="Bad Proxy-Authorization header: missing realm"):
        parse_credentials(
            f'Digest username="a", nonce="n", uri="u", response="{R32}"', "Proxy-Authorization"
        )


def _assert_clean_reason(exc: ParseError) -> None:
    # The reason ends up in a status line: nothing the client sent may break it.
    assert exc.reason.isprintable()
    assert exc.reason.isascii()
    assert len(exc.reason) < 120


@settings(max_examples=500)
@given(st.text())
def test_parse_raises_only_parse_error_on_any_text(text: str) -> None:
    try:
        parse_credentials(text)
    except ParseError as exc:
        _assert_clean_reason(exc)


_PARAM_NAMES = st.sampled_from(
    [
        "username",
        "realm",
        "nonce",
        "uri",
        "response",
        "algorithm",
        "cnonce",
        "opaque",
        "qop",
        "nc",
        "userhash",
        "username*",
        "USERNAME",
        "x",
    ]
)
_PARAM_VALUES = st.one_of(
    st.sampled_from(
        [
            "auth",
            "auth-int",
            "MD5",
            "sha-256-sess",
            "00000001",
            "00000000",
            "true",
            R32,
            R64,
            "UTF-8''a%20b",
            '""',
            '"a,b"',
            '"\\"',
            '"',
            "",
        ]
    ),
    st.text(max_size=12),
)
_SEPARATORS = st.sampled_from([", ", ",", " ", ",,", "\r\n ", "\t,", "=", ""])


@settings(max_examples=500)
@given(st.lists(st.tuples(_PARAM_NAMES, _PARAM_VALUES, st.booleans(), _SEPARATORS), max_size=12))
def test_parse_raises_only_parse_error_on_digest_soup(
    items: list[tuple[str, str, bool, str]],
) -> None:
    parts = []
    for name, value, quoted, sep in items:
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"' if quoted else value
        parts.append(f"{name}={text}{sep}")
    try:
        creds = parse_credentials("Digest " + "".join(parts))
    except ParseError as exc:
        _assert_clean_reason(exc)
    else:
        assert parse_credentials(creds.to_header()) == creds


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _params_or_reason(read: Callable[[], dict[str, str] | None]) -> object:
    try:
        return read()
    except ParseError as exc:
        return exc.reason


_LIST_SOUP = st.lists(
    st.one_of(
        st.tuples(_PARAM_NAMES, _PARAM_VALUES, st.booleans()).map(
            lambda p: f"{p[0]}={_quoted(p[1]) if p[2] else p[1]}"),
        st.sampled_from([",", " ", "\t", "\r\n ", "\r\n", "=", '"', "\\", "a b", "\x7f", "é"]),
    ),
    max_size=14,
).map("".join)


@settings(max_examples=1000)
@given(_LIST_SOUP)
def test_a_list_read_at_once_reads_as_one_read_a_parameter_at_a_time(text: str) -> None:
    # What the quick reading takes, the loop takes alike: the same
    # parameters, or the same duplicate refused. The rest is the loop's.
    at_once = _params_or_reason(lambda: digest._params_at_once(text, 0, ParseError))
    if at_once is not None:
        assert at_once == _params_or_reason(
            lambda: digest._params_one_by_one(text, 0, ParseError))


@pytest.mark.parametrize("text", [
    # sipp's spelling, then the one with a space after each comma.
    'username="u1",realm="r",cnonce="6b8b4567",nc=00000001,qop=auth,uri="sip:r",'
    'nonce="AB-_c",response="0123",algorithm=MD5',
    'username="u1", realm="r", nonce="n", uri="sip:r", response="0123", algorithm=MD5, '
    'qop=auth, cnonce="c", nc=00000001',
    'username="Jörg", realm="", uri="sip:a,b@r;x=\'y\'"',
])
def test_the_spellings_phones_send_are_read_at_once(text: str) -> None:
    params = digest._params_at_once(text, 0, ParseError)
    assert params is not None
    assert params == digest._params_one_by_one(text, 0, ParseError)


@pytest.mark.parametrize("text", [
    'username="a\\"b", realm="r"',  # a quoted-pair
    ", username=a",  # empty elements
    "username=a,",
    "username=a ,realm=r",  # space before a comma
    "username = a",  # around "="
    "username=a,\r\n realm=r",  # a fold
    'username="a\tb"',  # HT, a control character a quoted string may hold
    "username=a,\trealm=r",
    "username=a realm=r",  # malformed
    'username="a',
])
def test_other_spellings_are_left_to_the_loop(text: str) -> None:
    assert digest._params_at_once(text, 0, ParseError) is None


def test_a_duplicate_read_at_once_is_refused_as_the_loop_refuses_it() -> None:
    text = 'username="a", realm=r, Username="b"'
    for read in (digest._params_at_once, digest._params_one_by_one):
        with pytest.raises(ParseError, match="duplicate parameter 'username'"):
            read(text, 0, ParseError)


_TEXT = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=20)


@given(
    username=_TEXT.filter(bool),
    realm=_TEXT,
    nonce=_TEXT.filter(bool),
    uri=_TEXT.filter(bool),
    algorithm=st.sampled_from(["MD5", "SHA-256", "MD5-sess", "SHA-256-sess"]),
    qop=st.sampled_from([None, "auth", "auth-int"]),
    nc=st.integers(1, 0xFFFFFFFF),
    cnonce=_TEXT,
    opaque=st.none() | _TEXT,
)
def test_to_header_round_trips(
    username: str,
    realm: str,
    nonce: str,
    uri: str,
    algorithm: str,
    qop: str | None,
    nc: int,
    cnonce: str,
    opaque: str | None,
) -> None:
    sess = algorithm.endswith("-sess")
    creds = Credentials(
        username=username,
        realm=realm,
        nonce=nonce,
        uri=uri,
        response="a" * digest.hex_length(algorithm),
        algorithm=algorithm,
        cnonce=cnonce if qop is not None or sess else None,
        opaque=opaque,
        qop=qop,
        nc=f"{nc:08x}" if qop is not None else None,
    )
    assert parse_credentials(creds.to_header()) == creds


def test_to_header_refuses_control_characters() -> None:
    creds = Credentials("a\r\nVia: x", "r", "n", "u", R32)
    with pytest.raises(ValueError):
        creds.to_header()


# ----------------------------------------------------------- nonces


def test_nonce_valid_within_lifetime_and_stale_after() -> None:
    nm = NonceManager(SECRET, lifetime=300.0)
    nonce = nm.make(1000.0, REALM)
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", nonce)
    assert nm.check(nonce, 1000.0, REALM) is NonceStatus.VALID
    assert nm.check(nonce, 1300.0, REALM) is NonceStatus.VALID
    assert nm.check(nonce, 1300.01, REALM) is NonceStatus.STALE
    assert nm.check(nonce, 10_000_000.0, REALM) is NonceStatus.STALE
    assert nm.issued(nonce, REALM) == 1000.0


def test_nonce_from_the_future_is_stale_beyond_the_skew() -> None:
    nm = NonceManager(SECRET, max_skew=5.0)
    nonce = nm.make(1000.0, REALM)
    assert nm.check(nonce, 995.0, REALM) is NonceStatus.VALID
    assert nm.check(nonce, 994.9, REALM) is NonceStatus.STALE


def test_nonces_are_unique_even_in_the_same_millisecond() -> None:
    nm = NonceManager(SECRET)
    nonces = {nm.make(1000.0, REALM) for _ in range(100)}
    assert len(nonces) == 100


def test_nonce_salt_can_be_pinned() -> None:
    a = NonceManager(SECRET, random=lambda n: b"\x01" * n)
    b = NonceManager(SECRET, random=lambda n: b"\x01" * n)
    assert a.make(5.0, REALM) == b.make(5.0, REALM)


def test_nonce_is_time_salt_and_a_keyed_blake2b_tag() -> None:
    # What sipd(8) says a nonce is: the issue time in ms and 8 bytes of
    # salt, then 16 bytes of BLAKE2b keyed with the secret over those and
    # the realm.
    nonce = NonceManager(SECRET, random=lambda n: b"\x01" * n).make(5.0, REALM)
    raw = base64.urlsafe_b64decode(nonce + "=")
    payload = (5000).to_bytes(8, "big") + b"\x01" * 8
    tag = hashlib.blake2b(payload + REALM.encode(), key=SECRET, digest_size=16,
                          person=b"sipd nonce v2").digest()
    assert raw == payload + tag


def test_a_secret_longer_than_a_blake2b_key_counts_whole() -> None:
    # BLAKE2b keys stop at 64 bytes: a longer secret must not lose its tail.
    long_a, long_b = b"k" * 64 + b"a", b"k" * 64 + b"b"
    nonce = NonceManager(long_a).make(1000.0, REALM)
    assert NonceManager(long_a).check(nonce, 1000.0, REALM) is NonceStatus.VALID
    assert NonceManager(long_b).check(nonce, 1000.0, REALM) is NonceStatus.INVALID


def test_every_bit_flip_is_invalid() -> None:
    nm = NonceManager(SECRET)
    nonce = nm.make(1000.0, REALM)
    raw = base64.urlsafe_b64decode(nonce + "=")
    for bit in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        forged = base64.urlsafe_b64encode(bytes(flipped)).rstrip(b"=").decode()
        assert nm.check(forged, 1000.0, REALM) is NonceStatus.INVALID, bit


@pytest.mark.parametrize(
    "mangle",
    [
        lambda n: n[:-1],
        lambda n: n + "A",
        lambda n: n + "=",
        lambda n: n.replace("-", "+").replace("_", "/") if ("-" in n or "_" in n) else "+" + n[1:],
        lambda n: "",
        lambda n: "\u00e9" * 43,
        lambda n: "!" * 43,
    ],
)
def test_malformed_nonces_are_invalid(mangle: Callable[[str], str]) -> None:
    nm = NonceManager(SECRET)
    nonce = nm.make(1000.0, REALM)
    assert nm.check(mangle(nonce), 1000.0, REALM) is NonceStatus.INVALID


def test_non_canonical_base64_is_invalid() -> None:
    nm = NonceManager(SECRET)
    nonce = nm.make(1000.0, REALM)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # The last character carries 4 data bits and 2 unused ones: the other
    # three spellings decode to the same bytes and must not be accepted.
    last = alphabet.index(nonce[-1])
    for unused in (1, 2, 3):
        variant = nonce[:-1] + alphabet[last | unused]
        if variant != nonce:
            assert base64.urlsafe_b64decode(variant + "=") == base64.urlsafe_b64decode(nonce + "=")
            assert nm.check(variant, 1000.0, REALM) is NonceStatus.INVALID


def test_nonce_is_bound() -> None:
    nm = NonceManager(SECRET)
    nonce = nm.make(1000.0, REALM)
    assert nm.check(nonce, 1000.0, "example.com") is NonceStatus.INVALID
    assert nm.check(nonce, 1000.0, REALM + "\x00") is NonceStatus.INVALID


def test_other_secret_is_invalid() -> None:
    nonce = NonceManager(SECRET).make(1000.0, REALM)
    assert NonceManager(SECRET2).check(nonce, 1000.0, REALM) is NonceStatus.INVALID


def test_rotation_keeps_the_previous_secret_for_one_more_rotation() -> None:
    nm = NonceManager(SECRET)
    old = nm.make(1000.0, REALM)
    nm.rotate(SECRET2)
    new = nm.make(1000.0, REALM)
    assert nm.check(old, 1001.0, REALM) is NonceStatus.VALID
    assert nm.check(new, 1001.0, REALM) is NonceStatus.VALID
    assert nm.check(old, 1400.0, REALM) is NonceStatus.STALE  # still recognised
    nm.rotate(SECRET3)
    assert nm.check(old, 1001.0, REALM) is NonceStatus.INVALID
    assert nm.check(new, 1001.0, REALM) is NonceStatus.VALID


def test_previous_secret_at_construction() -> None:
    old = NonceManager(SECRET).make(1000.0, REALM)
    nm = NonceManager(SECRET2, previous_secret=SECRET)
    assert nm.check(old, 1000.0, REALM) is NonceStatus.VALID
    assert NonceManager(SECRET2).check(nm.make(1000.0, REALM), 1000.0, REALM) is NonceStatus.VALID


@pytest.mark.parametrize(
    "kwargs",
    [
        {"secret": b"short"},
        {"secret": SECRET, "previous_secret": b""},
        {"secret": SECRET, "lifetime": 0.0},
        {"secret": SECRET, "lifetime": float("inf")},
        {"secret": SECRET, "max_skew": -1.0},
    ],
)
def test_nonce_manager_refuses_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        NonceManager(**kwargs)  # type: ignore[arg-type]


def test_non_finite_time_is_refused() -> None:
    nm = NonceManager(SECRET)
    with pytest.raises(ValueError):
        nm.make(float("nan"), REALM)
    nonce = nm.make(0.0, REALM)
    with pytest.raises(ValueError):
        nm.check(nonce, float("nan"), REALM)


# ------------------------------------------------------ nonce counts


def test_nc_must_increase() -> None:
    counts = NonceCounts()
    assert counts.accept("n", 3, 0.0)  # first use: any count
    assert not counts.accept("n", 3, 0.0)  # replay
    assert not counts.accept("n", 2, 0.0)  # older
    assert counts.accept("n", 4, 0.0)
    assert counts.accept("n", 10, 0.0)  # gaps are fine
    assert not counts.accept("n", None, 0.0)
    assert counts.accept("m", 1, 0.0)  # other nonces are separate
    assert len(counts) == 2


@pytest.mark.parametrize("nc", [0, -1, 0x1_0000_0000])
def test_nc_out_of_range_is_refused(nc: int) -> None:
    counts = NonceCounts()
    assert not counts.accept("n", nc, 0.0)
    assert counts.accept("n", 1, 0.0)
    assert not counts.accept("n", nc, 0.0)


def test_without_qop_a_nonce_is_good_once() -> None:
    counts = NonceCounts()
    assert counts.accept("n", None, 0.0)
    assert not counts.accept("n", None, 0.0)
    assert not counts.accept("n", 0xFFFFFFFF, 0.0)
    counts.accept("m", 1, 0.0)
    assert not counts.accept("m", None, 0.0)  # a counted nonce cannot drop qop


def test_eviction_refuses_nonces_that_may_have_been_evicted() -> None:
    counts = NonceCounts(max_entries=2)
    assert counts.accept("a", 1, 10.0)
    assert counts.accept("b", 1, 20.0)
    assert counts.accept("a", 2, 10.0)  # 'a' is now the most recently used
    assert counts.accept("c", 1, 30.0)  # evicts 'b'
    assert len(counts) == 2
    assert counts.horizon == 20.0
    # 'b' is forgotten: its replayed count must not pass as a first use.
    assert not counts.accept("b", 1, 20.0)
    assert not counts.accept("b", 99, 20.0)
    # A never-seen nonce issued no later than the horizon is refused too
    # (the client gets a fresh one)...
    assert not counts.accept("d", 1, 15.0)
    # ...and one issued after it cannot have been evicted.
    assert counts.accept("a", 3, 10.0)  # order now: c, a
    assert counts.accept("e", 1, 20.001)  # evicts 'c', the least recently used
    assert counts.horizon == 30.0
    assert counts.accept("a", 4, 10.0)  # survived: recently used
    assert not counts.accept("c", 2, 30.0)
    # The horizon never moves back when an older nonce is evicted.
    assert counts.accept("f", 1, 40.0)  # evicts 'e' (issued 20.001)
    assert counts.horizon == 30.0


def test_nonce_counts_memory_is_bounded() -> None:
    counts = NonceCounts(max_entries=100)
    for i in range(1000):
        assert counts.accept(f"n{i}", 1, float(i))
    assert len(counts) == 100
    with pytest.raises(ValueError):
        NonceCounts(max_entries=0)


def test_nonces_past_their_lifetime_are_forgotten() -> None:
    counts = NonceCounts()
    for i, issued in enumerate((10.0, 20.0, 30.0)):
        assert counts.accept(f"n{i}", 1, issued)
    counts.forget_issued_before(25.0)
    assert len(counts) == 1 and counts.horizon == 20.0
    # A forgotten nonce is refused, even were the clock to step back.
    assert not counts.accept("n1", 2, 20.0)
    assert counts.accept("n2", 2, 30.0)
    # Only the front is looked at: a young nonce used long ago stops it.
    counts = NonceCounts()
    assert counts.accept("young", 1, 50.0)
    assert counts.accept("old", 1, 10.0)
    counts.forget_issued_before(40.0)
    assert len(counts) == 2
    assert counts.accept("young", 2, 50.0)  # now the most recently used
    counts.forget_issued_before(40.0)
    assert len(counts) == 1 and counts.accept("young", 3, 50.0)


def test_issue_times_are_kept_to_the_millisecond() -> None:
    counts = NonceCounts(max_entries=1)
    issued = 1_764_900_000.123  # a wall clock, as nonces carry it
    assert counts.accept("a", 0xFFFFFFFF, issued)
    assert not counts.accept("a", 0xFFFFFFFF, issued)  # the highest count, kept exactly
    assert counts.accept("b", 7, issued + 1)  # evicts 'a'
    assert counts.horizon == issued
    assert not counts.accept("b", 7, issued + 1) and counts.accept("b", 8, issued + 1)


def test_a_burst_of_nonces_leaves_the_table_after_their_lifetime() -> None:
    server = Server()
    for i in range(50):
        nonce = server.nonces.make(1000.0 + i, REALM)
        assert server.check(Phone().authorize(nonce, 1), 1000.0 + i) is AuthResult.OK
    assert len(server.counts) == 50
    late = 1000.0 + 49 + server.nonces.lifetime + 1
    nonce = server.nonces.make(late, REALM)
    assert server.check(Phone().authorize(nonce, 1), late) is AuthResult.OK
    assert len(server.counts) == 1


# ------------------------------------------------------- challenges


def test_challenge_value() -> None:
    assert challenge_value(REALM, "abc", "sha-256") == (
        'Digest realm="example.org", nonce="abc", algorithm=SHA-256, qop="auth"'
    )
    assert challenge_value(
        'a "b" \\c', "n", "MD5", stale=True, opaque='o"p', qop="auth, AUTH-INT"
    ) == (
        'Digest realm="a \\"b\\" \\\\c", nonce="n", algorithm=MD5, qop="auth,auth-int",'
        ' stale=true, opaque="o\\"p"'
    )
    assert (
        challenge_value(REALM, "n", "MD5", qop=None)
        == 'Digest realm="example.org", nonce="n", algorithm=MD5'
    )


@pytest.mark.parametrize(
    "args",
    [
        ("r\r\nX: y", "n", "MD5"),
        ("r", "n\n", "MD5"),
        ("r", "n", "SHA-1"),
    ],
)
def test_challenge_value_refuses_what_would_break_the_header(args: tuple[str, str, str]) -> None:
    with pytest.raises(ValueError):
        challenge_value(*args)
    with pytest.raises(ValueError):
        challenge_value("r", "n", "MD5", opaque="\x00")
    with pytest.raises(ValueError):
        challenge_value("r", "n", "MD5", qop="auth-conf")


def test_challenges_prefer_sha256_and_share_a_fresh_nonce() -> None:
    nm = NonceManager(SECRET)
    values = challenges(REALM, 1000.0, nm, stale=True)
    assert [re.search(r"algorithm=([^,]+)", v).group(1) for v in values] == ["SHA-256", "MD5"]  # type: ignore[union-attr]
    nonces = {re.search(r'nonce="([^"]+)"', v).group(1) for v in values}  # type: ignore[union-attr]
    assert len(nonces) == 1
    assert nm.check(nonces.pop(), 1000.0, REALM) is NonceStatus.VALID
    assert all(v.endswith(', qop="auth", stale=true') for v in values)
    assert challenges(REALM, 0.0, nm, algorithms=["MD5"])[0].count("algorithm=MD5") == 1


# ------------------------------------------------------------ the flow

PASSWORD = "Circle of Life"


class Phone:
    """A client, written from the RFC formulas with hashlib, not with the module under test."""

    def __init__(self, user: str = "jan", password: str = PASSWORD, algorithm: str = "MD5") -> None:
        self.user = user
        self.password = password
        self.algorithm = algorithm

    def h(self, text: str) -> str:
        return sha256(text) if self.algorithm.startswith("SHA-256") else md5(text)

    def authorize(
        self,
        nonce: str,
        nc: int | None = 1,
        method: str = "REGISTER",
        uri: str = "sip:example.org",
        realm: str = REALM,
    ) -> Credentials:
        key = self.h(f"{self.user}:{realm}:{self.password}")
        ha2 = self.h(f"{method}:{uri}")
        cnonce = "0a4f113b"
        if nc is None:
            value = self.h(f"{key}:{nonce}:{ha2}")
            extra = ""
        else:
            value = self.h(f"{key}:{nonce}:{nc:08x}:{cnonce}:auth:{ha2}")
            extra = f', qop=auth, nc={nc:08x}, cnonce="{cnonce}"'
        header = (
            f'Digest username="{self.user}", realm="{realm}", nonce="{nonce}", uri="{uri}",'
            f' response="{value}", algorithm={self.algorithm}{extra}'
        )
        return parse_credentials(header)


class Server:
    def __init__(self) -> None:
        self.nonces = NonceManager(SECRET, lifetime=300.0)
        self.counts = NonceCounts()
        self.users = {
            ("jan", "MD5"): ha1("jan", REALM, PASSWORD, "MD5"),
            ("jan", "SHA-256"): ha1("jan", REALM, PASSWORD, "SHA-256"),
        }

    def check(
        self, creds: Credentials, now: float, method: str = "REGISTER", body: bytes = b""
    ) -> AuthResult:
        key = self.users.get((creds.username, digest.base_algorithm(creds.algorithm)))
        return check_credentials(
            creds,
            method,
            key,
            nonces=self.nonces,
            counts=self.counts,
            now=now,
            bound=REALM,
            body=body,
        )


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_register_from_challenge_to_ok(algorithm: str) -> None:
    server = Server()
    value = challenges(REALM, 1000.0, server.nonces)[0 if algorithm == "SHA-256" else 1]
    nonce = re.search(r'nonce="([^"]+)"', value).group(1)  # type: ignore[union-attr]
    phone = Phone(algorithm=algorithm)
    assert server.check(phone.authorize(nonce, 1), 1001.0) is AuthResult.OK
    assert server.check(phone.authorize(nonce, 2), 1002.0) is AuthResult.OK


def test_replayed_nc_with_right_password_is_stale() -> None:
    server = Server()
    nonce = server.nonces.make(1000.0, REALM)
    creds = Phone().authorize(nonce, 1)
    assert server.check(creds, 1000.0) is AuthResult.OK
    assert server.check(creds, 1001.0) is AuthResult.STALE


def test_expired_nonce_right_password_is_stale_wrong_password_failed() -> None:
    server = Server()
    nonce = server.nonces.make(1000.0, REALM)
    assert server.check(Phone().authorize(nonce), 2000.0) is AuthResult.STALE
    assert server.check(Phone(password="wrong").authorize(nonce), 2000.0) is AuthResult.FAILED


def test_unknown_user_fails_like_a_wrong_password(monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server()
    nonce = server.nonces.make(1000.0, REALM)
    keys: list[bytes] = []
    real_md5 = hashlib.md5

    def recording_md5(data: bytes = b"", **kwargs: bool) -> hashlib._Hash:
        # The request-digest's input is key:nonce:nc:cnonce:qop:ha2; the
        # other MD5 inputs (HA2, the client's own) have fewer parts.
        parts = data.split(b":")
        if len(parts) == 6 and parts[1] == nonce.encode():
            keys.append(parts[0])
        return real_md5(data, **kwargs)

    unknown = Phone(user="nobody").authorize(nonce)
    wrong = Phone(password="wrong").authorize(nonce)
    # hashlib's attribute, not digest.verify: compiled with mypyc, digest.py
    # calls its own functions directly, but looks hashlib.md5 up each time.
    monkeypatch.setattr(hashlib, "md5", recording_md5)
    assert server.check(unknown, 1000.0) is AuthResult.FAILED
    assert server.check(unknown, 2000.0) is AuthResult.FAILED
    assert server.check(wrong, 1000.0) is AuthResult.FAILED
    # The unknown user's response was hashed too, against a key of the same length.
    assert len(keys) == 3
    assert {len(k) for k in keys} == {32}


def test_dummy_ha1_never_authenticates() -> None:
    server = Server()
    nonce = server.nonces.make(1000.0, REALM)
    creds = Phone().authorize(nonce)
    forged = response("0" * 32, nonce, "REGISTER", creds.uri, "MD5", "auth", creds.nc, creds.cnonce)
    creds = dataclasses.replace(creds, response=forged)
    assert (
        check_credentials(
            creds,
            "REGISTER",
            None,
            nonces=server.nonces,
            counts=server.counts,
            now=1000.0,
            bound=REALM,
        )
        is AuthResult.FAILED
    )


def test_forged_nonce_wrong_password_fails_right_password_is_stale() -> None:
    server = Server()
    nonce = server.nonces.make(1000.0, REALM)
    raw = bytearray(base64.urlsafe_b64decode(nonce + "="))
    raw[20] ^= 0x01
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert server.check(Phone(password="guess").authorize(forged), 1000.0) is AuthResult.FAILED
    # Only the password holder can answer any nonce rightly: a fresh challenge
    # is the right reply, never a counted failure (a restart with a new
    # secret must not get honest phones banned).
    assert server.check(Phone().authorize(forged), 1000.0) is AuthResult.STALE
    assert server.check(Phone().authorize("not-ours-at-all"), 1000.0) is AuthResult.STALE


def test_nonce_for_another_bound_is_stale_with_right_password() -> None:
    server = Server()
    nonce = server.nonces.make(1000.0, "other.example")
    assert server.check(Phone().authorize(nonce), 1000.0) is AuthResult.STALE


def test_nonce_after_two_rotations_is_stale_not_failed() -> None:
    server = Server()
    nonce = server.nonces.make(1000.0, REALM)
    server.nonces.rotate(SECRET2)
    assert server.check(Phone().authorize(nonce, 1), 1001.0) is AuthResult.OK
    server.nonces.rotate(SECRET3)
    assert server.check(Phone().authorize(nonce, 2), 1002.0) is AuthResult.STALE


def test_failed_attempts_do_not_consume_nonce_counts() -> None:
    server = Server()
    nonce = server.nonces.make(1000.0, REALM)
    assert (
        server.check(Phone(password="x").authorize(nonce, 0xFFFFFFFF), 1000.0) is AuthResult.FAILED
    )
    assert server.check(Phone().authorize(nonce, 1), 1000.0) is AuthResult.OK
    assert len(server.counts) == 1


def test_stale_nonce_does_not_enter_the_count_table() -> None:
    server = Server()
    nonce = server.nonces.make(1000.0, REALM)
    assert server.check(Phone().authorize(nonce), 5000.0) is AuthResult.STALE
    assert len(server.counts) == 0


def test_rfc2069_client_ok_once_then_stale() -> None:
    server = Server()
    nonce = server.nonces.make(1000.0, REALM)
    creds = Phone().authorize(nonce, nc=None)
    assert creds.qop is None
    assert server.check(creds, 1000.0) is AuthResult.OK
    assert server.check(creds, 1001.0) is AuthResult.STALE
    fresh = server.nonces.make(1001.0, REALM)
    assert server.check(Phone().authorize(fresh, nc=None), 1001.0) is AuthResult.OK


def test_wrong_method_or_uri_fails() -> None:
    server = Server()
    nonce = server.nonces.make(1000.0, REALM)
    assert server.check(Phone().authorize(nonce, method="INVITE"), 1000.0) is AuthResult.FAILED


def test_ha1_of_the_other_algorithm_fails() -> None:
    server = Server()
    nonce = server.nonces.make(1000.0, REALM)
    creds = Phone(algorithm="SHA-256").authorize(nonce)
    result = check_credentials(
        creds,
        "REGISTER",
        server.users[("jan", "MD5")],
        nonces=server.nonces,
        counts=server.counts,
        now=1000.0,
        bound=REALM,
    )
    assert result is AuthResult.FAILED


def test_auth_int_needs_the_right_body() -> None:
    server = Server()
    nonce = server.nonces.make(1000.0, REALM)
    body = b"v=0\r\n"
    key = ha1("jan", REALM, PASSWORD, "SHA-256")
    value = response(
        key,
        nonce,
        "INVITE",
        "sip:bob@example.org",
        "SHA-256",
        "auth-int",
        "00000001",
        "c",
        sha256(body.decode()),
    )
    creds = parse_credentials(
        f'Digest username="jan", realm="{REALM}", nonce="{nonce}", uri="sip:bob@example.org",'
        f' response="{value}", algorithm=SHA-256, qop=auth-int, nc=00000001, cnonce="c"'
    )
    assert server.check(creds, 1000.0, "INVITE", b"v=1\r\n") is AuthResult.FAILED
    assert server.check(creds, 1000.0, "INVITE") is AuthResult.FAILED
    assert server.check(creds, 1000.0, "INVITE", body) is AuthResult.OK


def test_verify_is_false_for_hand_built_nonsense() -> None:
    creds = Credentials("jan", REALM, "n", "u", "zz", algorithm="SHA-1")
    assert not verify(creds, "REGISTER", "0" * 32)
    creds = Credentials("jan", REALM, "n", "u", "\u00e9", qop="auth")
    assert not verify(creds, "REGISTER", "0" * 32)


def test_parsed_credentials_are_kept_for_the_second_reading_within_bounds() -> None:
    """The proxy reads a request's credentials twice; failures are read each time."""
    cached = digest._parse_credentials_cached
    cached.cache_clear()
    value = ('Digest username="alice", realm="sip.test", nonce="abc", uri="sip:bob@sip.test", '
             'response="' + "0" * 32 + '", algorithm=MD5')
    first = parse_credentials(value, "Proxy-Authorization")
    assert first == digest._parse_credentials(value, "Proxy-Authorization")
    assert parse_credentials(value, "Proxy-Authorization") is first
    for _ in range(2):
        with pytest.raises(ParseError, match="Bad Proxy-Authorization header"):
            parse_credentials("Digest username=", "Proxy-Authorization")
    long = value + ", x=" + "a" * digest.CACHED_CREDENTIALS_MAX
    assert parse_credentials(long).username == "alice"
    assert cached.cache_info().currsize == 1
    for n in range(digest.PARSED_CREDENTIALS + 5):
        parse_credentials(value.replace('"abc"', f'"n{n}"'))
    assert cached.cache_info().currsize == digest.PARSED_CREDENTIALS

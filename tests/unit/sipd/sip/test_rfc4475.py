"""RFC 4475 torture messages: every file of the shared corpus gets the
outcome its section asks for.

The corpus lives in ``tests/vectors/rfc4475`` with its digests. Where the RFC leaves a
choice ("may be rejected ... or an element could be liberal"), the table
says which one this parser makes. Where the RFC asks something of a proxy,
registrar or UA beyond parsing, the parse-level part is tested here and the
comment names the rest.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from urllib.parse import unquote

import pytest

from sipd.sip.errors import ParseError, SipError
from sipd.sip.message import KNOWN_METHODS, Message, Request, Response, parse
from sipd.sip.uri import AbsoluteURI, SipURI
from tests import TESTS

CORPUS = TESTS / "vectors" / "rfc4475"

OK = "parses and validates"
R400 = "request answered 400"
R505 = "request answered 505"
R416 = "request answered 416 (unknown URI scheme)"
R501 = "request answered 501 (unknown method)"
RESPONSE = "well-formed response"
DROP = "dropped (cannot be answered)"


def outcome(data: bytes) -> tuple[str, Message | None]:
    """What the server does with these bytes as a datagram, from parsing alone."""
    try:
        msg = parse(data)
    except ParseError as exc:
        partial = exc.message
        if isinstance(partial, Request):
            try:
                partial.top_via  # noqa: B018 - a 400 needs a Via to go back on
            except ParseError:
                return DROP, partial
            return R400, partial
        return DROP, partial
    if isinstance(msg, Response):
        try:
            msg.validate()
        except SipError:
            return DROP, msg
        return RESPONSE, msg
    try:
        msg.validate()
    except SipError as exc:
        return {400: R400, 505: R505}[exc.status], msg
    if isinstance(msg.uri, AbsoluteURI):
        return R416, msg
    if msg.method not in KNOWN_METHODS:
        return R501, msg
    return OK, msg


# file -> (RFC 4475 section, expected outcome, what the section says)
EXPECTED: dict[str, tuple[str, str, str]] = {
    # 3.1.1 Valid messages: "a parser must accept"
    "wsinv.dat": ("3.1.1.1", OK, "short tortuous INVITE: folding, odd whitespace, escapes; must parse"),
    "intmeth.dat": ("3.1.1.2", R501, "every token character in method, URI, params; valid; unknown method"),
    "esc01.dat": ("3.1.1.3", OK, "valid use of % escapes in URIs"),
    "escnull.dat": ("3.1.1.4", OK, "escaped NULs (%00) in user parts; valid, two distinct contacts"),
    "esc02.dat": ("3.1.1.5", R501, "% that is not an escape; method RE%47IST%45R is unknown -> 501"),
    "lwsdisp.dat": ("3.1.1.6", OK, "no LWS between display name and <; should be accepted"),
    "longreq.dat": ("3.1.1.7", OK, "very long header values; valid"),
    "dblreq.dat": ("3.1.1.8", OK, "REGISTER with Content-Length 0 then noise in the datagram; ignore it"),
    "semiuri.dat": ("3.1.1.9", OK, "semicolons in the user part of the Request-URI; valid"),
    "transports.dat": ("3.1.1.10", OK, "unknown transports in Via; valid"),
    "mpart01.dat": ("3.1.1.11", OK, "multipart MIME body with binary part; valid"),
    "unreason.dat": ("3.1.1.12", RESPONSE, "unusual UTF-8 reason phrase; valid response"),
    "noreason.dat": ("3.1.1.13", RESPONSE, "empty reason phrase; must be accepted"),
    # 3.1.2 Invalid messages
    "badinv01.dat": ("3.1.2.1", R400, "extraneous ';' and ',' in Via and Contact; should be 400"),
    "clerr.dat": ("3.1.2.2", R400, "Content-Length larger than the body; over UDP: 400"),
    "ncl.dat": ("3.1.2.3", R400, "negative Content-Length; respond with an error (TCP: close)"),
    "scalar02.dat": ("3.1.2.4", R400, "CSeq > 2**32-1 (and others too large); 400 for the CSeq"),
    "scalarlg.dat": ("3.1.2.5", DROP, "response with out-of-range CSeq etc.; simply discard it"),
    "quotbal.dat": ("3.1.2.6", R400, "unterminated quoted display name; should be 400"),
    "ltgtruri.dat": ("3.1.2.7", R400, "Request-URI in <>; reasonable to reject with 400"),
    "lwsruri.dat": ("3.1.2.8", R400, "LWS inside the Request-URI; should be 400"),
    "lwsstart.dat": ("3.1.2.9", OK, "several SP between start-line elements; may be accepted (we do)"),
    "trws.dat": ("3.1.2.10", OK, "SP after the SIP-Version; may be accepted (we do)"),
    "escruri.dat": ("3.1.2.11", R400, "escaped headers in the Request-URI; 400 acceptable (we do)"),
    "baddate.dat": ("3.1.2.12", OK, "non-GMT Date; reject only if the Date matters (it does not here)"),
    "regbadct.dat": ("3.1.2.13", R400, "addr-spec with ?headers not in <>; reasonable to 400 (we do)"),
    "badaspec.dat": ("3.1.2.14", R400, "spaces inside <addr-spec>; reasonable to 400 (we do)"),
    "baddn.dat": ("3.1.2.15", R400, "non-token characters in an unquoted display name; 400"),
    "badvers.dat": ("3.1.2.16", R505, "SIP/7.0; 505 Version Not Supported"),
    "mismatch01.dat": ("3.1.2.17", R400, "CSeq method differs from the request method; 400"),
    "mismatch02.dat": ("3.1.2.18", R501, "unknown method with CSeq mismatch; 501 preferred over 400"),
    "bigcode.dat": ("3.1.2.19", DROP, "response code 4294967301; drop it"),
    # 3.2 Transaction layer
    "badbranch.dat": ("3.2.1", R400, "branch is only the z9hG4bK cookie; may 400 (we do) or fall back"),
    # 3.3 Application layer: well-formed; what follows is the core's part
    "insuf.dat": ("3.3.1", R400, "no Call-ID, From or To; ideally 400"),
    "unkscm.dat": ("3.3.2", R416, "unknown Request-URI scheme; 416"),
    "novelsc.dat": ("3.3.3", R416, "soap.beep: Request-URI; must parse, may treat as unknown: 416"),
    "unksm2.dat": ("3.3.4", OK, "isbn:/http:/name: URIs in To/From/Contact; well-formed"),
    "bext01.dat": ("3.3.5", OK, "unknown Require/Proxy-Require; well-formed (the core answers 420)"),
    "invut.dat": ("3.3.6", OK, "unknown Content-Type; well-formed (a UA answers 415)"),
    "regaut01.dat": ("3.3.7", OK, "unknown Authorization scheme; well-formed (registrar: 401)"),
    "multi01.dat": ("3.3.8", R400, "several Call-ID/To/From/CSeq/Max-Forwards; 400"),
    "mcl01.dat": ("3.3.9", R400, "two different Content-Length values; an error (TCP: close)"),
    "bcast.dat": ("3.3.10", RESPONSE, "200 OK with a broadcast Via; well-formed, processed as usual"),
    "zeromf.dat": ("3.3.11", OK, "Max-Forwards: 0; well-formed (a proxy answers 483)"),
    "cparam01.dat": ("3.3.12", OK, "addr-spec Contact: ;unknownparam is a contact parameter"),
    "cparam02.dat": ("3.3.13", OK, "<URI;unknownparam>: the parameter belongs to the URI"),
    "regescrt.dat": ("3.3.14", OK, "Contact URI with an escaped Route header in <>; stored as is"),
    "sdp01.dat": ("3.3.15", OK, "Accept without SDP; well-formed (a UA answers 406)"),
    # 3.4 Backwards compatibility
    "inv2543.dat": ("3.4.1", OK, "RFC 2543 INVITE: no branch, no tag, no Content-Length, no Max-Forwards"),
    # Not a section of RFC 4475: a stray file of the RFC's test tarball.
    "test.dat": ("-", DROP, "no SIP-Version in the start line and no Via: not answerable"),
}


def test_every_corpus_file_has_an_expectation() -> None:
    assert {p.name for p in CORPUS.glob("*.dat")} == set(EXPECTED)


def test_corpus_bytes_are_the_rfc_bytes() -> None:
    # An editor that "fixes" line endings would make every test below vacuous.
    sums = {}
    for line in (CORPUS / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name.lstrip("*")] = digest
    assert set(sums) == set(EXPECTED)
    for name, digest in sums.items():
        assert hashlib.sha256((CORPUS / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_outcome(name: str) -> None:
    section, expected, what = EXPECTED[name]
    got, msg = outcome((CORPUS / name).read_bytes())
    assert got == expected, f"RFC 4475 §{section} ({what}): got {got}"
    check = CHECKS.get(name)
    if check is not None:
        assert isinstance(msg, Request | Response)
        check(msg)


# ----------------------------------------------- parse-level details per file


def _req(msg: Request | Response) -> Request:
    assert isinstance(msg, Request)
    return msg


def _wsinv(msg: Request | Response) -> None:
    m = _req(msg)
    assert m.to.tag == "1918181833n"
    assert m.from_.display == '"J Rosenberg \\\\\\""' and m.from_.display_text == 'J Rosenberg \\"'
    assert m.from_.tag == "98asjd8"
    assert m.max_forwards == 68
    assert (m.cseq.seq, m.cseq.method) == (9, "INVITE")
    assert [(v.transport, v.host, v.branch) for v in m.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    assert m.get("Subject") == ""
    assert m.get("NewFangledHeader") == "newfangled value continued newfangled value"
    (contact,) = m.contacts
    assert contact.display == '"Quoted string \\"\\""'
    assert contact.params == (("newparam", "newvalue"), ("secondparam", None), ("q", "0.33"))
    assert len(m.body) == 150


def _intmeth(msg: Request | Response) -> None:
    m = _req(msg)
    assert m.method == "!interesting-Method0123456789_*+`.%indeed'~"
    uri = m.uri
    assert isinstance(uri, SipURI) and uri.host == "example.com"
    assert uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.to.display_text == "BEL:\x07 NUL:\x00 DEL:\x7f"
    assert m.from_.display == "token1~` token2'+_ token3*%!.-" and m.from_.tag == "_token~1'+`*%!-."
    assert m.from_.param("fromParam''~+*_!.-%") == '"\u0440\u0430\u0431\u043e\u0442\u0430\u044e\u0449\u0438\u0439"'
    assert m.call_id == "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{"
    assert m.get("extensionHeader-!.%*+_`'~") == "\ufeff\u5927\u505c\u96fb"


def _escnull(msg: Request | Response) -> None:
    m = _req(msg)
    users = [c.sip_uri.user for c in m.contacts if c.sip_uri is not None]
    assert users == ["%00", "%00%00"]
    assert [unquote(u or "") for u in users] == ["\x00", "\x00\x00"]
    assert m.to.sip_uri is not None and m.to.sip_uri.user == "null-%00-null"


def _esc02(msg: Request | Response) -> None:
    m = _req(msg)
    assert m.method == "RE%47IST%45R" and m.cseq.method == "RE%47IST%45R"
    assert m.to.display == '"%Z%45"'
    # Two Contact values, not three: C%6Fntact is another header field.
    assert [c.sip_uri.host for c in m.contacts if c.sip_uri] == ["host1.example.com", "host3.example.com"]
    assert m.get("C%6Fntact") == "<sip:alias2@host2.example.com>"


def _lwsdisp(msg: Request | Response) -> None:
    assert msg.from_.display == "caller" and msg.from_.tag == "323"


def _longreq(msg: Request | Response) -> None:
    m = _req(msg)
    assert len(m.vias) == 34
    assert m.to.sip_uri is not None and m.to.sip_uri.port == 6000
    assert m.vias[-1].param("received") == "192.0.2.5"


def _dblreq(msg: Request | Response) -> None:
    m = _req(msg)
    assert m.method == "REGISTER" and m.body == b""
    assert m.call_id == "dblreq.0ha0isndaksdj99sdfafnl3lk233412"


def _semiuri(msg: Request | Response) -> None:
    uri = _req(msg).uri
    assert isinstance(uri, SipURI)
    assert (uri.user, uri.host, uri.params) == ("user;par=u%40example.net", "example.com", ())


def _transports(msg: Request | Response) -> None:
    assert [v.transport for v in msg.vias] == ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]


def _mpart01(msg: Request | Response) -> None:
    assert len(msg.body) == 553 and msg.body.endswith(b"--7a9cbec02ceef655--\r\n")


def _unreason(msg: Request | Response) -> None:
    assert isinstance(msg, Response) and msg.status == 200
    assert msg.reason.startswith("= 2**3 * 5**2 ")


def _noreason(msg: Request | Response) -> None:
    assert isinstance(msg, Response) and msg.status == 100 and msg.reason == ""


def _badvers(msg: Request | Response) -> None:
    assert msg.version == "SIP/7.0"


def _mismatch02(msg: Request | Response) -> None:
    m = _req(msg)
    assert m.method == "NEWMETHOD" and m.cseq.method == "INVITE"


def _unkscm(msg: Request | Response) -> None:
    assert _req(msg).uri == AbsoluteURI("nobodyknowsthisscheme", "totallyopaquecontent")


def _novelsc(msg: Request | Response) -> None:
    assert _req(msg).uri == AbsoluteURI("soap.beep", "//192.0.2.103:3002")


def _unksm2(msg: Request | Response) -> None:
    # A registrar answers 400: the To of a REGISTER must be a SIP or SIPS
    # URI (RFC 4475 §3.3.4). That is the registrar's check, not syntax.
    m = _req(msg)
    assert m.to.uri == AbsoluteURI("isbn", "2983792873")
    assert m.from_.uri == AbsoluteURI("http", "//www.example.com")
    assert [c.uri for c in m.contacts] == [AbsoluteURI("name", "John_Smith")]


def _bext01(msg: Request | Response) -> None:
    m = _req(msg)
    assert m.tokens("Require") == ["nothingSupportsThis", "nothingSupportsThisEither"]
    assert m.tokens("Proxy-Require") == ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]


def _regaut01(msg: Request | Response) -> None:
    assert msg.get("Authorization") == "NoOneKnowsThisScheme opaque-data=here"


def _bcast(msg: Request | Response) -> None:
    assert [v.host for v in msg.vias] == ["192.0.2.198", "255.255.255.255"]


def _zeromf(msg: Request | Response) -> None:
    assert msg.max_forwards == 0  # a proxy answers 483 Too Many Hops


def _cparam01(msg: Request | Response) -> None:
    (contact,) = msg.contacts
    assert contact.params == (("unknownparam", None),)
    assert contact.sip_uri is not None and contact.sip_uri.params == ()


def _cparam02(msg: Request | Response) -> None:
    (contact,) = msg.contacts
    assert contact.params == ()
    assert contact.sip_uri is not None and contact.sip_uri.params == (("unknownparam", None),)


def _regescrt(msg: Request | Response) -> None:
    (contact,) = msg.contacts
    assert contact.sip_uri is not None
    assert contact.sip_uri.headers == "Route=%3Csip:sip.example.com%3E"


def _inv2543(msg: Request | Response) -> None:
    m = _req(msg)
    assert m.top_via.branch is None and m.from_.tag is None
    assert m.max_forwards is None and m.content_length is None
    assert m.body.startswith(b"v=0\r\n")


def _partial_has_via(msg: Request | Response) -> None:
    # The 400 is answerable: the Via of the broken request is readable.
    assert msg.top_via.branch is not None


CHECKS: dict[str, Callable[[Request | Response], None]] = {
    "wsinv.dat": _wsinv,
    "intmeth.dat": _intmeth,
    "escnull.dat": _escnull,
    "esc02.dat": _esc02,
    "lwsdisp.dat": _lwsdisp,
    "longreq.dat": _longreq,
    "dblreq.dat": _dblreq,
    "semiuri.dat": _semiuri,
    "transports.dat": _transports,
    "mpart01.dat": _mpart01,
    "unreason.dat": _unreason,
    "noreason.dat": _noreason,
    "badvers.dat": _badvers,
    "mismatch02.dat": _mismatch02,
    "unkscm.dat": _unkscm,
    "novelsc.dat": _novelsc,
    "unksm2.dat": _unksm2,
    "bext01.dat": _bext01,
    "regaut01.dat": _regaut01,
    "bcast.dat": _bcast,
    "zeromf.dat": _zeromf,
    "cparam01.dat": _cparam01,
    "cparam02.dat": _cparam02,
    "regescrt.dat": _regescrt,
    "inv2543.dat": _inv2543,
    "clerr.dat": _partial_has_via,
    "ncl.dat": _partial_has_via,
    "lwsruri.dat": _partial_has_via,
    "mcl01.dat": _partial_has_via,
}


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("badinv01.dat", "Bad Via parameter"),
        ("clerr.dat", "Content-Length larger than the message body"),
        ("ncl.dat", "Bad Content-Length header"),
        ("scalar02.dat", "Bad CSeq: sequence number too large"),
        ("quotbal.dat", "Bad To header: unterminated quoted string"),
        ("ltgtruri.dat", "Bad Request-URI"),
        ("lwsruri.dat", "Bad Request-URI: contains whitespace"),
        ("escruri.dat", "Bad Request-URI: header fields are not allowed"),
        ("regbadct.dat", "Bad Contact header: a URI with '?' or ',' must be enclosed in <>"),
        ("badaspec.dat", "Bad To header: whitespace inside <URI>"),
        ("baddn.dat", "Bad From header: bad display name"),
        ("mismatch01.dat", "CSeq method does not match the request method"),
        ("badbranch.dat", "Bad Via branch"),
        ("insuf.dat", "Missing"),
        ("multi01.dat", "Multiple"),
        ("mcl01.dat", "Multiple Content-Length headers"),
    ],
)
def test_reason_names_the_problem(name: str, reason: str) -> None:
    data = (CORPUS / name).read_bytes()
    try:
        parse(data).validate()
    except SipError as exc:
        assert exc.status == 400
        assert reason in exc.reason
    else:
        pytest.fail("accepted")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_round_trip_of_what_validates(name: str) -> None:
    got, msg = outcome((CORPUS / name).read_bytes())
    if got in (OK, R416, R501, RESPONSE):
        assert msg is not None
        again = parse(msg.to_bytes())
        again.validate()
        strip = [(n, v) for n, v in msg.headers() if n != "Content-Length"]
        assert [(n, v) for n, v in again.headers() if n != "Content-Length"] == strip
        assert again.body == msg.body

"""sipd.sip.checks: the first checks of a request, in the RFC's order, for server and proxy alike."""

from __future__ import annotations

import pytest

from sipd.sip.checks import check_extensions, check_request
from sipd.sip.errors import SipError
from sipd.sip.message import Request, parse


def request(uri: str = "sip:bob@example.com", max_forwards: str = "70", extra: str = "") -> Request:
    msg = parse((
        f"INVITE {uri} SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bKx1\r\n"
        f"Max-Forwards: {max_forwards}\r\n"
        "From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n"
        "Call-ID: c1\r\nCSeq: 1 INVITE\r\n"
        f"{extra}Content-Length: 0\r\n\r\n"
    ).encode())
    assert isinstance(msg, Request)
    return msg


@pytest.mark.parametrize(("uri", "mf", "extra", "status"), [
    ("sip:bob@example.com", "70", "", None),
    ("tel:+4930123", "70", "", None),
    ("mailto:bob@example.com", "0", "Proxy-Require: foo\r\n", 416),  # the scheme comes first
    ("sip:bob@example.com", "0", "Proxy-Require: foo\r\n", 483),     # then the hops
    ("sip:bob@example.com", "1", "Proxy-Require: foo, path\r\n", 420),
    ("sip:bob@example.com", "1", "Proxy-Require: path\r\n", None),
])
def test_the_first_problem_the_rfc_names_is_the_answer(uri: str, mf: str, extra: str,
                                                       status: int | None) -> None:
    req = request(uri, mf, extra)
    if status is None:
        check_request(req, ("path",))
        return
    with pytest.raises(SipError) as err:
        check_request(req, ("path",))
    assert err.value.status == status
    if status == 420:
        assert err.value.headers == (("Unsupported", "foo"),)


def test_require_is_checked_only_when_asked() -> None:
    req = request(extra="Require: 100rel\r\n")
    check_request(req, ())
    with pytest.raises(SipError) as err:
        check_extensions(req, "Require", ())
    assert err.value.headers == (("Unsupported", "100rel"),)

"""SIP, SIPS and tel URIs (RFC 3261 §19.1 and §25.1, RFC 3966).

URIs are immutable values. Parsing keeps user, parameter and header text as
written (escapes included) so that a URI forwarded by the proxy is the URI it
received; comparison (RFC 3261 §19.1.4) is a separate, explicit operation.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field, replace
from urllib.parse import unquote

from sipd.sip.errors import ParseError

Params = tuple[tuple[str, str | None], ...]

# RFC 3261 §25.1 character classes, as regular expression sets.
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_ESCAPED = r"%[0-9A-Fa-f]{2}"


def _escapable(chars: str, at_least_one: bool) -> str:
    """``1*( [chars] / escaped )`` (or ``*(...)``) as an unrolled loop.

    The plain ``(?:[chars]|%XX)+`` form makes the regex engine try the
    alternation at every character; runs of ``[chars]*`` between escapes
    are matched by one tight loop instead (about 1.5x faster on URIs).
    """
    one = f"[{chars}]"
    if at_least_one:
        return rf"(?:{one}+(?:{_ESCAPED}{one}*)*|(?:{_ESCAPED}{one}*)+)"
    return rf"{one}*(?:{_ESCAPED}{one}*)*"


_USER = _escapable(_UNRESERVED + "&=+$,;?/", True)
_PASSWORD = _escapable(_UNRESERVED + "&=+$,", False)
_PARAMCHAR = _escapable(_UNRESERVED + r"\[\]/:&+$", True)
_HEADERS = _escapable(_UNRESERVED + r"\[\]/?:+$=&", False)
_USER_RE = re.compile(_USER)
_PASSWORD_RE = re.compile(_PASSWORD)
_PARAMCHAR_RE = re.compile(_PARAMCHAR)
_HEADERS_RE = re.compile(_HEADERS)
# hostname = *( domainlabel "." ) toplabel [ "." ]; a label may hold hyphens
# but not start or end with one. Written so that no two parts can match the
# same text, which keeps the engine from backtracking.
_HOSTNAME = (
    r"(?:[A-Za-z0-9]+(?:-+[A-Za-z0-9]+)*\.)*"
    r"[A-Za-z][A-Za-z0-9]*(?:-+[A-Za-z0-9]+)*\.?"
)
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|[01]?[0-9]?[0-9])"  # 1*3DIGIT up to 255
_IPV4 = rf"(?:{_OCTET}\.){{3}}{_OCTET}"
#: host = hostname / IPv4address / IPv6reference, with the IPv4 ranges and
#: hostname label rules checked by the pattern; an IPv6 reference is only
#: shaped here and must still pass :func:`is_ipv6`.
HOST_PATTERN = rf"\[[0-9A-Fa-f:.]+\]|{_IPV4}|{_HOSTNAME}"
_HOSTNAME_RE = re.compile(_HOSTNAME)
_IPV4_RE = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_IPV4_STRICT_RE = re.compile(_IPV4)
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]+")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_TEL_RE = re.compile(r"\+?[0-9A-Fa-f*#\-.()pPwW]+")
# The whole of a sip/sips URI after the colon in one pass: one regex call
# costs about what three Python steps do, and every URI the server reads
# (Request-URI, From, To, Contact, Route) goes through here.
_SIP_RE = re.compile(
    rf"(?:({_USER})(?::({_PASSWORD}))?@)?"
    rf"({HOST_PATTERN})"
    r"(?::([0-9]+))?"
    rf"((?:;{_PARAMCHAR}(?:={_PARAMCHAR})?)*)"
    rf"(?:\?({_HEADERS}))?"
)
# RFC 3261 absoluteURI characters (uric, with IPv6 brackets); a bare "%" is
# let through rather than refusing an otherwise harmless foreign URI.
_ABSOLUTE_RE = re.compile(r"[A-Za-z0-9\-_.!~*'();/?:@&=+$,%\[\]]+")
_PORT_MAX = 65535


def is_ipv4(host: str) -> bool:
    return _IPV4_STRICT_RE.fullmatch(host) is not None


def is_ipv6(host: str) -> bool:
    """True for an IPv6 address *without* brackets."""
    if not _IPV6_RE.fullmatch(host) or host.count("::") > 1:
        return False
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def valid_host(host: str) -> bool:
    """hostname / IPv4address / IPv6reference (with brackets)."""
    if host.startswith("["):
        return host.endswith("]") and is_ipv6(host[1:-1])
    if host[-1:].isdigit() and _IPV4_RE.fullmatch(host):
        return _IPV4_STRICT_RE.fullmatch(host) is not None
    return _HOSTNAME_RE.fullmatch(host) is not None


def split_hostport(text: str) -> tuple[str, int | None]:
    """Split ``host[:port]``; IPv6 references keep their brackets."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ParseError("Unterminated IPv6 reference")
        host, rest = text[: end + 1], text[end + 1 :]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ParseError("Bad host:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.partition(":")
        if not sep:
            return host, None
    return host, parse_port(port_text)


def parse_port(text: str) -> int:
    if not (text.isdigit() and text.isascii()) or len(text) > 5 or int(text) > _PORT_MAX:
        raise ParseError("Bad port")
    return int(text)


def parse_uri_params(text: str) -> Params:
    """``;name[=value]`` pairs of a URI (no quoting inside URIs)."""
    if not text:
        return ()
    out: list[tuple[str, str | None]] = []
    for part in text.split(";")[1:]:
        name, eq, value = part.partition("=")
        if not _PARAMCHAR_RE.fullmatch(name):
            raise ParseError("Bad URI parameter")
        if eq:
            if not _PARAMCHAR_RE.fullmatch(value):
                raise ParseError("Bad URI parameter value")
            out.append((name, value))
        else:
            out.append((name, None))
    return tuple(out)


def _split_params(text: str) -> Params:
    """Like :func:`parse_uri_params` for text a regex has already checked."""
    out: list[tuple[str, str | None]] = []
    for part in text[1:].split(";"):
        name, eq, value = part.partition("=")
        out.append((name, value if eq else None))
    return tuple(out)


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


def get_param(params: Params, name: str) -> str | None:
    """The value of the first parameter called ``name`` (case-insensitive)."""
    lname = name.lower()
    for k, v in params:
        if k.lower() == lname:
            return v
    return None


def has_param(params: Params, name: str) -> bool:
    lname = name.lower()
    return any(k.lower() == lname for k, _ in params)


def set_param(params: Params, name: str, value: str | None) -> Params:
    lname = name.lower()
    out = [(k, v) for k, v in params if k.lower() != lname]
    out.append((name, value))
    return tuple(out)


def drop_param(params: Params, name: str) -> Params:
    lname = name.lower()
    return tuple((k, v) for k, v in params if k.lower() != lname)


@dataclass(frozen=True, slots=True)
class SipURI:
    """``sip:`` or ``sips:`` URI."""

    scheme: str
    host: str
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: Params = ()
    headers: str | None = None

    @property
    def secure(self) -> bool:
        return self.scheme == "sips"

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def has_param(self, name: str) -> bool:
        return has_param(self.params, name)

    @property
    def transport(self) -> str | None:
        t = self.param("transport")
        return t.lower() if t else None

    def with_params(self, **changes: str | None) -> SipURI:
        params = self.params
        for k, v in changes.items():
            params = set_param(params, k, v)
        return replace(self, params=params)

    def without_params(self, *names: str) -> SipURI:
        params = self.params
        for name in names:
            params = drop_param(params, name)
        return replace(self, params=params)

    @property
    def hostport(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out.append(":" + self.password)
            out.append("@")
        out.append(self.hostport)
        out.append(format_params(self.params))
        if self.headers is not None:
            out.append("?" + self.headers)
        return "".join(out)

    def equivalent(self, other: object) -> bool:
        """RFC 3261 §19.1.4 comparison."""
        if not isinstance(other, SipURI) or self.scheme != other.scheme:
            return False
        if _unescape(self.user) != _unescape(other.user):
            return False
        if _unescape(self.password) != _unescape(other.password):
            return False
        if self.host.lower() != other.host.lower() or self.port != other.port:
            return False
        mine = {k.lower(): v for k, v in self.params}
        theirs = {k.lower(): v for k, v in other.params}
        for name in ("user", "ttl", "method", "maddr", "transport"):
            if name in mine or name in theirs:
                a, b = mine.get(name), theirs.get(name)
                if a is None or b is None or a.lower() != b.lower():
                    return False
        for name in mine.keys() & theirs.keys():
            a, b = mine[name], theirs[name]
            if (a or "").lower() != (b or "").lower():
                return False
        return _headers_set(self.headers) == _headers_set(other.headers)


@dataclass(frozen=True, slots=True)
class TelURI:
    """``tel:`` URI (RFC 3966): the number and its parameters."""

    number: str
    params: Params = ()
    scheme: str = field(default="tel", init=False)

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def __str__(self) -> str:
        return f"tel:{self.number}{format_params(self.params)}"


@dataclass(frozen=True, slots=True)
class AbsoluteURI:
    """Any other scheme: syntactically a URI, not one this server routes."""

    scheme: str
    rest: str

    def __str__(self) -> str:
        return f"{self.scheme}:{self.rest}"


URI = SipURI | TelURI | AbsoluteURI

# The parsers build a SipURI for every URI of every message. A frozen
# dataclass's __init__ stores each field through object.__setattr__, which
# doubles that cost; _sip_uri() stores into the slots directly. It must name
# every field in order (tests/unit/sipd/sip/test_uri.py compares it with fields()).
_SIP_URI_FIELDS = ("scheme", "host", "user", "password", "port", "params", "headers")
# SipURI.__new__ is object.__new__ when interpreted; compiled with mypyc
# (sipd.io.compiled) a class must be allocated by its own __new__,
# and its fields are found through vars() rather than __dict__.
_new_sip_uri = SipURI.__new__
(
    _set_scheme,
    _set_host,
    _set_user,
    _set_password,
    _set_port,
    _set_params,
    _set_headers,
) = (vars(SipURI)[name].__set__ for name in _SIP_URI_FIELDS)


def _sip_uri(
    scheme: str,
    host: str,
    user: str | None,
    password: str | None,
    port: int | None,
    params: Params,
    headers: str | None,
) -> SipURI:
    uri = _new_sip_uri(SipURI)
    _set_scheme(uri, scheme)
    _set_host(uri, host)
    _set_user(uri, user)
    _set_password(uri, password)
    _set_port(uri, port)
    _set_params(uri, params)
    _set_headers(uri, headers)
    return uri


def _unescape(text: str | None) -> str | None:
    return None if text is None else unquote(text)


def _headers_set(text: str | None) -> frozenset[tuple[str, str]]:
    if not text:
        return frozenset()
    out = set()
    for part in text.split("&"):
        k, _, v = part.partition("=")
        out.add((unquote(k).lower(), unquote(v)))
    return frozenset(out)


#: URI texts whose :func:`parse_uri` answer is kept (least recently used go first).
PARSED_URIS = 4096
#: Longer texts are parsed each time: a few long URIs cannot fill the memory.
CACHED_URI_MAX = 256


def parse_uri(text: str) -> URI:
    """Parse a URI; unknown schemes come back as :class:`AbsoluteURI`.

    Raises :class:`ParseError` when the text is not a URI at all, or is a
    sip/sips/tel URI that breaks its grammar. Remembered for the last
    :data:`PARSED_URIS` texts, as :func:`~sipd.sip.headers.parse_address`
    is: a call's Request-URIs and addresses repeat, and a URI is immutable.
    """
    if len(text) > CACHED_URI_MAX:
        return _parse_uri(text)
    return _parse_uri_cached(text)


@functools.lru_cache(maxsize=PARSED_URIS)
def _parse_uri_cached(text: str) -> URI:
    return _parse_uri(text)


def _parse_uri(text: str) -> URI:
    scheme, colon, rest = text.partition(":")
    if not colon:
        raise ParseError("Bad URI: no scheme")
    if text[0] == "<":
        raise ParseError("Bad URI: enclosed in <>")
    if scheme == "sip" or scheme == "sips":
        return _parse_sip(scheme, rest)
    lscheme = scheme.lower()
    if lscheme == "sip" or lscheme == "sips":
        return _parse_sip(lscheme, rest)
    if not _SCHEME_RE.fullmatch(scheme):
        raise ParseError("Bad URI scheme")
    if lscheme == "tel":
        number, _, params = rest.partition(";")
        if not _TEL_RE.fullmatch(number):
            raise ParseError("Bad tel URI")
        return TelURI(number, parse_uri_params(";" + params) if params else ())
    if not rest or not _ABSOLUTE_RE.fullmatch(rest):
        raise ParseError("Bad URI")
    return AbsoluteURI(lscheme, rest)


def _parse_sip(scheme: str, rest: str) -> SipURI:
    m = _SIP_RE.fullmatch(rest)
    if m is None:
        raise ParseError(_sip_problem(rest))
    user, password, host, port_text, params_text, headers = m.groups()
    if host[0] == "[" and not is_ipv6(host[1:-1]):
        raise ParseError("Bad IPv6 host in URI")
    port = None
    if port_text is not None:
        # The pattern took ASCII digits only.
        port = int(port_text) if len(port_text) <= 5 else _PORT_MAX + 1
        if port > _PORT_MAX:
            raise ParseError("Bad port in URI")
    return _sip_uri(
        scheme,
        host.lower(),
        user,
        password,
        port,
        _split_params(params_text) if params_text else (),
        headers,
    )


def _sip_problem(rest: str) -> str:
    """Name what is wrong with a sip URI the fast pattern refused (error path only)."""
    at = rest.find("@")
    if at >= 0:
        user, colon, pw = rest[:at].partition(":")
        if not _USER_RE.fullmatch(user):
            return "Bad user part in URI"
        if colon and not _PASSWORD_RE.fullmatch(pw):
            return "Bad password in URI"
        rest = rest[at + 1 :]
    rest, qmark, headers_text = rest.partition("?")
    if qmark and not _HEADERS_RE.fullmatch(headers_text):
        return "Bad URI headers"
    hostport, semi, params_text = rest.partition(";")
    try:
        host, _ = split_hostport(hostport)
    except ParseError as exc:
        return f"{exc.reason} in URI"
    if not host or not valid_host(host):
        return "Bad host in URI"
    if semi:
        try:
            parse_uri_params(semi + params_text)
        except ParseError as exc:
            return exc.reason
    return "Bad SIP URI"


def parse_sip_uri(text: str) -> SipURI:
    """Like :func:`parse_uri` but insists on sip/sips."""
    uri = parse_uri(text)
    if not isinstance(uri, SipURI):
        raise ParseError("Not a SIP URI")
    return uri

"""SIP, SIPS and tel URIs (RFC 3261 §19.1 and §25.1, RFC 3966).

URIs are immutable values. Parsing keeps user, parameter and header text as
written (escapes included) so that a URI forwarded by the proxy is the URI it
received; comparison (RFC 3261 §19.1.4) is a separate, explicit operation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Union
from urllib.parse import unquote

from .errors import ParseError

Params = tuple[tuple[str, Union[str, None]], ...]

# RFC 3261 §25.1 character classes, as regular expression sets.
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
_ESCAPED = r"%[0-9A-Fa-f]{2}"
_USER_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/]|{_ESCAPED})+")
_PASSWORD_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESCAPED})*")
_PARAMCHAR_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESCAPED})+")
_HEADERS_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$=&]|{_ESCAPED})*")
_HOSTNAME_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)*"
    r"[A-Za-z](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.?"
)
_IPV4_RE = re.compile(r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}")
_IPV6_RE = re.compile(r"[0-9A-Fa-f:.]+")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
_TEL_RE = re.compile(r"\+?[0-9A-Fa-f*#\-.()pPwW]+")
_PORT_MAX = 65535


def is_ipv4(host: str) -> bool:
    if not _IPV4_RE.fullmatch(host):
        return False
    return all(int(part) <= 255 for part in host.split("."))


def is_ipv6(host: str) -> bool:
    """True for an IPv6 address *without* brackets."""
    if not _IPV6_RE.fullmatch(host) or host.count("::") > 1:
        return False
    import ipaddress

    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def valid_host(host: str) -> bool:
    """hostname / IPv4address / IPv6reference (with brackets)."""
    if host.startswith("["):
        return host.endswith("]") and is_ipv6(host[1:-1])
    if _IPV4_RE.fullmatch(host):
        return is_ipv4(host)
    return bool(_HOSTNAME_RE.fullmatch(host))


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
    if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > _PORT_MAX:
        raise ParseError("Bad port")
    return host, int(port_text)


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


URI = Union[SipURI, TelURI, AbsoluteURI]


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


def parse_uri(text: str) -> URI:
    """Parse a URI; unknown schemes come back as :class:`AbsoluteURI`.

    Raises :class:`ParseError` when the text is not a URI at all, or is a
    sip/sips/tel URI that breaks its grammar.
    """
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME_RE.fullmatch(scheme):
        raise ParseError("Bad URI")
    lscheme = scheme.lower()
    if lscheme in ("sip", "sips"):
        return _parse_sip(lscheme, rest)
    if lscheme == "tel":
        number, _, params = rest.partition(";")
        if not _TEL_RE.fullmatch(number):
            raise ParseError("Bad tel URI")
        return TelURI(number, parse_uri_params(";" + params) if params else ())
    if not rest or any(c in rest for c in " \t<>\""):
        raise ParseError("Bad URI")
    return AbsoluteURI(lscheme, rest)


def _parse_sip(scheme: str, rest: str) -> SipURI:
    user = password = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user, colon, pw = userinfo.partition(":")
        if not _USER_RE.fullmatch(user):
            raise ParseError("Bad user part in URI")
        if colon:
            if not _PASSWORD_RE.fullmatch(pw):
                raise ParseError("Bad password in URI")
            password = pw
    rest, qmark, headers_text = rest.partition("?")
    if qmark and not _HEADERS_RE.fullmatch(headers_text):
        raise ParseError("Bad URI headers")
    semi = rest.find(";")
    hostport, params_text = (rest, "") if semi < 0 else (rest[:semi], rest[semi:])
    host, port = split_hostport(hostport)
    if not valid_host(host):
        raise ParseError("Bad host in URI")
    return SipURI(
        scheme=scheme,
        host=host.lower(),
        user=user,
        password=password,
        port=port,
        params=parse_uri_params(params_text),
        headers=headers_text if qmark else None,
    )


def parse_sip_uri(text: str) -> SipURI:
    """Like :func:`parse_uri` but insists on sip/sips."""
    uri = parse_uri(text)
    if not isinstance(uri, SipURI):
        raise ParseError("Not a SIP URI")
    return uri

"""Typed values of the header fields the server reads (RFC 3261 §20, §25.1).

Header values arrive unfolded (continuation lines joined with a space) and
decoded with ``surrogateescape``, so bytes that are not UTF-8 survive a
parse/serialise round trip. Every parser here raises :class:`ParseError`
with a reason naming the header; the values serialise back to text that
keeps quoted parameters intact (``+sip.instance="<urn:uuid:...>"``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .errors import ParseError
from .uri import (
    URI,
    Params,
    SipURI,
    drop_param,
    get_param,
    has_param,
    parse_uri,
    set_param,
    split_hostport,
    valid_host,
    is_ipv6,
)

_TOKEN_CHARS = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~"
)
_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_WS = " \t"


def is_token(text: str) -> bool:
    return bool(_TOKEN_RE.fullmatch(text))


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quotes and ``<...>``.

    Empty elements (``a,,b``) are dropped, as RFC 7230's list rule allows.
    """
    if "," not in value:
        v = value.strip()
        return [v] if v else []
    out: list[str] = []
    start = 0
    in_quote = in_angle = False
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if in_quote:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == "<":
            in_angle = True
        elif c == ">":
            in_angle = False
        elif c == "," and not in_angle:
            part = value[start:i].strip()
            if part:
                out.append(part)
            start = i + 1
        i += 1
    if in_quote:
        raise ParseError("Unterminated quoted string")
    part = value[start:].strip()
    if part:
        out.append(part)
    return out


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WS:
        i += 1
    return i


def _read_quoted(text: str, i: int) -> tuple[str, int]:
    """Read a quoted-string starting at ``text[i] == '"'``; returns it *with* quotes."""
    j = i + 1
    n = len(text)
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return text[i : j + 1], j + 1
        j += 1
    raise ParseError("Unterminated quoted string")


def unquote(text: str) -> str:
    """Remove surrounding quotes and backslash escapes (quoted-pair)."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        return re.sub(r"\\(.)", r"\1", text[1:-1])
    return text


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_params(text: str, i: int = 0, what: str = "header") -> tuple[Params, int]:
    """Parse ``*( SEMI generic-param )`` from ``text[i:]``.

    Values are kept as written: a quoted value keeps its quotes, so it can
    be serialised back unchanged; use :func:`unquote` to read one. Stops at
    the first character that cannot continue the list (a comma, say) and
    returns its index.
    """
    out: list[tuple[str, str | None]] = []
    n = len(text)
    while True:
        i = _skip_ws(text, i)
        if i >= n or text[i] != ";":
            return tuple(out), i
        i = _skip_ws(text, i + 1)
        start = i
        while i < n and text[i] in _TOKEN_CHARS:
            i += 1
        name = text[start:i]
        if not name:
            raise ParseError(f"Bad {what} parameter")
        i = _skip_ws(text, i)
        if i < n and text[i] == "=":
            i = _skip_ws(text, i + 1)
            if i < n and text[i] == '"':
                value, i = _read_quoted(text, i)
            else:
                start = i
                # token / host (IPv6 references contain ':' and brackets)
                while i < n and (text[i] in _TOKEN_CHARS or text[i] in "[]:"):
                    i += 1
                value = text[start:i]
                if not value:
                    raise ParseError(f"Bad {what} parameter value")
            out.append((name, value))
        else:
            out.append((name, None))


def format_header_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


# --------------------------------------------------------------------- Via


@dataclass(frozen=True, slots=True)
class Via:
    """One via-parm: ``SIP/2.0/UDP host:port;params``."""

    transport: str
    host: str
    port: int | None = None
    params: Params = ()
    protocol: str = "SIP/2.0"

    @property
    def branch(self) -> str | None:
        return get_param(self.params, "branch")

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def has_param(self, name: str) -> bool:
        return has_param(self.params, name)

    def with_param(self, name: str, value: str | None) -> Via:
        """Set a parameter, keeping its place if it already exists."""
        lname = name.lower()
        if any(k.lower() == lname for k, _ in self.params):
            params = tuple((k, value) if k.lower() == lname else (k, v) for k, v in self.params)
        else:
            params = self.params + ((name, value),)
        return replace(self, params=params)

    def without_param(self, name: str) -> Via:
        return replace(self, params=drop_param(self.params, name))

    @property
    def sent_by(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.protocol}/{self.transport} {self.sent_by}{format_header_params(self.params)}"


_VIA_HEAD_RE = re.compile(
    r"\s*([A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*([A-Za-z0-9\-.!%*_+`'~]+)\s*/\s*"
    r"([A-Za-z0-9\-.!%*_+`'~]+)\s+"
)


def parse_via(text: str) -> Via:
    """Parse one via-parm (the caller splits comma-separated lists)."""
    m = _VIA_HEAD_RE.match(text)
    if not m:
        raise ParseError("Bad Via header")
    name, version, transport = m.groups()
    if name.upper() != "SIP":
        raise ParseError("Bad Via header: protocol is not SIP")
    i = m.end()
    n = len(text)
    start = i
    if i < n and text[i] == "[":
        end = text.find("]", i)
        if end < 0:
            raise ParseError("Bad Via sent-by")
        i = end + 1
    while i < n and text[i] not in ";" + _WS:
        i += 1
    hostport = text[start:i]
    # Spaces are allowed around the ':' of sent-by (RFC 3261 §25.1 COLON).
    j = _skip_ws(text, i)
    if j < n and text[j] == ":" and ":" not in hostport.rpartition("]")[2]:
        k = _skip_ws(text, j + 1)
        e = k
        while e < n and text[e].isdigit():
            e += 1
        hostport = hostport + ":" + text[k:e]
        i = e
    try:
        host, port = split_hostport(hostport)
    except ParseError:
        raise ParseError("Bad Via sent-by") from None
    if not valid_host(host):
        raise ParseError("Bad Via sent-by host")
    params, i = parse_params(text, i, "Via")
    if _skip_ws(text, i) != n:
        raise ParseError("Bad Via header")
    for k, v in params:
        lk = k.lower()
        if lk == "branch" and not v:
            raise ParseError("Bad Via branch")
        if lk == "received" and v is not None and not (valid_host(v) or is_ipv6(v)):
            raise ParseError("Bad Via received")
        if lk == "rport" and v is not None and not (v.isdigit() and 0 < int(v) < 65536):
            raise ParseError("Bad Via rport")
        if lk == "ttl" and v is not None and not (v.isdigit() and int(v) <= 255):
            raise ParseError("Bad Via ttl")
    return Via(
        transport=transport.upper(),
        host=host.lower(),
        port=port,
        params=params,
        protocol=f"{name.upper()}/{version}",
    )


# ------------------------------------------------- name-addr / addr-spec


@dataclass(frozen=True, slots=True)
class Address:
    """From, To, Contact, Route, Record-Route, Path: ``"Name" <uri>;params``.

    ``display`` is the display name as written (quotes included) or None;
    :attr:`display_text` gives it unquoted.
    """

    uri: URI
    display: str | None = None
    params: Params = ()

    @property
    def tag(self) -> str | None:
        return get_param(self.params, "tag")

    def param(self, name: str) -> str | None:
        return get_param(self.params, name)

    def has_param(self, name: str) -> bool:
        return has_param(self.params, name)

    def with_param(self, name: str, value: str | None) -> Address:
        return replace(self, params=set_param(self.params, name, value))

    def without_param(self, name: str) -> Address:
        return replace(self, params=drop_param(self.params, name))

    @property
    def display_text(self) -> str | None:
        return None if self.display is None else unquote(self.display)

    @property
    def sip_uri(self) -> SipURI | None:
        return self.uri if isinstance(self.uri, SipURI) else None

    def __str__(self) -> str:
        head = f"{self.display} " if self.display else ""
        return f"{head}<{self.uri}>{format_header_params(self.params)}"


def parse_address(text: str, what: str = "address") -> Address:
    """Parse one ``(name-addr / addr-spec) *(SEMI param)``."""
    i = _skip_ws(text, 0)
    n = len(text)
    display: str | None = None
    if i < n and text[i] == '"':
        display, i = _read_quoted(text, i)
        i = _skip_ws(text, i)
        if i >= n or text[i] != "<":
            raise ParseError(f"Bad {what}: display name without <URI>")
    elif "<" in text:
        lt = text.index("<")
        words = text[i:lt].strip()
        if words:
            # display-name = *(token LWS) / quoted-string
            if not all(is_token(w) for w in words.split()):
                raise ParseError(f"Bad {what}: bad display name")
            display = " ".join(words.split())
        i = lt
    if i < n and text[i] == "<":
        end = text.find(">", i)
        if end < 0:
            raise ParseError(f"Bad {what}: missing '>'")
        uri_text = text[i + 1 : end].strip()
        i = end + 1
    else:
        # addr-spec: the URI cannot contain ';', ',' or '?' here, so the
        # first ';' starts the header parameters (RFC 3261 §20.10).
        start = i
        while i < n and text[i] not in ";" + _WS:
            i += 1
        uri_text = text[start:i]
    try:
        uri = parse_uri(uri_text)
    except ParseError as exc:
        raise ParseError(f"Bad {what}: {exc.reason}") from None
    params, i = parse_params(text, i, what)
    if _skip_ws(text, i) != n:
        raise ParseError(f"Bad {what}")
    return Address(uri=uri, display=display, params=params)


# -------------------------------------------------------------- CSeq etc.


@dataclass(frozen=True, slots=True)
class CSeq:
    seq: int
    method: str

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


_CSEQ_RE = re.compile(r"\s*(\d{1,10})\s+([A-Za-z0-9\-.!%*_+`'~]+)\s*")


def parse_cseq(text: str) -> CSeq:
    m = _CSEQ_RE.fullmatch(text)
    if not m:
        raise ParseError("Bad CSeq header")
    seq = int(m.group(1))
    if seq >= 2**31:
        raise ParseError("Bad CSeq: number too large")
    return CSeq(seq, m.group(2))


def parse_uint(text: str, what: str, limit: int = 2**32 - 1) -> int:
    t = text.strip()
    if not t.isdigit() or not t.isascii():
        raise ParseError(f"Bad {what} header")
    value = int(t)
    if value > limit:
        raise ParseError(f"Bad {what}: value too large")
    return value


def parse_token_list(text: str, what: str) -> list[str]:
    out = []
    for item in split_list(text):
        if not is_token(item):
            raise ParseError(f"Bad {what} header")
        out.append(item)
    return out


# Re-exported for callers that build header values.
__all__ = [
    "Address",
    "CSeq",
    "Via",
    "format_header_params",
    "is_token",
    "parse_address",
    "parse_cseq",
    "parse_params",
    "parse_token_list",
    "parse_uint",
    "parse_via",
    "quote",
    "split_list",
    "unquote",
]

"""Typed values of the header fields the server reads (RFC 3261 §20, §25.1).

Header values arrive unfolded (continuation lines joined with a space) and
decoded with ``surrogateescape``, so bytes that are not UTF-8 survive a
parse/serialise round trip. Every parser here raises :class:`ParseError`
with a reason naming the header; the values serialise back to text that
keeps quoted parameters intact (``+sip.instance="<urn:uuid:...>"``).

The parsers match whole productions with compiled patterns rather than
walking characters in Python: these run for every message the server
receives, and one regex call costs about what three Python steps do.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace

from sipd.sip.errors import ParseError
from sipd.sip.uri import (
    HOST_PATTERN,
    URI,
    Params,
    SipURI,
    drop_param,
    get_param,
    has_param,
    is_ipv6,
    parse_uri,
    set_param,
    valid_host,
)

#: The characters of a token (RFC 3261 §25.1), as a string for
#: ``str.strip``: what it leaves of a token is "".
TOKEN_CHARACTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.!%*_+`'~"
_TOKEN_CHARS = frozenset(TOKEN_CHARACTERS)
_TOKEN = rf"[{re.escape(TOKEN_CHARACTERS)}]+"
# quoted-string (RFC 3261 §25.1): qdtext is any character but '"', '\' and
# controls other than HT; quoted-pair escapes any ASCII except CR and LF.
# Non-ASCII is let through as is, including surrogate escapes of bytes that
# are not UTF-8, so that a Latin-1 display name round-trips.
# Written as an unrolled loop (runs of plain characters, then one pair) so
# that the regex engine spends its time in a tight character-class loop.
_QDTEXT = r'[^"\\\x00-\x08\x0a-\x1f\x7f]*'
_QUOTED = rf'"{_QDTEXT}(?:\\[\x00-\x09\x0b\x0c\x0e-\x7f]{_QDTEXT})*"'
_QUOTED_RE = re.compile(_QUOTED)
#: The pattern of a quoted-string, for the parsers of other headers.
QUOTED_STRING = _QUOTED
# gen-value = token / host / quoted-string; host adds ':' and brackets (IPv6).
# The characters of a token or host value, also for str.strip.
_GEN_VALUE_TEXT = TOKEN_CHARACTERS + ":[]"
_PARAM_RE = re.compile(
    rf"[ \t]*;[ \t]*({_TOKEN})(?:[ \t]*=[ \t]*({_QUOTED}|[{re.escape(_GEN_VALUE_TEXT)}]+))?"
)
_VIA_RE = re.compile(
    rf"[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]*/[ \t]*({_TOKEN})[ \t]+"
    rf"({HOST_PATTERN})(?:[ \t]*:[ \t]*([0-9]+))?"
)
_HOST_RE = re.compile(HOST_PATTERN)
_VIA_PROTOCOL_RE = re.compile(rf"[ \t]*{_TOKEN}[ \t]*/[ \t]*{_TOKEN}[ \t]*/[ \t]*{_TOKEN}[ \t]+")
# display-name = *(token LWS); RFC 4475 §3.1.1.6 asks to accept it without
# the LWS before '<' as well, which this allows. Non-ASCII is let into the
# tokens too: phones send "From: Jürgen <sip:...>" unquoted, and refusing
# every call from them would help nobody.
# Words are separated by mandatory whitespace: with "(?:word[ \t]*)+" a long
# word could be split in exponentially many ways before a match fails.
_DISPLAY_WORD = r"[A-Za-z0-9\-.!%*_+`'~\x80-\U0010ffff]+"
_DISPLAY_WORDS = rf"{_DISPLAY_WORD}(?:[ \t]+{_DISPLAY_WORD})*"
_DISPLAY_TOKENS_RE = re.compile(rf"[ \t]*(?:{_DISPLAY_WORDS})?[ \t]*")
_ADDR_SPEC_RE = re.compile(r"[^; \t]*")
# The usual shapes of a name-addr in one match: optional quoted or token
# display name, then <URI>. Anything else (addr-spec, errors) takes the
# slower path that can say what is wrong.
_NAME_ADDR_RE = re.compile(rf"[ \t]*(?:({_QUOTED})|({_DISPLAY_WORDS}))?[ \t]*<([^<>]*)>")
_TOKEN_LIST_RE = re.compile(rf"[ \t]*{_TOKEN}[ \t]*(?:,[ \t]*{_TOKEN}[ \t]*)*")
_CSEQ_RE = re.compile(rf"[ \t]*([0-9]+)[ \t]+({_TOKEN})[ \t]*")
_LIST_SPECIAL_RE = re.compile(r'[\\",<>]')
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
_WS = " \t"
_UINT32_MAX = 2**32 - 1


def is_token(text: str) -> bool:
    # str.strip with the alphabet: cheaper than a pattern's fullmatch, and
    # the quick readings of Via and Authorization ask it for every part.
    return bool(text) and not text.strip(TOKEN_CHARACTERS)


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quotes and ``<...>``.

    Empty elements (``a,,b``) are dropped, as RFC 7230's list rule allows.
    """
    if "," not in value:
        v = value.strip(_WS)
        return [v] if v else []
    if '"' not in value and "<" not in value:
        return [p for p in (x.strip(_WS) for x in value.split(",")) if p]
    out: list[str] = []
    start = 0
    in_quote = in_angle = False
    escaped_to = -1
    for m in _LIST_SPECIAL_RE.finditer(value):
        i = m.start()
        if i < escaped_to:
            continue
        c = value[i]
        if in_quote:
            if c == "\\":
                escaped_to = i + 2
            elif c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == "<":
            in_angle = True
        elif c == ">":
            in_angle = False
        elif c == "," and not in_angle:
            part = value[start:i].strip(_WS)
            if part:
                out.append(part)
            start = i + 1
    if in_quote:
        raise ParseError("Unterminated quoted string")
    part = value[start:].strip(_WS)
    if part:
        out.append(part)
    return out


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WS:
        i += 1
    return i


def _read_quoted(text: str, i: int, what: str = "header") -> tuple[str, int]:
    """Read a quoted-string starting at ``text[i] == '"'``; returns it *with* quotes."""
    m = _QUOTED_RE.match(text, i)
    if m is None:
        raise ParseError(f"Bad {what}: {_quoted_problem(text, i)}")
    return m.group(), m.end()


def _quoted_problem(text: str, i: int) -> str:
    j = i + 1
    n = len(text)
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return "bad character in quoted string"
        j += 1
    return "unterminated quoted string"


def unquote(text: str) -> str:
    """Remove surrounding quotes and backslash escapes (quoted-pair)."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        return _QUOTED_PAIR_RE.sub(r"\1", inner) if "\\" in inner else inner
    return text


def quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_params(text: str, i: int = 0, what: str = "header") -> tuple[Params, int]:
    """Parse ``*( SEMI generic-param )`` from ``text[i:]``.

    Values are kept as written: a quoted value keeps its quotes, so it can
    be serialised back unchanged; use :func:`unquote` to read one. Stops at
    the first character that cannot continue the list (a comma, say) and
    returns its index; a ``;`` or ``=`` there is a malformed parameter and
    raises :class:`ParseError`.
    """
    out: list[tuple[str, str | None]] = []
    match = _PARAM_RE.match
    m = match(text, i)
    while m is not None:
        out.append(m.groups())  # type: ignore[arg-type]  # (name, value or None)
        i = m.end()
        m = match(text, i)
    if i < len(text):
        j = _skip_ws(text, i)
        c = text[j] if j < len(text) else ""
        if c == ";":
            k = _skip_ws(text, j + 1)
            if k < len(text) and text[k] in _TOKEN_CHARS:
                raise ParseError(f"Bad {what} parameter value")
            raise ParseError(f"Bad {what} parameter")
        if c == "=":
            raise ParseError(f"Bad {what} parameter value")
    return tuple(out), i


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


# Parameters whose values RFC 3261 §20.42 constrains; the rest are free.
_VIA_CHECKED = frozenset(("branch", "received", "rport", "ttl", "maddr"))


def parse_via(text: str) -> Via:
    """Parse one via-parm (the caller splits comma-separated lists)."""
    via = _via_as_sent(text)
    return via if via is not None else _via_by_pattern(text)


def _via_by_pattern(text: str) -> Via:
    """:func:`parse_via` for any spelling, with the reason for what is wrong."""
    m = _VIA_RE.match(text)
    if m is None:
        if _VIA_PROTOCOL_RE.match(text):
            raise ParseError("Bad Via sent-by")
        raise ParseError("Bad Via header")
    name, version, transport, host, port_text = m.groups()
    if name != "SIP" and name.upper() != "SIP":
        raise ParseError("Bad Via header: protocol is not SIP")
    if host[0] == "[" and not is_ipv6(host[1:-1]):
        raise ParseError("Bad Via sent-by host")
    port = None
    if port_text is not None:
        port = int(port_text) if len(port_text) <= 5 else 65536
        if port > 65535:
            raise ParseError("Bad Via sent-by port")
    params, i = parse_params(text, m.end(), "Via")
    if i != len(text) and _skip_ws(text, i) != len(text):
        raise ParseError("Bad Via header")
    for k, v in params:
        lk = k.lower()
        if lk in _VIA_CHECKED:
            _check_via_param(lk, v)
    return _via(
        transport if transport.isupper() else transport.upper(),
        host.lower(),
        port,
        params,
        "SIP/2.0" if version == "2.0" else f"{name.upper()}/{version}",
    )


def _via_as_sent(text: str) -> Via | None:
    """``text`` read as :func:`parse_via` reads it when it is spelled as phones
    spell it, else None for that function's reading.

    That spelling: ``SIP/2.0/<transport> <host>[:<port>]`` and parameters
    ``;name`` or ``;name=value`` with a token or host as value, no
    whitespace, no quotes. The string's own searches take it apart, and a
    pattern matches the host alone: a fifth fewer instructions than the
    whole header's pattern and the parameters' one at a time.
    """
    if not text.startswith("SIP/2.0/"):
        return None
    sp = text.find(" ", 8)
    transport = text[8:sp]
    if sp < 0 or not is_token(transport):
        return None
    hm = _HOST_RE.match(text, sp + 1)
    if hm is None or text.startswith("[", sp + 1):
        return None  # an IPv6 reference is checked as an address there
    host = hm.group()
    i = hm.end()
    n = len(text)
    port: int | None = None
    if i < n and text[i] == ":":
        semi = text.find(";", i)
        end = n if semi < 0 else semi
        digits = text[i + 1:end]
        if not (digits.isascii() and digits.isdigit()) or len(digits) > 5:
            return None
        port = int(digits)
        if port > 65535:
            return None
        i = end
    if i == n:
        params: Params = ()
    elif text[i] != ";":
        return None
    else:
        rest = text[i + 1:]
        if '"' in rest or " " in rest or "\t" in rest:
            return None
        found: list[tuple[str, str | None]] = []
        for item in rest.split(";"):
            name, eq, value = item.partition("=")
            if not is_token(name):
                return None
            if not eq:
                found.append((name, None))
            elif not value or value.strip(_GEN_VALUE_TEXT):
                return None
            else:
                found.append((name, value))
        params = tuple(found)
        for k, v in params:
            lk = k.lower()
            if lk in _VIA_CHECKED:
                _check_via_param(lk, v)
    return _via(transport if transport.isupper() else transport.upper(), host.lower(), port,
                params, "SIP/2.0")


def _check_via_param(name: str, value: str | None) -> None:
    if name == "branch":
        if not value or value[0] == '"':
            raise ParseError("Bad Via branch")
    elif name == "received":
        if value is None or not (valid_host(value) or is_ipv6(value)):
            raise ParseError("Bad Via received")
    elif name == "rport":
        if value is not None and not (value.isascii() and value.isdigit() and len(value) <= 5 and 0 < int(value) < 65536):
            raise ParseError("Bad Via rport")
    elif name == "ttl":
        if value is None or not (value.isascii() and value.isdigit() and len(value) <= 3 and int(value) <= 255):
            raise ParseError("Bad Via ttl")
    elif name == "maddr":
        if value is None or not valid_host(value):
            raise ParseError("Bad Via maddr")


# Like uri._sip_uri: slot stores instead of the frozen dataclass __init__,
# for the Via and Address objects every message brings.
_VIA_FIELDS = ("transport", "host", "port", "params", "protocol")
_new_via = Via.__new__
_via_transport, _via_host, _via_port, _via_params, _via_protocol = (
    vars(Via)[name].__set__ for name in _VIA_FIELDS
)


def _via(transport: str, host: str, port: int | None, params: Params, protocol: str) -> Via:
    via = _new_via(Via)
    _via_transport(via, transport)
    _via_host(via, host)
    _via_port(via, port)
    _via_params(via, params)
    _via_protocol(via, protocol)
    return via


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


#: Address texts whose :func:`parse_address` answer is kept (least recently used go first).
PARSED_ADDRESSES = 4096
#: Longer texts are parsed each time: a few long fields cannot fill the memory.
CACHED_TEXT_MAX = 256


def parse_address(text: str, what: str = "address") -> Address:
    """Parse one ``(name-addr / addr-spec) *(SEMI param)``.

    ``what`` names the field in error reasons ("Bad To header: ...").
    Remembered for the last :data:`PARSED_ADDRESSES` texts: one call's
    messages repeat the same From, To, Contact and Route values a couple of
    dozen times, and the answer is an immutable value. A text that fails
    is parsed again each time, for its reason.
    """
    if len(text) > CACHED_TEXT_MAX:
        return _parse_address(text, what)
    return _parse_address_cached(text, what)


@functools.lru_cache(maxsize=PARSED_ADDRESSES)
def _parse_address_cached(text: str, what: str) -> Address:
    return _parse_address(text, what)


def _parse_address(text: str, what: str) -> Address:
    m = _NAME_ADDR_RE.match(text)
    if m is not None:
        display, words, uri_text = m.groups()
        if words is not None:
            display = " ".join(words.split())
        if " " in uri_text or "\t" in uri_text:
            # LAQUOT/RAQUOT allow no space inside the brackets (RFC 4475 §3.1.2.14).
            raise ParseError(f"Bad {what}: whitespace inside <URI>")
        i = m.end()
    else:
        display, uri_text, i = _addr_spec_or_problem(text, what)
    try:
        uri = parse_uri(uri_text)
    except ParseError as exc:
        raise ParseError(f"Bad {what}: {exc.reason}") from None
    n = len(text)
    if i == n:
        return _address(uri, display, ())
    params, i = parse_params(text, i, what)
    if i != n and _skip_ws(text, i) != n:
        raise ParseError(f"Bad {what}")
    return _address(uri, display, params)


def _addr_spec_or_problem(text: str, what: str) -> tuple[None, str, int]:
    """The URI of an addr-spec and where it ends, or the reason it is not one."""
    n = len(text)
    i = _skip_ws(text, 0)
    if i >= n:
        raise ParseError(f"Bad {what}: empty")
    c = text[i]
    if c == '"':
        _, j = _read_quoted(text, i, what)
        j = _skip_ws(text, j)
        if j >= n or text[j] != "<":
            raise ParseError(f"Bad {what}: display name without <URI>")
        raise ParseError(f"Bad {what}: missing '>'")
    lt = text.find("<", i)
    # A ':' before the '<' means an addr-spec whose parameters hold a '<'
    # (in a quoted value); a display name cannot contain one.
    if lt >= 0 and ":" not in text[i:lt]:
        if c != "<" and not _DISPLAY_TOKENS_RE.fullmatch(text, i, lt):
            raise ParseError(f"Bad {what}: bad display name")
        if text.find(">", lt) < 0:
            raise ParseError(f"Bad {what}: missing '>'")
        raise ParseError(f"Bad {what}: bad <URI>")
    # addr-spec: the URI ends at the first ';' (RFC 3261 §20.10), so it
    # cannot carry URI parameters, headers or commas.
    m = _ADDR_SPEC_RE.match(text, i)
    assert m is not None  # the pattern matches the empty string
    uri_text = m.group()
    if "?" in uri_text or "," in uri_text:
        raise ParseError(f"Bad {what}: a URI with '?' or ',' must be enclosed in <>")
    return None, uri_text, m.end()


_ADDRESS_FIELDS = ("uri", "display", "params")
_addr_uri, _addr_display, _addr_params = (vars(Address)[name].__set__ for name in _ADDRESS_FIELDS)
_new_address = Address.__new__


def _address(uri: URI, display: str | None, params: Params) -> Address:
    addr = _new_address(Address)
    _addr_uri(addr, uri)
    _addr_display(addr, display)
    _addr_params(addr, params)
    return addr


# -------------------------------------------------------------- CSeq etc.


@dataclass(frozen=True, slots=True)
class CSeq:
    seq: int
    method: str

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, seq: int, method: str) -> None:
        object.__setattr__(self, "seq", seq)
        object.__setattr__(self, "method", method)

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(text: str) -> CSeq:
    """``1*DIGIT LWS Method``.

    The number may be up to 2**32-1: RFC 3261 §8.1.1.5 has senders stay
    below 2**31, and RFC 4475 §3.1.2.4 calls only larger values invalid.
    """
    m = _CSEQ_RE.fullmatch(text)
    if m is None:
        raise ParseError("Bad CSeq header")
    digits, method = m.groups()
    seq = int(digits) if len(digits) <= 10 else _uint(digits)
    if seq is None or seq > _UINT32_MAX:
        raise ParseError("Bad CSeq: sequence number too large")
    return CSeq(seq, method)


def _uint(digits: str) -> int | None:
    """int() of ASCII digits, or None when longer than any limit we use.

    Python refuses to convert strings of over 4300 digits (ValueError) and
    big conversions are slow, so the length is checked first.
    """
    if len(digits) > 10:
        digits = digits.lstrip("0")
        if len(digits) > 10:
            return None
    return int(digits) if digits else 0


def parse_uint(text: str, what: str, limit: int = _UINT32_MAX) -> int:
    t = text.strip(_WS)
    if not (t.isdigit() and t.isascii()):
        raise ParseError(f"Bad {what} header")
    value = _uint(t)
    if value is None or value > limit:
        raise ParseError(f"Bad {what}: value too large")
    return value


def parse_token_list(text: str, what: str) -> list[str]:
    if _TOKEN_LIST_RE.fullmatch(text):
        return [t.strip(_WS) for t in text.split(",")]
    out = split_list(text)
    for item in out:
        if not is_token(item):
            raise ParseError(f"Bad {what} header")
    return out


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

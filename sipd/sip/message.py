"""SIP messages: parse, inspect, change, serialise (RFC 3261 §7, §20, §25).

The model keeps every header field as text, in order, under a canonical
name, and parses the values the server reads (Via, From, To, CSeq, Contact,
...) on first access. This is what a proxy needs: it rewrites a few fields
and forwards the rest exactly as received.

Why not sipmessage's parser on this path: it decodes whole messages as
strict UTF-8, mis-reads folded lines and quoted parameters such as
``+sip.instance="<urn:uuid:...>"``, re-escapes parameters on output and
ignores Content-Length (see the project's notes). :meth:`Message.to_sipmessage`
converts to its model for tools and tests that want it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Iterable, Iterator

from .errors import ParseError, SipError
from .headers import (
    Address,
    CSeq,
    Via,
    parse_address,
    parse_cseq,
    parse_token_list,
    parse_uint,
    parse_via,
    split_list,
)
from .uri import URI, parse_uri

if TYPE_CHECKING:
    import sipmessage

#: Largest message accepted on any transport (bytes). UDP datagrams larger
#: than this are dropped; a TCP connection that announces more is closed.
MAX_MESSAGE_SIZE = 65535
#: Most header fields one message may carry.
MAX_HEADERS = 128

COMPACT_FORMS = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_KNOWN = [
    "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow",
    "Allow-Events", "Authentication-Info", "Authorization", "Call-ID", "Call-Info",
    "Contact", "Content-Disposition", "Content-Encoding", "Content-Language",
    "Content-Length", "Content-Type", "CSeq", "Date", "Error-Info", "Event",
    "Expires", "From", "In-Reply-To", "Max-Forwards", "Min-Expires", "MIME-Version",
    "Organization", "P-Asserted-Identity", "P-Preferred-Identity", "Path",
    "Priority", "Privacy", "Proxy-Authenticate", "Proxy-Authorization",
    "Proxy-Require", "RAck", "Reason", "Record-Route", "Refer-To", "Referred-By",
    "Reply-To", "Require", "Retry-After", "Route", "RSeq", "Server",
    "Service-Route", "Session-Expires", "Subject", "Subscription-State",
    "Supported", "Timestamp", "To", "Unsupported", "User-Agent", "Via",
    "Warning", "WWW-Authenticate",
]
#: lower-case name -> canonical spelling, compact forms included.
CANONICAL: dict[str, str] = {n.lower(): n for n in _KNOWN}
CANONICAL.update(COMPACT_FORMS)

#: Header fields whose value is a comma-separated list (RFC 3261 §7.3.1);
#: the others must not be split at commas (Authorization, Date, ...).
LIST_HEADERS = frozenset(
    h.lower()
    for h in (
        "Accept", "Accept-Encoding", "Accept-Language", "Allow", "Allow-Events",
        "Contact", "Content-Encoding", "Content-Language", "In-Reply-To", "Path",
        "Proxy-Require", "Record-Route", "Require", "Route", "Service-Route",
        "Supported", "Unsupported", "Via", "P-Asserted-Identity", "Privacy",
    )
)

#: Fields that may appear at most once (RFC 3261 Table 2/3).
SINGLE_HEADERS = ("Call-ID", "CSeq", "From", "To", "Max-Forwards", "Content-Length",
                  "Expires", "Content-Type")

REASONS = {
    100: "Trying", 180: "Ringing", 181: "Call Is Being Forwarded", 182: "Queued",
    183: "Session Progress", 200: "OK", 202: "Accepted", 300: "Multiple Choices",
    301: "Moved Permanently", 302: "Moved Temporarily", 305: "Use Proxy",
    380: "Alternative Service", 400: "Bad Request", 401: "Unauthorized",
    402: "Payment Required", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable",
    407: "Proxy Authentication Required", 408: "Request Timeout", 410: "Gone",
    413: "Request Entity Too Large", 414: "Request-URI Too Long",
    415: "Unsupported Media Type", 416: "Unsupported URI Scheme",
    420: "Bad Extension", 421: "Extension Required", 423: "Interval Too Brief",
    480: "Temporarily Unavailable", 481: "Call/Transaction Does Not Exist",
    482: "Loop Detected", 483: "Too Many Hops", 484: "Address Incomplete",
    485: "Ambiguous", 486: "Busy Here", 487: "Request Terminated",
    488: "Not Acceptable Here", 491: "Request Pending", 493: "Undecipherable",
    500: "Server Internal Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Server Time-out", 505: "Version Not Supported",
    513: "Message Too Large", 600: "Busy Everywhere", 603: "Decline",
    604: "Does Not Exist Anywhere", 606: "Not Acceptable",
}

_TOKEN_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_VERSION_RE = re.compile(r"SIP/(\d+)\.(\d+)", re.IGNORECASE)
_STATUS_RE = re.compile(r"[1-6]\d\d")
_CALLID_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+(?:@[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+)?")


def canonical_name(name: str) -> str:
    return CANONICAL.get(name.lower(), name)


class Message:
    """Common part of requests and responses: header fields and body."""

    __slots__ = ("_headers", "body", "_cache")

    version: str

    def __init__(
        self,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        self._headers: list[tuple[str, str, str]] = [
            (n.lower(), n, v) for n, v in ((canonical_name(n), v) for n, v in headers)
        ]
        self.body = body
        self._cache: dict[str, Any] = {}

    # ------------------------------------------------------ raw header access

    def headers(self) -> list[tuple[str, str]]:
        """All fields in order, as ``(name, value)``."""
        return [(n, v) for _, n, v in self._headers]

    def get(self, name: str) -> str | None:
        """The first field called ``name`` (any case, compact forms too)."""
        key = canonical_name(name).lower()
        for k, _, v in self._headers:
            if k == key:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        """Every field called ``name``, one entry per header line."""
        key = canonical_name(name).lower()
        return [v for k, _, v in self._headers if k == key]

    def values(self, name: str) -> list[str]:
        """Every value of a list header, comma-separated values split."""
        out: list[str] = []
        for v in self.get_all(name):
            out.extend(split_list(v))
        return out

    def count(self, name: str) -> int:
        key = canonical_name(name).lower()
        return sum(1 for k, _, _ in self._headers if k == key)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def add(self, name: str, value: str) -> None:
        """Append a field after the others."""
        name = canonical_name(name)
        self._headers.append((name.lower(), name, value))
        self._cache.clear()

    def prepend(self, name: str, value: str) -> None:
        """Insert a field before the first field of that name (or first of all)."""
        name = canonical_name(name)
        key = name.lower()
        for i, (k, _, _) in enumerate(self._headers):
            if k == key:
                break
        else:
            i = 0
        self._headers.insert(i, (key, name, value))
        self._cache.clear()

    def set(self, name: str, value: str) -> None:
        """Replace every field called ``name`` with one, where the first stood."""
        name = canonical_name(name)
        key = name.lower()
        out: list[tuple[str, str, str]] = []
        placed = False
        for item in self._headers:
            if item[0] == key:
                if not placed:
                    out.append((key, name, value))
                    placed = True
            else:
                out.append(item)
        if not placed:
            out.append((key, name, value))
        self._headers = out
        self._cache.clear()

    def remove(self, name: str) -> None:
        key = canonical_name(name).lower()
        self._headers = [h for h in self._headers if h[0] != key]
        self._cache.clear()

    def set_values(self, name: str, values: list[str]) -> None:
        """Replace a list header by one field per value (none if empty)."""
        name = canonical_name(name)
        key = name.lower()
        first = next((i for i, h in enumerate(self._headers) if h[0] == key), None)
        rest = [h for h in self._headers if h[0] != key]
        new = [(key, name, v) for v in values]
        if first is None:
            rest.extend(new)
        else:
            first_kept = sum(1 for h in self._headers[:first] if h[0] != key)
            rest[first_kept:first_kept] = new
        self._headers = rest
        self._cache.clear()

    # ------------------------------------------------------- typed accessors

    def _parsed(self, key: str, fn: Any) -> Any:
        try:
            return self._cache[key]
        except KeyError:
            value = self._cache[key] = fn()
            return value

    @property
    def vias(self) -> list[Via]:
        return self._parsed("via", lambda: [parse_via(v) for v in self.values("Via")])  # type: ignore[no-any-return]

    @property
    def top_via(self) -> Via:
        """The first Via; :class:`ParseError` if there is none or it is malformed."""

        def first() -> Via:
            for v in self.get_all("Via"):
                items = split_list(v)
                if items:
                    return parse_via(items[0])
            raise ParseError("Missing Via header")

        return self._parsed("top_via", first)  # type: ignore[no-any-return]

    @property
    def from_(self) -> Address:
        return self._parsed("from", lambda: self._single_address("From"))  # type: ignore[no-any-return]

    @property
    def to(self) -> Address:
        return self._parsed("to", lambda: self._single_address("To"))  # type: ignore[no-any-return]

    def _single_address(self, name: str) -> Address:
        value = self.get(name)
        if value is None:
            raise ParseError(f"Missing {name} header")
        return parse_address(value, f"{name} header")

    @property
    def call_id(self) -> str:
        def get() -> str:
            value = self.get("Call-ID")
            if value is None:
                raise ParseError("Missing Call-ID header")
            value = value.strip()
            if not _CALLID_RE.fullmatch(value):
                raise ParseError("Bad Call-ID header")
            return value

        return self._parsed("call_id", get)  # type: ignore[no-any-return]

    @property
    def cseq(self) -> CSeq:
        def get() -> CSeq:
            value = self.get("CSeq")
            if value is None:
                raise ParseError("Missing CSeq header")
            return parse_cseq(value)

        return self._parsed("cseq", get)  # type: ignore[no-any-return]

    @property
    def max_forwards(self) -> int | None:
        def get() -> int | None:
            value = self.get("Max-Forwards")
            return None if value is None else parse_uint(value, "Max-Forwards", 255)

        return self._parsed("max_forwards", get)  # type: ignore[no-any-return]

    @property
    def expires(self) -> int | None:
        def get() -> int | None:
            value = self.get("Expires")
            return None if value is None else parse_uint(value, "Expires")

        return self._parsed("expires", get)  # type: ignore[no-any-return]

    @property
    def contact_star(self) -> bool:
        """True for ``Contact: *`` (REGISTER removing every binding)."""
        return any(v.strip() == "*" for v in self.values("Contact"))

    @property
    def contacts(self) -> list[Address]:
        """Contact addresses; ``Contact: *`` is reported by :attr:`contact_star`."""

        def get() -> list[Address]:
            values = self.values("Contact")
            if any(v.strip() == "*" for v in values):
                if len(values) > 1:
                    raise ParseError("Bad Contact: '*' mixed with other contacts")
                return []
            return [parse_address(v, "Contact header") for v in values]

        return self._parsed("contacts", get)  # type: ignore[no-any-return]

    def addresses(self, name: str) -> list[Address]:
        """Route, Record-Route, Path and similar name-addr lists."""
        return self._parsed(  # type: ignore[no-any-return]
            "addr:" + name.lower(),
            lambda: [parse_address(v, f"{canonical_name(name)} header") for v in self.values(name)],
        )

    def tokens(self, name: str) -> list[str]:
        """Require, Proxy-Require, Supported, Allow ...: a list of tokens."""
        return self._parsed(  # type: ignore[no-any-return]
            "tok:" + name.lower(),
            lambda: parse_token_list(", ".join(self.get_all(name)), canonical_name(name)),
        )

    @property
    def content_length(self) -> int | None:
        def get() -> int | None:
            value = self.get("Content-Length")
            return None if value is None else parse_uint(value, "Content-Length")

        return self._parsed("content_length", get)  # type: ignore[no-any-return]

    # ------------------------------------------------------------- output

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The wire form; Content-Length always states the body's length."""
        parts = [self.start_line()]
        for k, n, v in self._headers:
            if k != "content-length":
                parts.append(f"{n}: {v}")
        parts.append(f"Content-Length: {len(self.body)}")
        parts.append("")
        parts.append("")
        return "\r\n".join(parts).encode("utf-8", "surrogateescape") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def to_sipmessage(self) -> sipmessage.Request | sipmessage.Response:
        """The same message in sipmessage's model (for tools and tests)."""
        import sipmessage

        return sipmessage.Message.parse(self.to_bytes())

    def check_single_headers(self) -> None:
        for name in SINGLE_HEADERS:
            if self.count(name) > 1:
                raise ParseError(f"Multiple {name} headers")

    @property
    def is_request(self) -> bool:
        return isinstance(self, Request)


class Request(Message):
    __slots__ = ("method", "uri_text", "version", "_uri")

    def __init__(
        self,
        method: str,
        uri: str | URI,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(headers, body)
        self.method = method
        self.uri_text = str(uri)
        self._uri: URI | None = None if isinstance(uri, str) else uri
        self.version = version

    @property
    def uri(self) -> URI:
        """The Request-URI, parsed (unknown schemes as AbsoluteURI)."""
        if self._uri is None:
            try:
                self._uri = parse_uri(self.uri_text)
            except ParseError as exc:
                raise ParseError(f"Bad Request-URI: {exc.reason}") from None
        return self._uri

    @uri.setter
    def uri(self, value: URI) -> None:
        self._uri = value
        self.uri_text = str(value)

    def start_line(self) -> str:
        return f"{self.method} {self.uri_text} {self.version}"

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.uri_text}>"

    def copy(self) -> Request:
        new = Request(self.method, self.uri_text, (), self.body, self.version)
        new._headers = list(self._headers)
        new._uri = self._uri
        return new

    def validate(self) -> None:
        """Check what RFC 3261 requires of every request the server handles.

        Raises :class:`SipError` (400 with a reason naming the field, or 505
        for another SIP version). The Request-URI scheme (416), Max-Forwards
        (483) and Require (420) are the core's decisions, not syntax.
        """
        if self.version.upper() != "SIP/2.0":
            raise SipError(505, "Version Not Supported")
        self.check_single_headers()
        self.uri  # noqa: B018 - parse for syntax
        self.vias
        self.from_
        self.to
        self.call_id
        cseq = self.cseq
        if cseq.method != self.method and self.method != "ACK" or (
            self.method == "ACK" and cseq.method != "ACK"
        ):
            raise ParseError("CSeq method does not match the request method")
        self.max_forwards
        self.expires
        self.contacts
        self.content_length
        for name in ("Require", "Proxy-Require", "Supported"):
            if name in self:
                self.tokens(name)
        for name in ("Route", "Record-Route", "Path"):
            if name in self:
                self.addresses(name)


class Response(Message):
    __slots__ = ("status", "reason", "version")

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        version: str = "SIP/2.0",
    ) -> None:
        super().__init__(headers, body)
        self.status = status
        self.reason = REASONS.get(status, "") if reason is None else reason
        self.version = version

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"

    def copy(self) -> Response:
        new = Response(self.status, self.reason, (), self.body, self.version)
        new._headers = list(self._headers)
        return new

    def validate(self) -> None:
        """Enough of a response to match it to a transaction."""
        self.check_single_headers()
        self.top_via
        self.cseq
        self.call_id
        self.from_
        self.to


def parse(data: bytes, max_headers: int = MAX_HEADERS) -> Request | Response:
    """Parse one complete message (a datagram, or a frame from a stream).

    Raises :class:`ParseError`. When the start line and the header block
    could be read, ``err.message`` holds them so that a request with a
    usable Via can be answered ``400 <reason>``; otherwise the input is not
    SIP and ``err.message`` is None.
    """
    # RFC 3261 §7.5: ignore CRLFs before the start line.
    start = 0
    n = len(data)
    while start < n and data[start] in b"\r\n":
        start += 1
    end = data.find(b"\r\n\r\n", start)
    defect: str | None = None
    if end >= 0:
        head = data[start:end]
        body = data[end + 4 :]
    else:
        lf = data.find(b"\n\n", start)
        if lf >= 0:
            head, body = data[start:lf], data[lf + 2 :]
        else:
            head, body = data[start:], b""
            defect = "Missing empty line after the header fields"
    text = head.decode("utf-8", "surrogateescape")
    if "\r" in text.replace("\r\n", ""):
        text = text.replace("\r\n", "\n")
        if "\r" in text:
            raise ParseError("Bare CR in header block")
        lines = text.split("\n")
    elif "\n" in text.replace("\r\n", ""):
        lines = text.replace("\r\n", "\n").split("\n")
    else:
        lines = text.split("\r\n")

    msg = _parse_start_line(lines[0])
    headers = msg._headers
    for line in lines[1:]:
        if not line:
            continue
        c = line[0]
        if c == " " or c == "\t":
            if not headers:
                defect = defect or "Continuation line before any header"
                continue
            k, name, value = headers[-1]
            headers[-1] = (k, name, (value + " " + line.strip(" \t")).strip())
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if not colon or not _TOKEN_RE.fullmatch(name):
            defect = defect or f"Bad header line: {line[:40]!r}"
            continue
        if "\x00" in value:
            defect = defect or f"NUL byte in {name} header"
            continue
        name = CANONICAL.get(name.lower(), name)
        headers.append((name.lower(), name, value.strip(" \t")))
        if len(headers) > max_headers:
            raise ParseError("Too many header fields", msg)

    try:
        clen = msg.content_length
    except ParseError as exc:
        raise ParseError(exc.reason, msg) from None
    if clen is not None:
        if clen > len(body):
            defect = defect or "Content-Length larger than the message body"
        else:
            body = body[:clen]
    msg.body = body
    if defect:
        raise ParseError(defect, msg)
    return msg


def _parse_start_line(line: str) -> Request | Response:
    if line[:4].upper() == "SIP/":
        version, _, rest = line.partition(" ")
        code, _, reason = rest.partition(" ")
        if not _VERSION_RE.fullmatch(version) or not _STATUS_RE.fullmatch(code):
            raise ParseError("Bad status line")
        return Response(int(code), reason.strip(), version=version)
    parts = line.split(" ")
    if len(parts) != 3:
        raise ParseError("Bad request line")
    method, uri, version = parts
    if not _TOKEN_RE.fullmatch(method) or not uri or not _VERSION_RE.fullmatch(version):
        raise ParseError("Bad request line")
    return Request(method, uri, version=version)


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    to_tag: str | None = None,
) -> Response:
    """A response to ``request`` per RFC 3261 §8.2.6.2.

    Via, From, Call-ID and CSeq are copied as received; a To tag is added
    when ``to_tag`` is given and the request's To has none.
    """
    resp = Response(status, reason)
    h = resp._headers
    for k, n, v in request._headers:
        if k in ("via", "from", "call-id", "cseq"):
            h.append((k, n, v))
        elif k == "to":
            if to_tag and status != 100 and not _has_tag(request, v):
                v = f"{v};tag={to_tag}"
            h.append((k, n, v))
    for n, v in headers:
        n = canonical_name(n)
        h.append((n.lower(), n, v))
    resp.body = body
    return resp


def _has_tag(request: Request, to_value: str) -> bool:
    try:
        return request.to.tag is not None
    except ParseError:
        return ";tag=" in to_value.replace(" ", "").lower()


def iter_header_lines(msg: Message) -> Iterator[str]:
    for _, n, v in msg._headers:
        yield f"{n}: {v}"

"""SIP messages: parse, inspect, change, serialise (RFC 3261 §7, §20, §25).

The model keeps every header field as text, in order, under a canonical
name, and parses the values the server reads (Via, From, To, CSeq, Contact,
...) on first access. This is what a proxy needs: it rewrites a few fields
and forwards the rest exactly as received.

Why not sipmessage's parser: it decodes the header block as strict UTF-8,
does not unfold continuation lines, takes all after the first empty line as
the body whatever Content-Length says, lets a quoted string run on into the
next one of a list, percent-decodes header parameters and checks no
number's range. It is a test dependency only: tests/unit/sipd/sip/test_parser_differential.py
runs it beside this parser on every test vector and on generated messages,
with the list of the differences it knows and why.

Why one module of this size: parsing, the lazy header cache and
serialising are one representation; the header *values* live apart in
:mod:`sipd.sip.headers`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Final

from sipd.sip.errors import ParseError, SipError
from sipd.sip.headers import (
    Address,
    CSeq,
    Via,
    is_token,
    parse_address,
    parse_cseq,
    parse_token_list,
    parse_uint,
    parse_via,
    split_list,
)
from sipd.sip.uri import URI, SipURI, parse_uri

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

#: Methods this package knows (RFC 3261 and the usual extensions). For any
#: other method the core answers 501, which RFC 4475 §3.1.2.18 prefers to a
#: 400 even when the CSeq method disagrees, so validate() leaves those alone.
KNOWN_METHODS = frozenset(
    (
        "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE",
        "NOTIFY", "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
    )
)

_METHOD_TEXT = {m: m for m in KNOWN_METHODS}
_VERSION_RE = re.compile(r"SIP/(\d+)\.(\d+)", re.IGNORECASE)
_STATUS_RE = re.compile(r"[1-6]\d\d")
_CALLID_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+(?:@[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+)?")
_LINE_SPLIT_RE = re.compile(r"\r?\n")
_MISSING: Any = object()


def canonical_name(name: str) -> str:
    return CANONICAL.get(name.lower(), name)


# Header name as written -> (lookup key, canonical spelling). Seeded with the
# spellings phones use so that the per-line work in parse() is one dict hit;
# other spellings are added as they are seen, up to a bound so that random
# names cannot grow it without limit.
_SPELLINGS: dict[str, tuple[str, str]] = {}
for _lower, _canon in CANONICAL.items():
    for _spelling in (_canon, _lower, _canon.upper(), _lower.capitalize()):
        _SPELLINGS[_spelling] = (sys.intern(_canon.lower()), sys.intern(_canon))
del _lower, _canon, _spelling
_SPELLINGS_MAX = 1024
#: The spellings above only: a header built here gets the shared key and
#: name strings, not a fresh lower-case copy per field.
_BUILT = {s: hit for s, hit in _SPELLINGS.items() if hit[1] == canonical_name(s)}


def _field(name: str) -> tuple[str, str]:
    """(key, canonical name) for a field added by code (not parsed)."""
    hit = _BUILT.get(name)
    if hit is not None:
        return hit
    name = canonical_name(name)
    return name.lower(), name


def _name_key(name: str) -> tuple[str, str] | None:
    """(key, canonical name) for a header name as written, None if not a token."""
    hit = _SPELLINGS.get(name)
    if hit is not None:
        return hit
    stripped = name.rstrip(" \t")
    if not is_token(stripped):
        return None
    canon = CANONICAL.get(stripped.lower(), stripped)
    hit = (canon.lower(), canon)
    if len(_SPELLINGS) < _SPELLINGS_MAX:
        _SPELLINGS[name] = hit
    return hit


def _key(name: str) -> str:
    hit = _SPELLINGS.get(name)
    return hit[0] if hit is not None else canonical_name(name).lower()


class Message:
    """Common part of requests and responses: header fields and body.

    Fields are kept in order, each as three strings in one flat list
    (``key, name, value, key, name, ...``) where ``key`` is the lower-case
    canonical name; an index from key to values is built once and dropped
    on every change, and typed values are cached the same way. So change
    fields through the methods here, never through ``_headers``.

    Flat rather than a tuple per field: a transaction keeps its messages
    for up to 32 s after its answer, and the garbage collector walked each
    field's tuple once before it left the collector's care (the tuples
    were nearly half of what it walked under a call load).
    """

    __slots__ = ("_headers", "body", "_cache", "_index")

    version: str

    def __init__(
        self,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        h: list[str] = []
        for n, v in headers:
            k, n = _field(n)
            h.append(k)
            h.append(n)
            h.append(v)
        self._headers = h
        self.body = body
        self._cache: dict[str, Any] = {}
        self._index: dict[str, tuple[str, ...]] | None = None

    def _idx(self) -> dict[str, tuple[str, ...]]:
        # The accessors read ``self._index or self._idx()``: an attribute
        # load is cheaper than this call, and an empty index is just rebuilt.
        idx = self._index
        if idx is None:
            idx = {}
            h = self._headers
            for i in range(0, len(h), 3):
                _index_field(idx, h[i], h[i + 2])
            self._index = idx
        return idx

    def _changed(self, key: str, values: tuple[str, ...]) -> None:
        """The fields called ``key`` changed: drop what was read from them, only that.

        ``values`` are those fields now, for the header index when it is
        built (unused when it is not).

        A proxy changes a few fields of each request it forwards (Via,
        Max-Forwards, Route, credentials), and the Vias, From and To parsed
        when the request came in are not parsed again after each change.
        """
        index = self._index
        if index is not None:
            if values:
                index[key] = values
            else:
                index.pop(key, None)
        self._forget(key)

    def _forget(self, key: str) -> None:
        """Drop the values parsed from the fields called ``key``."""
        cache = self._cache
        if cache:
            # The keys the accessors below cache under, for this name.
            cache.pop(key, None)
            cache.pop("addr:" + key, None)
            cache.pop("tok:" + key, None)
            if key == "via":
                cache.pop("top_via", None)

    def _share_parsed(self, new: Message) -> None:
        """Give a copy the index and the values parsed so far.

        The parsed values are frozen and shared; the lists holding them are
        the copy's own, and each message's changes drop only its own. A
        proxy copies each request it forwards and reads the copy's Vias,
        From and To again, which it would otherwise parse a second time.
        """
        if self._index is not None:
            new._index = dict(self._index)
        if self._cache:
            new._cache = {k: list(v) if isinstance(v, list) else v
                          for k, v in self._cache.items()}

    def compact(self) -> None:
        """Drop what parsing built on first access (the index and the typed values).

        Nothing is lost: both are rebuilt from the header fields when next
        read. A transaction calls this on the messages it keeps after its
        final response, where a parsed REGISTER would otherwise hold a few
        kilobytes of Via, Address and URI objects for 32 s (Timer J).
        """
        self._index = None
        # A new empty dict, not a cleared one: it is outside the garbage
        # collector's care until something is cached in it again.
        self._cache = {}

    # ------------------------------------------------------ raw header access

    def headers(self) -> list[tuple[str, str]]:
        """All fields in order, as ``(name, value)``."""
        h = self._headers
        return [(h[i + 1], h[i + 2]) for i in range(0, len(h), 3)]

    def get(self, name: str) -> str | None:
        """The first field called ``name`` (any case, compact forms too)."""
        lst = (self._index or self._idx()).get(_key(name))
        return lst[0] if lst else None

    def get_all(self, name: str) -> list[str]:
        """Every field called ``name``, one entry per header line."""
        return list((self._index or self._idx()).get(_key(name), ()))

    def values(self, name: str) -> list[str]:
        """Every value of a list header, comma-separated values split."""
        return self._list_values(_key(name))

    def _list_values(self, key: str) -> list[str]:
        lines = (self._index or self._idx()).get(key)
        if not lines:
            return []
        if len(lines) == 1:
            return split_list(lines[0])
        out: list[str] = []
        for v in lines:
            out.extend(split_list(v))
        return out

    def count(self, name: str) -> int:
        return len((self._index or self._idx()).get(_key(name), ()))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in (self._index or self._idx())

    def add(self, name: str, value: str) -> None:
        """Append a field after the others."""
        key, name = _field(name)
        h = self._headers
        h.append(key)
        h.append(name)
        h.append(value)
        if self._index is not None:
            _index_field(self._index, key, value)
        self._forget(key)

    def prepend(self, name: str, value: str) -> None:
        """Insert a field before the first field of that name (or first of all)."""
        name = canonical_name(name)
        key = name.lower()
        h = self._headers
        at = _first(h, key)
        h[at:at] = [key, name, value]
        index = self._index
        self._changed(key, (value, *index.get(key, ())) if index is not None else ())

    def set(self, name: str, value: str) -> None:
        """Replace every field called ``name`` with one, where the first stood."""
        self.set_values(name, [value])

    def remove(self, name: str) -> None:
        key = _key(name)
        self._headers = _without(self._headers, key)
        self._changed(key, ())

    def set_values(self, name: str, values: list[str]) -> None:
        """Replace a list header by one field per value (none if empty)."""
        name = canonical_name(name)
        key = name.lower()
        h = self._headers
        new: list[str] = []
        for v in values:
            new += (key, name, v)
        # Where the first such field stood (the end if there was none).
        at = _first(h, key, len(h))
        rest = h[:at]
        rest += new
        rest += _without(h[at:], key)
        self._headers = rest
        self._changed(key, tuple(values))

    # ------------------------------------------------------- typed accessors
    #
    # Each parses its field on first use and caches the result (or raises
    # ParseError every time, naming the field).

    @property
    def vias(self) -> list[Via]:
        cache = self._cache
        vias: list[Via] | None = cache.get("via")
        if vias is None:
            values = self._list_values("via")
            # A request's top Via is parsed (and stamped) before the request
            # is checked: the check parses only the ones below it.
            top: Via | None = cache.get("top_via")
            if top is not None and values:
                vias = [top]
                for v in values[1:]:
                    vias.append(parse_via(v))
            else:
                vias = [parse_via(v) for v in values]
            cache["via"] = vias
        return vias

    def set_top_via(self, via: Via) -> None:
        """Replace the first Via value by ``via``, keeping the others as parsed.

        The Via fields are written one value per field, as
        :meth:`set_values` does.
        """
        values = self._list_values("via")
        if not values:
            raise ParseError("Missing Via header")
        values[0] = str(via)
        vias: list[Via] | None = self._cache.get("via")
        self.set_values("Via", values)
        if vias:
            self._cache["via"] = [via, *vias[1:]]
        else:
            self._cache["top_via"] = via

    def prepend_via(self, via: Via) -> None:
        """Put ``via`` on top, a field of its own (a proxy's, §16.6 step 8), kept parsed."""
        self.prepend("Via", str(via))
        self._cache["top_via"] = via

    def adopt_top_via(self, known: Mapping[str, Via]) -> None:
        """Take the top Via's parsed form from ``known`` rather than parsing it.

        ``known`` maps the text of a whole Via field to the one Via it
        holds: the Vias this element put on the requests it sent
        (:meth:`prepend_via`), which their responses bring back on top.
        """
        lines = (self._index or self._idx()).get("via")
        if lines:
            first = lines[0]
            via = known.get(first)
            if via is None and "," in first:
                # The Vias copied back in one field ("ours, theirs"), as some
                # user agents do: ours has no comma, so it is all before the first.
                via = known.get(first[:first.index(",")].rstrip(" \t"))
            if via is not None and "via" not in self._cache:
                self._cache["top_via"] = via

    @property
    def top_via(self) -> Via:
        """The first Via; :class:`ParseError` if there is none or it is malformed."""
        cache = self._cache
        vias: list[Via] | None = cache.get("via")
        if vias:
            return vias[0]
        via: Via | None = cache.get("top_via")
        if via is None:
            for v in (self._index or self._idx()).get("via", ()):
                items = split_list(v)
                if items:
                    via = cache["top_via"] = parse_via(items[0])
                    return via
            raise ParseError("Missing Via header")
        return via

    @property
    def from_(self) -> Address:
        addr: Address | None = self._cache.get("from")
        if addr is None:
            addr = self._cache["from"] = self._single_address("from", "From header")
        return addr

    @property
    def to(self) -> Address:
        addr: Address | None = self._cache.get("to")
        if addr is None:
            addr = self._cache["to"] = self._single_address("to", "To header")
        return addr

    def _single_address(self, key: str, what: str) -> Address:
        lst = (self._index or self._idx()).get(key)
        if not lst:
            raise ParseError(f"Missing {what}")
        return parse_address(lst[0], what)

    @property
    def call_id(self) -> str:
        value: str | None = self._cache.get("call-id")
        if value is None:
            lst = (self._index or self._idx()).get("call-id")
            if not lst:
                raise ParseError("Missing Call-ID header")
            value = lst[0]
            if not _CALLID_RE.fullmatch(value):
                raise ParseError("Bad Call-ID header")
            self._cache["call-id"] = value
        return value

    @property
    def cseq(self) -> CSeq:
        value: CSeq | None = self._cache.get("cseq")
        if value is None:
            lst = (self._index or self._idx()).get("cseq")
            if not lst:
                raise ParseError("Missing CSeq header")
            value = self._cache["cseq"] = parse_cseq(lst[0])
        return value

    def _uint(self, key: str, name: str, limit: int = 2**32 - 1) -> int | None:
        value = self._cache.get(key, _MISSING)
        if value is _MISSING:
            lst = (self._index or self._idx()).get(key)
            if not lst:
                value = None
            else:
                text = lst[0]
                # Short plain digits are the usual case; the rest (spaces,
                # signs, huge numbers) goes through the careful parser.
                if len(text) < 10 and text.isdigit() and text.isascii():
                    value = int(text)
                    if value > limit:
                        value = parse_uint(text, name, limit)  # raises, naming the field
                else:
                    value = parse_uint(text, name, limit)
            self._cache[key] = value
        return value  # type: ignore[no-any-return]

    @property
    def max_forwards(self) -> int | None:
        return self._uint("max-forwards", "Max-Forwards", 255)

    @property
    def expires(self) -> int | None:
        return self._uint("expires", "Expires")

    @property
    def content_length(self) -> int | None:
        return self._uint("content-length", "Content-Length")

    @property
    def contact_star(self) -> bool:
        """True for ``Contact: *`` (REGISTER removing every binding)."""
        return "*" in self._list_values("contact")

    @property
    def contacts(self) -> list[Address]:
        """Contact addresses; ``Contact: *`` is reported by :attr:`contact_star`."""
        contacts: list[Address] | None = self._cache.get("contact")
        if contacts is None:
            values = self._list_values("contact")
            if "*" in values:
                if len(values) > 1:
                    raise ParseError("Bad Contact: '*' mixed with other contacts")
                contacts = []
            else:
                contacts = [parse_address(v, "Contact header") for v in values]
            self._cache["contact"] = contacts
        return contacts

    def addresses(self, name: str) -> list[Address]:
        """Route, Record-Route, Path and similar name-addr lists."""
        key = _key(name)
        ck = "addr:" + key
        out: list[Address] | None = self._cache.get(ck)
        if out is None:
            what = f"{canonical_name(name)} header"
            out = self._cache[ck] = [parse_address(v, what) for v in self._list_values(key)]
        return out

    def tokens(self, name: str) -> list[str]:
        """Require, Proxy-Require, Supported, Allow ...: a list of tokens."""
        return self._tokens(_key(name), canonical_name(name))

    def _tokens(self, key: str, name: str) -> list[str]:
        ck = "tok:" + key
        out: list[str] | None = self._cache.get(ck)
        if out is None:
            lines = (self._index or self._idx()).get(key, ())
            text = lines[0] if len(lines) == 1 else ", ".join(lines)
            out = self._cache[ck] = parse_token_list(text, name)
        return out

    # ------------------------------------------------------------- output

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """The wire form; Content-Length always states the body's length.

        It stays where the first one stood (a proxy changes as little as it
        can) or is appended; other copies are dropped.
        """
        parts = [self.start_line()]
        length = str(len(self.body))
        placed = False
        h = self._headers
        for i in range(0, len(h), 3):
            if h[i] == "content-length":
                if placed:
                    continue
                parts.append(f"{h[i + 1]}: {length}")
                placed = True
            else:
                parts.append(f"{h[i + 1]}: {h[i + 2]}")
        if not placed:
            parts.append("Content-Length: " + length)
        parts.append("\r\n")
        return "\r\n".join(parts).encode("utf-8", "surrogateescape") + self.body

    def __bytes__(self) -> bytes:
        return self.to_bytes()

    def check_single_headers(self) -> None:
        idx = (self._index or self._idx())
        if 3 * len(idx) == len(self._headers):
            return  # no name appears twice
        for key, name in _SINGLE_KEYS:
            lst = idx.get(key)
            if lst is not None and len(lst) > 1:
                raise ParseError(f"Multiple {name} headers")

    @property
    def is_request(self) -> bool:
        return isinstance(self, Request)


_SINGLE_KEYS = tuple((n.lower(), n) for n in SINGLE_HEADERS)
_TOKEN_LIST_CHECKED = (("require", "Require"), ("proxy-require", "Proxy-Require"), ("supported", "Supported"))
_ADDRESS_LIST_CHECKED = (("route", "Route"), ("record-route", "Record-Route"), ("path", "Path"))


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
        self._share_parsed(new)
        return new

    def stub(self) -> Request:
        """A copy with the start line only: no field, no body.

        What a finished server transaction keeps of its request once its
        final response is frozen (:meth:`Response.freeze`): a response made
        from it that late is dropped by the transaction anyway.
        """
        return _new_request(self.method, self.uri_text, self.version)

    def validate(self) -> None:
        """Check what RFC 3261 requires of every request the server handles.

        Raises :class:`SipError` (400 with a reason naming the field, or 505
        for another SIP version). The Request-URI scheme (416), Max-Forwards
        (483), Require (420) and unknown methods (501) are the core's
        decisions, not syntax: a request with an unknown method passes even
        if its CSeq method differs (RFC 4475 §3.1.2.18).
        """
        version = self.version
        if version != "SIP/2.0" and version.upper() != "SIP/2.0":
            raise SipError(505, "Version Not Supported")
        self.check_single_headers()
        uri = self.uri
        if isinstance(uri, SipURI) and uri.headers is not None:
            # RFC 3261 §19.1.1 forbids headers in a Request-URI; RFC 4475
            # §3.1.2.11 allows answering 400 rather than guessing.
            raise ParseError("Bad Request-URI: header fields are not allowed in it")
        vias = self.vias
        if not vias:
            raise ParseError("Missing Via header")
        branch = vias[0].branch
        if branch is not None and len(branch) == 7 and branch.lower() == "z9hg4bk":
            # The RFC 3261 cookie with no identifier after it (RFC 4475
            # §3.2.1): such a branch cannot tell transactions apart.
            raise ParseError("Bad Via branch: no transaction id after z9hG4bK")
        self.from_  # noqa: B018 - each access parses and checks the field
        self.to  # noqa: B018
        self.call_id  # noqa: B018
        cseq = self.cseq
        if cseq.method != self.method and self.method in KNOWN_METHODS:
            raise ParseError("CSeq method does not match the request method")
        self.max_forwards  # noqa: B018
        self.expires  # noqa: B018
        self.contacts  # noqa: B018
        self.content_length  # noqa: B018
        idx = (self._index or self._idx())
        for key, name in _TOKEN_LIST_CHECKED:
            if key in idx:
                self._tokens(key, name)
        for key, name in _ADDRESS_LIST_CHECKED:
            if key in idx:
                self.addresses(name)


class Response(Message):
    __slots__ = ("status", "reason", "version", "_wire")

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
        #: Set by :meth:`freeze`: the wire form, and nothing else is kept.
        self._wire: bytes | None = None

    def start_line(self) -> str:
        return f"{self.version} {self.status} {self.reason}"

    def to_bytes(self) -> bytes:
        wire = self._wire
        if wire is not None:
            return wire
        return super().to_bytes()

    def freeze(self) -> None:
        """Keep the wire form only: from now on the response can only be resent.

        Its fields and body are dropped (reading them finds none); the
        status line stays readable. A finished server transaction keeps its
        final response this way for 32 s (Timer J over UDP), where the
        fields held a kilobyte of strings and tuples per transaction.
        """
        self._wire = self.to_bytes()
        self._headers = []
        self.body = b""
        self.compact()

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"

    def copy(self) -> Response:
        new = Response(self.status, self.reason, (), self.body, self.version)
        new._headers = list(self._headers)
        self._share_parsed(new)
        return new

    def validate(self) -> None:
        """Enough of a response to match it to a transaction.

        A response that fails this is dropped (it cannot be answered), as
        RFC 4475 §3.1.2.5 asks for out-of-range CSeq numbers.
        """
        self.check_single_headers()
        self.top_via  # noqa: B018 - each access parses and checks the field
        self.cseq  # noqa: B018
        self.call_id  # noqa: B018
        self.from_  # noqa: B018
        self.to  # noqa: B018


def parse(data: bytes, max_headers: int = MAX_HEADERS) -> Request | Response:
    """Parse one complete message (a datagram, or a frame from a stream).

    Raises :class:`ParseError`. When the start line and the header block
    could be read, ``err.message`` holds them so that a request with a
    usable Via can be answered ``400 <reason>``; otherwise the input is not
    SIP and ``err.message`` is None.

    Bare-LF line ends are accepted, folded lines are joined with one space,
    CRLFs before the start line are skipped (RFC 3261 §7.5), and bytes
    after Content-Length are ignored (a datagram's trailing noise, RFC 3261
    §18.3). Without Content-Length the body is the rest of the data.
    """
    start = 0
    n = len(data)
    if n and data[0] in b"\r\n":
        while start < n and data[start] in b"\r\n":
            start += 1
    defect: str | None = None
    end = data.find(b"\r\n\r\n", start)
    text = ""
    lines: list[str] = []
    if end >= 0:
        head = data[start:end]
        body = data[end + 4 :]
        text = head.decode("utf-8", "surrogateescape")
        lines = text.split("\r\n")
        # Every CR and LF must belong to a CRLF; otherwise the line ends are
        # bare LFs (and the header block may end earlier) or stray CRs.
        # (Joining and two memchr scans beat counting both characters.)
        joined = "".join(lines)
        if "\n" in joined or "\r" in joined:
            end = -1
    if end < 0:
        head, body, defect = _split_head_slow(data, start)
        text = head.decode("utf-8", "surrogateescape")
        lines, eol_defect = _split_lines_slow(text)
        defect = defect or eol_defect

    msg, line_defect = _parse_start_line(lines[0])
    defect = defect or line_defect
    if len(lines) > max_headers + 1:
        del lines[max_headers + 1 :]
        defect = defect or "Too many header fields"
    has_nul = "\x00" in text
    index, field_defect = _read_fields(msg._headers, lines, has_nul)
    if index is None:
        # Folded lines are rare: the loop meets them at no cost to the
        # others, and the fields are read again once the lines are joined.
        lines, fold_defect = _unfold(lines)
        defect = defect or fold_defect
        msg._headers = []
        index, field_defect = _read_fields(msg._headers, lines, has_nul)
        assert index is not None
    defect = defect or field_defect
    msg._index = index

    clen_values = index.get("content-length")
    if clen_values is not None:
        if len(clen_values) > 1:
            # RFC 4475 §3.3.9: no way to know where the body ends.
            defect = defect or "Multiple Content-Length headers"
        else:
            try:
                clen = msg.content_length
            except ParseError as exc:
                defect = defect or exc.reason
            else:
                assert clen is not None
                if clen > len(body):
                    defect = defect or "Content-Length larger than the message body"
                elif clen < len(body):
                    body = body[:clen]
    msg.body = body
    if defect:
        raise ParseError(defect, msg)
    return msg


def _read_fields(
    headers: list[str], lines: list[str], has_nul: bool
) -> tuple[dict[str, tuple[str, ...]] | None, str | None]:
    """Append the header fields of ``lines[1:]``; the key index and a defect.

    A None index means a continuation line was met: unfold and call again.
    """
    index: dict[str, tuple[str, ...]] = {}
    defect: str | None = None
    spelling = _SPELLINGS.get
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        hit = spelling(name)
        if hit is None:
            if line[:1] in (" ", "\t"):
                return None, None
            hit = _name_key(name) if colon else None
            if hit is None:
                defect = defect or f"Bad header line: {line[:40]!r}"
                continue
        key, cname = hit
        value = value.strip(" \t")
        if has_nul and "\x00" in value and "\x00" in value.replace("\\\x00", ""):
            # NUL is only allowed escaped, inside a quoted string (RFC 4475 §3.1.1.2).
            defect = defect or f"NUL byte in {cname} header"
            continue
        headers.append(key)
        headers.append(cname)
        headers.append(value)
        _index_field(index, key, value)
    return index, defect


def _index_field(index: dict[str, tuple[str, ...]], key: str, value: str) -> None:
    """Add one field's value to a message's header index (parsing, or after a change)."""
    # Tuples, not lists: a dict of strings and tuples of strings leaves the
    # garbage collector's care after one pass, where each list would be
    # traversed at every collection while the message lives (a transaction
    # keeps its messages up to 32 s).
    found = index.get(key)
    index[key] = (value,) if found is None else (*found, value)


def _split_head_slow(data: bytes, start: int) -> tuple[bytes, bytes, str | None]:
    """Header block and body when line ends are not all CRLF.

    The header block ends at the first empty line, whatever its line end.
    """
    pos = start
    n = len(data)
    while pos < n:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        line_end = nl - 1 if nl > pos and data[nl - 1] == 0x0D else nl
        if line_end == pos and pos > start:
            head_end = pos - 1  # the LF that ended the previous line
            if head_end > start and data[head_end - 1] == 0x0D:
                head_end -= 1
            return data[start:head_end], data[nl + 1 :], None
        pos = nl + 1
    return data[start:], b"", "Missing empty line after the header fields"


def _split_lines_slow(text: str) -> tuple[list[str], str | None]:
    """Split at CRLF or bare LF; a CR anywhere else is a defect."""
    lines = _LINE_SPLIT_RE.split(text.rstrip("\r\n"))
    defect = None
    if "\r" in text.replace("\r\n", ""):
        defect = "Bare CR in header block"
        lines = [line.replace("\r", " ") for line in lines]
    return lines, defect


def _unfold(lines: list[str]) -> tuple[list[str], str | None]:
    """Join continuation lines to the line before (RFC 3261 §7.3.1)."""
    out = [lines[0]]
    defect = None
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if len(out) == 1:
                defect = defect or "Continuation line before any header"
                continue
            out[-1] = out[-1].rstrip(" \t") + " " + line.strip(" \t")
        elif line:
            out.append(line)
    return out, defect


def _parse_start_line(line: str) -> tuple[Request | Response, str | None]:
    """The message for a start line, with a defect that still allows an answer."""
    if line[:4].upper() == "SIP/":
        version, _, rest = line.partition(" ")
        code, _, reason = rest.lstrip(" ").partition(" ")
        if not _VERSION_RE.fullmatch(version) or len(code) != 3 or not _STATUS_RE.fullmatch(code):
            raise ParseError("Bad status line")
        return Response(int(code), reason.strip(" \t"), version=version), None
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        # RFC 4475 §3.1.2.9/10: extra SP between or after the elements may
        # be ignored; the start line is rebuilt with single SPs on output.
        parts = [p for p in parts if p]
        if len(parts) < 3:
            raise ParseError("Bad request line")
    method, version = parts[0], parts[-1]
    known = _METHOD_TEXT.get(method)
    if known is not None:
        # One string per method and version, not two per request: a
        # transaction keeps its request for 32 s after it ends.
        method = known
    elif not is_token(method):
        raise ParseError("Bad request line")
    if version == "SIP/2.0":
        version = "SIP/2.0"
    elif not _VERSION_RE.fullmatch(version):
        raise ParseError("Bad request line")
    if len(parts) > 3:
        # Whitespace inside the Request-URI (RFC 4475 §3.1.2.8): the rest of
        # the message is still read so that the sender gets its 400.
        return _new_request(method, " ".join(parts[1:-1]), version), (
            "Bad Request-URI: contains whitespace"
        )
    return _new_request(method, parts[1], version), None


# True when this module was compiled with mypyc (sipd.io.compiled):
# its classes are then native ones, whose __new__ runs __init__.
_NATIVE: Final = hasattr(Message, "__mypyc_attrs__")


def _new_request(method: str, uri_text: str, version: str) -> Request:
    """An empty Request for parse(), without the generic constructor's work."""
    if _NATIVE:
        # Compiled, the constructor is the cheap way.
        return Request(method, uri_text, (), b"", version)
    req = Request.__new__(Request)
    req._headers = []
    req.body = b""
    req._cache = {}
    req._index = None
    req.method = method
    req.uri_text = uri_text
    req._uri = None
    req.version = version
    return req


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
    fields = request._headers
    for i in range(0, len(fields), 3):
        k = fields[i]
        if k in ("via", "from", "call-id", "cseq"):
            h += fields[i:i + 3]  # the request's own strings
        elif k == "to":
            v = fields[i + 2]
            if to_tag and status != 100 and not _has_tag(request, v):
                v = f"{v};tag={to_tag}"
            h += (k, fields[i + 1], v)
    for n, v in headers:
        k, n = _field(n)
        h += (k, n, v)
    resp.body = body
    return resp


def _has_tag(request: Request, to_value: str) -> bool:
    try:
        return request.to.tag is not None
    except ParseError:
        return ";tag=" in to_value.replace(" ", "").lower()


def iter_header_lines(msg: Message) -> Iterator[str]:
    h = msg._headers
    for i in range(0, len(h), 3):
        yield f"{h[i + 1]}: {h[i + 2]}"


def _first(fields: list[str], key: str, default: int = 0) -> int:
    """Where the first field called ``key`` starts in a flat field list."""
    for i in range(0, len(fields), 3):
        if fields[i] == key:
            return i
    return default


def _without(fields: list[str], key: str) -> list[str]:
    """A flat field list without the fields called ``key``."""
    out: list[str] = []
    for i in range(0, len(fields), 3):
        if fields[i] != key:
            out += fields[i:i + 3]
    return out

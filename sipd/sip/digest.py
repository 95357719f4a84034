"""Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760), sans-IO.

This module parses credentials, does the hash arithmetic, mints and checks
nonces, and decides whether a request is authenticated. It reads no clock
(``now`` is passed in, in seconds; use the same clock for minting and
checking, and a wall clock if the nonce secret outlives the process) and
touches no file or socket. Who owns which AOR, where HA1 values come from and
how failures are throttled belong to the caller (:mod:`sipd.auth`).

Decisions worth knowing
-----------------------

*Stale versus failed.* :func:`check_credentials` first asks whether the
response is right for the user's HA1, computed over the nonce exactly as the
client sent it. A wrong response, or an unknown user, is ``FAILED`` whatever
the nonce. A right response with a nonce that is expired, replayed (nonce
count not increasing), or not one this server can authenticate at all (a
secret rotated away, a daemon restart with a new secret, another realm) is
``STALE``: only the holder of the password, or someone replaying that
holder's old request, can produce it, and both are answered correctly with a
fresh challenge carrying ``stale=true`` (RFC 7616 §3.3). The point is that an
honest phone holding an old nonce must never be counted as a failure and
banned. A forged nonce with a wrong response is ``FAILED``, like any wrong
response.

*No user enumeration.* An unknown user's response is checked against a
dummy HA1 of the right length, so a request for a user that does not exist
costs the same hashing and gives the same answer as a wrong password. The
caller must keep its own HA1 lookup from leaking the difference (look up,
then call :func:`check_credentials` with ``None``, never return early).

*Stateless nonces.* A nonce is base64url of 8 bytes of issue time
(milliseconds), 8 random bytes (so two challenges in the same millisecond
differ and their nonce counts do not collide) and a 16-byte keyed BLAKE2b
MAC over those and a caller-chosen ``bound`` string (the realm).
Checking needs only the secret. :meth:`NonceManager.rotate` keeps the
previous secret, so nonces issued just before a rotation stay valid; after
a second rotation they are unrecognised, which, per the rule above, makes a
right response ``STALE``, never ``FAILED``. Rotate no more often than once
per lifetime.

*Nonce counts.* :class:`NonceCounts` remembers, per nonce, the highest nc
accepted, and is only written after a response has been verified (so nobody
without the password can burn a client's counts or fill the table). Entries
of nonces past their lifetime are dropped as requests come (they are STALE
anyway). Its memory is bounded: the least recently used entry is evicted,
and the table remembers the newest issue time among evicted nonces (the
*horizon*). A nonce
not in the table that was issued at or before the horizon may have been
evicted, so its use is refused (the caller answers ``stale=true``, one extra
round trip for the client) rather than risk accepting a replayed count. A
nonce issued after the horizon cannot have been evicted, so its first use is
accepted with any nc >= 1. Out-of-order counts (nc 6 arriving before nc 5)
are refused the same way; the client then gets a fresh nonce.

*RFC 2069 clients* (no ``qop``, hence no nc and no cnonce) are accepted for
RFC 3261 §22.4 compatibility, but such a nonce is good for one request only:
its next use is refused, the client is challenged with ``stale=true`` and
asks again with a fresh nonce.

*userhash* (RFC 7616 §3.4.4) is parsed: with ``userhash=true`` the
``username`` must be the hex hash of the right length, and
:attr:`Credentials.userhash` is set. The response arithmetic does not
change. sipd never offers ``userhash=true`` in its challenges, so a SIP
client has no reason to send it; a caller that does not want to resolve
hashed names (with :func:`user_hash` of each candidate user) simply fails to
find a user of that name, which is ``FAILED``.

*Leniency in parsing.* Parameter values are accepted quoted or as tokens
whichever the grammar asks for (phones quote ``qop`` and ``algorithm``, or
not), names, the scheme, ``algorithm`` and ``qop`` are case-insensitive,
empty list elements are skipped (RFC 7230 §7), and a folded line counts as
whitespace. Strict where it matters: duplicates, missing parameters, an nc
that is not 8 hex digits, a response of the wrong length, and counts or
client nonces where the chosen ``qop`` has none are all rejected.

*What is left to the caller:* choosing the credentials whose realm is ours
among several ``Authorization`` headers (RFC 3261 §22.3), checking that the
Auth-ID may use the AOR, and, where wanted, that ``uri`` matches the
Request-URI.

Why one module of this size: the parser, the hash arithmetic and the
nonce rules must agree on every field and algorithm name, and reviewing
them side by side is how that is checked.
"""

from __future__ import annotations

import binascii
import enum
import functools
import hashlib
import hmac
import math
import re
import secrets
import struct
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sipd.sip.errors import ParseError
from sipd.sip.headers import QUOTED_STRING, TOKEN_CHARACTERS, is_token, quote, unquote

__all__ = [
    "ALGORITHMS",
    "AuthResult",
    "Credentials",
    "NonceCounts",
    "NonceManager",
    "NonceStatus",
    "NotDigest",
    "base_algorithm",
    "body_hash",
    "challenge_value",
    "challenges",
    "check_credentials",
    "ha1",
    "hex_length",
    "normalize_algorithm",
    "parse_credentials",
    "response",
    "user_hash",
    "verify",
]

#: Algorithms sipd offers, in the order its challenges list them: RFC 8760
#: §2.4 has the preferred one first, and clients pick the first they support.
ALGORITHMS: tuple[str, ...] = ("SHA-256", "MD5")

_CANONICAL_ALGORITHMS = {
    "md5": "MD5",
    "md5-sess": "MD5-sess",
    "sha-256": "SHA-256",
    "sha-256-sess": "SHA-256-sess",
}
_HEX_LENGTH = {"MD5": 32, "SHA-256": 64}
_QOPS = frozenset(("auth", "auth-int"))
_NC_MAX = 0xFFFFFFFF


# ------------------------------------------------------------ algorithms


def normalize_algorithm(name: str) -> str:
    """The canonical spelling of a supported algorithm name.

    ``"md5"`` gives ``"MD5"``, ``"sha-256-SESS"`` gives ``"SHA-256-sess"``.
    Raises ValueError for anything else (SHA-512-256 is not supported: no
    SIP device in the field uses it and hashlib does not promise it).
    """
    canonical = _CANONICAL_ALGORITHMS.get(name.lower())
    if canonical is None:
        raise ValueError(f"unsupported digest algorithm {name!r}")
    return canonical


def base_algorithm(algorithm: str) -> str:
    """``"MD5"`` or ``"SHA-256"``: the hash behind ``algorithm``, ``-sess`` dropped."""
    canonical = normalize_algorithm(algorithm)
    return canonical[:-5] if canonical.endswith("-sess") else canonical


def hex_length(algorithm: str) -> int:
    """Length of a hex digest (an HA1 or a response) for ``algorithm``."""
    return _HEX_LENGTH[base_algorithm(algorithm)]


def _bytes(text: str) -> bytes:
    # Header text is decoded with surrogateescape; this gives back the very
    # bytes the client hashed, even when they are not UTF-8.
    return text.encode("utf-8", "surrogateescape")


def _hash(base: str, data: bytes) -> str:
    if base == "SHA-256":
        return hashlib.sha256(data).hexdigest()
    return hashlib.md5(data).hexdigest()


# ------------------------------------------------------------------ math


def ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(username:realm:password), the value ``~/.sr/passwd`` stores.

    For a ``-sess`` algorithm this is still the stored value; the per-nonce
    step is done by :func:`response`, which knows the nonces.
    """
    return _hash(base_algorithm(algorithm), _bytes(f"{username}:{realm}:{password}"))


def user_hash(username: str, realm: str, algorithm: str = "SHA-256") -> str:
    """H(username:realm), what a client sends as ``username`` with ``userhash=true``."""
    return _hash(base_algorithm(algorithm), _bytes(f"{username}:{realm}"))


def body_hash(body: bytes, algorithm: str) -> str:
    """H(entity-body) for ``qop=auth-int``."""
    return _hash(base_algorithm(algorithm), body)


def response(
    ha1: str,
    nonce: str,
    method: str,
    uri: str,
    algorithm: str = "MD5",
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
    body_hash: str | None = None,
) -> str:
    """The request-digest (RFC 7616 §3.4.1, RFC 2617 §3.2.2.1).

    ``nc`` is the 8-hex-digit text as the client sent it: it is hashed as
    text. ``qop=None`` is the RFC 2069 form. ``body_hash`` is required for
    ``auth-int`` (see :func:`body_hash`). Raises ValueError for a missing
    or unsupported input.
    """
    canonical = normalize_algorithm(algorithm)
    base = base_algorithm(canonical)
    # The client hashes the hex text of HA1 in lower case; a file may hold
    # it in upper case.
    key = ha1.lower()
    if canonical.endswith("-sess"):
        if cnonce is None:
            raise ValueError(f"{canonical} needs a cnonce")
        key = _hash(base, _bytes(f"{key}:{nonce}:{cnonce}"))
    qop_value = None if qop is None else qop.lower()
    if qop_value == "auth-int":
        if body_hash is None:
            raise ValueError("qop=auth-int needs the body hash")
        ha2 = _hash(base, _bytes(f"{method}:{uri}:{body_hash}"))
    elif qop_value is None or qop_value == "auth":
        ha2 = _hash(base, _bytes(f"{method}:{uri}"))
    else:
        raise ValueError(f"unsupported qop {qop!r}")
    if qop_value is None:
        return _hash(base, _bytes(f"{key}:{nonce}:{ha2}"))
    if nc is None or cnonce is None:
        raise ValueError(f"qop={qop_value} needs nc and cnonce")
    return _hash(base, _bytes(f"{key}:{nonce}:{nc}:{cnonce}:{qop_value}:{ha2}"))


def verify(credentials: Credentials, method: str, ha1: str, body: bytes = b"") -> bool:
    """True if ``credentials.response`` is right for ``ha1``, in constant time.

    ``ha1`` must be for the base hash of ``credentials.algorithm``. ``body``
    only matters for ``qop=auth-int``; the default is right for a request
    without a body, and a forgotten body fails closed.
    """
    try:
        bh = body_hash(body, credentials.algorithm) if credentials.qop == "auth-int" else None
        expected = response(
            ha1,
            credentials.nonce,
            method,
            credentials.uri,
            credentials.algorithm,
            credentials.qop,
            credentials.nc,
            credentials.cnonce,
            bh,
        )
    except ValueError:
        # Only credentials built by hand, not by parse_credentials, get here.
        return False
    return hmac.compare_digest(_bytes(expected), _bytes(credentials.response.lower()))


# ----------------------------------------------------------- credentials


@dataclass(frozen=True, slots=True)
class Credentials:
    """Digest credentials, as :func:`parse_credentials` builds them.

    Values are unquoted. ``algorithm`` is canonical (``MD5``, ``MD5-sess``,
    ``SHA-256``, ``SHA-256-sess``), ``qop`` is ``auth``, ``auth-int`` or
    None, ``response`` is lower-case hex, ``nc`` is the 8 hex digits as sent
    (the hash covers the text). ``params`` keeps unknown parameters in the
    order given, names in lower case.
    """

    username: str
    realm: str
    nonce: str
    uri: str
    response: str
    algorithm: str = "MD5"
    cnonce: str | None = None
    opaque: str | None = None
    qop: str | None = None
    nc: str | None = None
    userhash: bool = False
    params: tuple[tuple[str, str], ...] = ()

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, username: str, realm: str, nonce: str, uri: str, response: str,
                 algorithm: str = "MD5", cnonce: str | None = None, opaque: str | None = None,
                 qop: str | None = None, nc: str | None = None, userhash: bool = False,
                 params: tuple[tuple[str, str], ...] = ()) -> None:
        object.__setattr__(self, "username", username)
        object.__setattr__(self, "realm", realm)
        object.__setattr__(self, "nonce", nonce)
        object.__setattr__(self, "uri", uri)
        object.__setattr__(self, "response", response)
        object.__setattr__(self, "algorithm", algorithm)
        object.__setattr__(self, "cnonce", cnonce)
        object.__setattr__(self, "opaque", opaque)
        object.__setattr__(self, "qop", qop)
        object.__setattr__(self, "nc", nc)
        object.__setattr__(self, "userhash", userhash)
        object.__setattr__(self, "params", params)

    @property
    def nonce_count(self) -> int | None:
        """``nc`` as a number, None without ``qop``."""
        return None if self.nc is None else int(self.nc, 16)

    def param(self, name: str) -> str | None:
        """An unknown parameter's value by case-insensitive name."""
        lname = name.lower()
        for key, value in self.params:
            if key == lname:
                return value
        return None

    def to_header(self) -> str:
        """The header value these credentials parse from (for clients and tests)."""
        parts = [
            f"Digest username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}",
            f"algorithm={self.algorithm}",
        ]
        if self.cnonce is not None:
            parts.append(f"cnonce={_quote(self.cnonce)}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        if self.qop is not None:
            parts.append(f"qop={self.qop}")
        if self.nc is not None:
            parts.append(f"nc={self.nc}")
        if self.userhash:
            parts.append("userhash=true")
        parts.extend(f"{k}={_quote(v)}" for k, v in self.params)
        return ", ".join(parts)


class NotDigest(ParseError):
    """Credentials in another scheme (Basic, Bearer, ...).

    Not malformed, just not ours: a caller looking for Digest credentials
    among several headers skips these instead of answering 400. It is a
    :class:`ParseError`, so a caller that does not care still gets a 400.
    """

    def __init__(self, header: str, scheme: str) -> None:
        super().__init__(f"Bad {header} header: scheme {_show(scheme)} is not Digest")
        self.scheme = scheme


# Whitespace where LWS is allowed; header values arrive unfolded, but a
# fold (CRLF followed by a space) that survives is whitespace too.
_LWS = r"(?:[ \t]|\r\n[ \t])"
_TOKEN = rf"[{re.escape(TOKEN_CHARACTERS)}]+"
# RFC 3261's quoted-string, as every header reads it.
_QUOTED = QUOTED_STRING
_TOKEN_RE = re.compile(_TOKEN)
_LWS_RE = re.compile(rf"{_LWS}*")
_SCHEME_RE = re.compile(rf"{_LWS}*({_TOKEN})")
_PARAM_RE = re.compile(rf"({_TOKEN}){_LWS}*={_LWS}*({_QUOTED}|{_TOKEN})")
_NC_RE = re.compile(r"[0-9A-Fa-f]{8}")
_HEX_RE = re.compile(r"[0-9a-f]+")
# RFC 8187 ext-value: charset'language'value-chars
_EXT_VALUE_RE = re.compile(r"([A-Za-z0-9!#$%&+\-^_`{}~]+)'([A-Za-z0-9\-]*)'(.*)", re.DOTALL)
_PCT_RE = re.compile(r"(?:%[0-9A-Fa-f]{2}|[A-Za-z0-9!#$&+\-.^_`|~])*")
_EXT_CHARSETS = {"utf-8": "utf-8", "iso-8859-1": "latin-1"}


def _skip_lws(text: str, i: int) -> int:
    m = _LWS_RE.match(text, i)
    assert m is not None  # the pattern matches the empty string
    return m.end()


def _show(text: str) -> str:
    """``text`` for a reason phrase: only short tokens, never client bytes that could break a status line."""
    if len(text) <= 32 and is_token(text):
        return f"'{text}'"
    return "(unprintable)"


#: Credentials whose :func:`parse_credentials` answer is kept: the proxy reads
#: a request's twice (to check them, and to drop them from what it forwards).
PARSED_CREDENTIALS = 64
#: Longer values are parsed each time.
CACHED_CREDENTIALS_MAX = 1024


def parse_credentials(value: str, header: str = "Authorization") -> Credentials:
    """Parse an ``Authorization`` or ``Proxy-Authorization`` header value.

    ``header`` names the field in error reasons. Raises :class:`NotDigest`
    for another scheme and :class:`ParseError` ("Bad Authorization header:
    ...") for malformed Digest credentials. The answers for the last
    :data:`PARSED_CREDENTIALS` values are kept (they are immutable).
    """
    if len(value) > CACHED_CREDENTIALS_MAX:
        return _parse_credentials(value, header)
    return _parse_credentials_cached(value, header)


@functools.lru_cache(maxsize=PARSED_CREDENTIALS)
def _parse_credentials_cached(value: str, header: str) -> Credentials:
    return _parse_credentials(value, header)


def _parse_credentials(value: str, header: str) -> Credentials:

    def bad(what: str) -> ParseError:
        return ParseError(f"Bad {header} header: {what}")

    n = len(value)
    m = _SCHEME_RE.match(value)
    if m is None:
        raise bad("no scheme" if _LWS_RE.fullmatch(value) else "bad scheme")
    scheme = m.group(1)
    if scheme.lower() != "digest":
        raise NotDigest(header, scheme)
    i = m.end()
    j = _skip_lws(value, i)
    if j == n:
        raise bad("no parameters")
    if j == i:
        raise bad("no space after Digest")
    i = j

    # A value longer than any phone sends goes the loop's way only: it stops
    # at the first fault, where a pattern that fails backtracks over it all.
    params = _params_at_once(value, i, bad) if n <= CACHED_CREDENTIALS_MAX else None
    if params is None:
        params = _params_one_by_one(value, i, bad)
    return _build(params, bad)


def _params_at_once(value: str, i: int,
                    bad: Callable[[str], ParseError]) -> dict[str, str] | None:
    """The parameters from ``value[i:]`` in the form phones send them, else None.

    That form is ``name=token`` or ``name="text"`` (no escapes, nothing but
    printable characters), a comma and spaces between two, nothing before
    the first or after the last. Read with the string's own searches, not
    a pattern: the regular expression engine took some 400 instructions a
    character, nearly a fifth of what the sans-IO core spent on a
    registration's two requests. Whatever else (empty elements,
    folds, tabs, escapes, anything malformed) is None, for
    :func:`_params_one_by_one` to read; what this one reads, that one reads
    alike.
    """
    params: dict[str, str] = {}
    n = len(value)
    pos = i
    while True:
        eq = value.find("=", pos)
        name = value[pos:eq]
        if eq < 0 or not is_token(name):
            return None
        start = eq + 1
        if value.startswith('"', start):
            close = value.find('"', start + 1)
            if close < 0:
                return None
            text = value[start + 1:close]
            # Neither a quoted-pair nor a control character (HT included).
            if "\\" in text or not text.isprintable():
                return None
            end = close + 1
        else:
            comma = value.find(",", start)
            end = n if comma < 0 else comma
            text = value[start:end]
            if not is_token(text):
                return None
        key = name.lower()
        if key in params:
            raise bad(f"duplicate parameter {_show(key)}")
        params[key] = text
        if end == n:
            return params
        if value[end] != ",":
            return None
        pos = end + 1
        while pos < n and value[pos] == " ":
            pos += 1
        if pos == n:
            return None


def _params_one_by_one(value: str, i: int, bad: Callable[[str], ParseError]) -> dict[str, str]:
    """The parameters from ``value[i:]``, read one at a time; the reason for the first fault."""
    n = len(value)
    params: dict[str, str] = {}
    while i < n:
        if value[i] == ",":
            # An empty list element, which RFC 7230 §7 asks us to skip.
            i = _skip_lws(value, i + 1)
            continue
        m = _PARAM_RE.match(value, i)
        if m is None:
            raise bad(_param_problem(value, i))
        name = m.group(1).lower()
        if name in params:
            raise bad(f"duplicate parameter {_show(name)}")
        raw = m.group(2)
        params[name] = unquote(raw) if raw[0] == '"' else raw
        i = _skip_lws(value, m.end())
        if i < n and value[i] != ",":
            raise bad(f"',' expected after parameter {_show(name)}")
    return params


def _param_problem(value: str, i: int) -> str:
    m = _TOKEN_RE.match(value, i)
    if m is None:
        return "parameter name expected"
    name = _show(m.group().lower())
    k = _skip_lws(value, m.end())
    if k >= len(value) or value[k] != "=":
        return f"parameter {name} has no value"
    k = _skip_lws(value, k + 1)
    if k < len(value) and value[k] == '"':
        return f"bad quoted string in parameter {name}"
    return f"bad value for parameter {name}"


def _build(params: dict[str, str], bad: Callable[[str], ParseError]) -> Credentials:
    def take(name: str) -> str | None:
        return params.pop(name, None)

    def need(name: str) -> str:
        v = params.pop(name, None)
        if v is None:
            raise bad(f"missing {name}")
        return v

    algorithm_text = take("algorithm")
    try:
        algorithm = "MD5" if algorithm_text is None else normalize_algorithm(algorithm_text)
    except ValueError:
        raise bad(f"unsupported algorithm {_show(algorithm_text or '')}") from None
    length = hex_length(algorithm)

    userhash_text = take("userhash")
    if userhash_text is None or userhash_text.lower() == "false":
        userhash = False
    elif userhash_text.lower() == "true":
        userhash = True
    else:
        raise bad("userhash must be true or false")

    username = take("username")
    ext_username = take("username*")
    if username is not None and ext_username is not None:
        raise bad("both username and username*")
    if ext_username is not None:
        if userhash:
            raise bad("username* with userhash=true")
        username = _decode_ext_value(ext_username)
        if username is None:
            raise bad("bad username*")
    if username is None:
        raise bad("missing username")
    if not username:
        raise bad("empty username")
    if userhash:
        username = username.lower()
        if len(username) != length or not _HEX_RE.fullmatch(username):
            raise bad("userhash=true but username is not a hash")

    realm = need("realm")
    nonce = need("nonce")
    if not nonce:
        raise bad("empty nonce")
    uri = need("uri")
    if not uri:
        raise bad("empty uri")
    resp = need("response").lower()
    if len(resp) != length or not _HEX_RE.fullmatch(resp):
        raise bad(f"response is not {length} hex digits for {algorithm}")

    qop = take("qop")
    if qop is not None:
        qop = qop.lower()
        if qop not in _QOPS:
            raise bad(f"unsupported qop {_show(qop)}")
    nc = take("nc")
    cnonce = take("cnonce")
    if qop is not None:
        if nc is None:
            raise bad(f"qop={qop} without nc")
        if cnonce is None:
            raise bad(f"qop={qop} without cnonce")
    else:
        # RFC 2617 §3.2.2: without qop there is no count and no client nonce
        # (but -sess needs one); a client sending them is computing
        # something else than what we would check.
        if nc is not None:
            raise bad("nc without qop")
        if cnonce is not None and not algorithm.endswith("-sess"):
            raise bad("cnonce without qop")
    if algorithm.endswith("-sess") and cnonce is None:
        raise bad(f"{algorithm} without cnonce")
    if nc is not None:
        if not _NC_RE.fullmatch(nc):
            raise bad("nc is not 8 hex digits")
        if int(nc, 16) == 0:
            raise bad("nc must start at 00000001")
    opaque = take("opaque")

    return Credentials(
        username=username,
        realm=realm,
        nonce=nonce,
        uri=uri,
        response=resp,
        algorithm=algorithm,
        cnonce=cnonce,
        opaque=opaque,
        qop=qop,
        nc=nc,
        userhash=userhash,
        params=tuple(params.items()),
    )


def _decode_ext_value(text: str) -> str | None:
    m = _EXT_VALUE_RE.fullmatch(text)
    if m is None:
        return None
    codec = _EXT_CHARSETS.get(m.group(1).lower())
    if codec is None or not _PCT_RE.fullmatch(m.group(3)):
        return None
    try:
        return urllib.parse.unquote_to_bytes(m.group(3)).decode(codec)
    except UnicodeDecodeError:
        return None


# ---------------------------------------------------------------- nonces


class NonceStatus(enum.Enum):
    VALID = "valid"
    #: Authentic, but older than the lifetime or issued in the future.
    STALE = "stale"
    #: Not minted by us for this bound (forged, malformed, other bound, old secret).
    INVALID = "invalid"


#: BLAKE2b's personalisation: a MAC of this use, never equal to another's under the same key.
_NONCE_PERSON = b"sipd nonce v2"
_NONCE_PAYLOAD = struct.Struct(">q8s")  # issue time in ms, salt
_NONCE_TAG_LENGTH = 16
_NONCE_TEXT_LENGTH = 43  # base64 of 32 bytes, without padding
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{43}")
#: 43 characters carry 258 bits, 2 more than the 32 bytes: the last one's
#: two low bits are zero in the canonical spelling.
_NONCE_LAST = frozenset("AEIMQUYcgkosw048")
_MIN_SECRET = 16


class NonceManager:
    """Mints nonces and recognises them later without storing them.

    ``bound`` is what a nonce is valid for (the realm, say): a nonce minted
    for one bound is INVALID for another. ``max_skew`` is how far in the
    future an issue time may be before the nonce counts as STALE (a clock
    stepped back). ``random`` supplies the salt; tests may pin it.
    """

    def __init__(
        self,
        secret: bytes,
        lifetime: float = 300.0,
        previous_secret: bytes | None = None,
        *,
        max_skew: float = 5.0,
        random: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if not (math.isfinite(lifetime) and lifetime > 0):
            raise ValueError("nonce lifetime must be a positive number of seconds")
        if not (math.isfinite(max_skew) and max_skew >= 0):
            raise ValueError("max_skew must be a non-negative number of seconds")
        self.lifetime = lifetime
        self.max_skew = max_skew
        self._random = random
        self._current = self._key(secret)
        self._previous = None if previous_secret is None else self._key(previous_secret)

    @staticmethod
    def _key(secret: bytes) -> bytes:
        if len(secret) < _MIN_SECRET:
            raise ValueError(f"nonce secret must be at least {_MIN_SECRET} bytes")
        # BLAKE2b takes a key of up to 64 bytes; a longer secret is hashed to one.
        if len(secret) > hashlib.blake2b.MAX_KEY_SIZE:
            secret = hashlib.blake2b(secret, person=_NONCE_PERSON).digest()
        return secret

    def rotate(self, new_secret: bytes) -> None:
        """Mint with ``new_secret`` from now on; keep recognising the current one."""
        self._previous, self._current = self._current, self._key(new_secret)

    def make(self, now: float, bound: str) -> str:
        """A fresh nonce issued at ``now`` for ``bound``."""
        payload = _NONCE_PAYLOAD.pack(_millis(now), self._random(8))
        raw = payload + self._tag(self._current, payload, bound)
        # base64url without its padding ("="): base64's own functions are
        # interpreted wrappers of these two calls.
        text = binascii.b2a_base64(raw, newline=False).translate(_TO_URLSAFE)
        return text[:_NONCE_TEXT_LENGTH].decode("ascii")

    def issued(self, nonce: str, bound: str) -> float | None:
        """The issue time of a nonce we minted for ``bound``, or None.

        The time is authenticated: None for anything forged, malformed, from
        another bound or signed with a secret no longer kept.
        """
        # Only the canonical spelling, so that one nonce has one text (nonce
        # counts are kept per text).
        if (len(nonce) != _NONCE_TEXT_LENGTH or nonce[-1] not in _NONCE_LAST
                or not _NONCE_RE.fullmatch(nonce)):
            return None
        # ASCII and of the alphabet, as the pattern above checked.
        raw = binascii.a2b_base64(nonce.encode("ascii").translate(_FROM_URLSAFE) + b"=")
        payload, tag = raw[: _NONCE_PAYLOAD.size], raw[_NONCE_PAYLOAD.size :]
        for key in (self._current, self._previous):
            if key is not None and hmac.compare_digest(self._tag(key, payload, bound), tag):
                millis, _salt = _NONCE_PAYLOAD.unpack(payload)
                return float(millis) / 1000.0
        return None

    def status(self, issued: float, now: float) -> NonceStatus:
        """VALID or STALE for an authentic nonce issued at ``issued``."""
        if not math.isfinite(now):
            raise ValueError("now must be a finite number of seconds")
        age = now - issued
        if age > self.lifetime or age < -self.max_skew:
            return NonceStatus.STALE
        return NonceStatus.VALID

    def check(self, nonce: str, now: float, bound: str) -> NonceStatus:
        """Whether ``nonce`` is one of ours for ``bound`` and still fresh at ``now``."""
        issued = self.issued(nonce, bound)
        if issued is None:
            return NonceStatus.INVALID
        return self.status(issued, now)

    @staticmethod
    def _tag(key: bytes, payload: bytes, bound: str) -> bytes:
        # Keyed BLAKE2b is a MAC by design (RFC 7693), in one call: an
        # HMAC object copied and updated for each nonce took three times as
        # long. The payload has a fixed length, so payload + bound is
        # unambiguous.
        return hashlib.blake2b(payload + _bytes(bound), key=key,
                               digest_size=_NONCE_TAG_LENGTH, person=_NONCE_PERSON).digest()


def _millis(now: float) -> int:
    if not math.isfinite(now):
        raise ValueError("now must be a finite number of seconds")
    return math.floor(now * 1000)


class NonceCounts:
    """Nonce-count replay protection in bounded memory.

    :meth:`accept` records the highest nc seen per nonce. See the module
    docstring for eviction (the horizon) and for nonces used without qop.
    """

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        # hash(nonce) -> highest nc accepted and issue time in one int (see
        # _pack), least recently used first. Ints, not the nonce string, a
        # tuple and a float: the table holds every nonce used in the last
        # lifetime (one per phone after a burst of registrations). Python's
        # string hash is keyed per process, so nobody can aim two nonces at
        # one entry; two that share one by chance (2**-64) would only make a
        # phone answer one more challenge.
        self._seen: OrderedDict[int, int] = OrderedDict()
        self._horizon = -math.inf

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def horizon(self) -> float:
        """Newest issue time among evicted nonces; unknown nonces issued until then are refused."""
        return self._horizon

    def accept(self, nonce: str, nc: int | None, issued: float) -> bool:
        """Record a use of ``nonce`` with count ``nc``; False if it may be a replay.

        ``issued`` is the nonce's authenticated issue time
        (:meth:`NonceManager.issued`), kept to the millisecond as nonces
        carry it. ``nc=None`` is a use without qop: allowed once, as the
        nonce's only use.
        """
        key = hash(nonce)
        entry = self._seen.get(key)
        if entry is None:
            if issued <= self._horizon:
                return False
            if nc is not None and not 1 <= nc <= _NC_MAX:
                return False
            self._seen[key] = _pack(_NC_MAX if nc is None else nc, issued)
            if len(self._seen) > self.max_entries:
                _, evicted = self._seen.popitem(last=False)
                self._horizon = max(self._horizon, _issued(evicted))
            return True
        highest = entry & _NC_MAX
        if nc is None or not highest < nc <= _NC_MAX:
            return False
        self._seen[key] = entry - highest + nc
        self._seen.move_to_end(key)
        return True

    def forget_issued_before(self, cutoff: float) -> None:
        """Forget the least recently used nonces issued before ``cutoff``.

        The caller passes the oldest issue time still fresh (now minus the
        nonce lifetime): older nonces are STALE whatever their count, so
        their entries are dead weight; after a burst of registrations they
        would stay until ``max_entries`` newer ones pushed them out. Only
        the front of the table is looked at (cheap enough for every
        request); an old entry behind a younger one goes on a later call.
        The horizon moves as for an eviction, so a forgotten nonce is
        refused even if the clock steps back.
        """
        seen = self._seen
        while seen:
            key, entry = next(iter(seen.items()))
            issued = _issued(entry)
            if issued >= cutoff:
                return
            del seen[key]
            self._horizon = max(self._horizon, issued)


def _pack(nc: int, issued: float) -> int:
    """A nonce count (32 bits) and an issue time in milliseconds, in one int."""
    return (round(issued * 1000) << 32) | nc


def _issued(entry: int) -> float:
    return (entry >> 32) / 1000


# ------------------------------------------------------------ challenges


_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _quote(text: str) -> str:
    # A quoted-pair cannot carry CR or LF, and other controls are not
    # qdtext: refuse what would break the header rather than emit it.
    if _CONTROL_RE.search(text):
        raise ValueError("control character in a digest parameter")
    return quote(text)


def challenge_value(
    realm: str,
    nonce: str,
    algorithm: str,
    stale: bool = False,
    opaque: str | None = None,
    qop: str | None = "auth",
) -> str:
    """A ``WWW-Authenticate`` / ``Proxy-Authenticate`` value.

    ``qop`` is a comma-separated list of ``auth``/``auth-int``, or None for
    an RFC 2069 challenge.
    """
    parts = [
        f"Digest realm={_quote(realm)}",
        f"nonce={_quote(nonce)}",
        f"algorithm={normalize_algorithm(algorithm)}",
    ]
    if qop is not None:
        options = [q.strip(" \t").lower() for q in qop.split(",")]
        if not options or any(q not in _QOPS for q in options):
            raise ValueError(f"unsupported qop {qop!r}")
        parts.append(f"qop={_quote(','.join(options))}")
    if stale:
        parts.append("stale=true")
    if opaque is not None:
        parts.append(f"opaque={_quote(opaque)}")
    return ", ".join(parts)


def challenges(
    realm: str,
    now: float,
    nonce_manager: NonceManager,
    stale: bool = False,
    algorithms: Sequence[str] = ALGORITHMS,
) -> list[str]:
    """One challenge per algorithm, preferred first, sharing one fresh nonce bound to ``realm``."""
    nonce = nonce_manager.make(now, realm)
    return [challenge_value(realm, nonce, a, stale=stale) for a in algorithms]


# ------------------------------------------------------------- the flow


class AuthResult(enum.Enum):
    OK = "ok"
    #: The response is right but the nonce is not (expired, replayed, not
    #: ours): challenge again with ``stale=true``. Not a failure.
    STALE = "stale"
    #: Unknown user or wrong response; the two are indistinguishable.
    FAILED = "failed"


# Never a real HA1 (a hash is not all zeros); used so that unknown users
# cost the same hashing as known ones.
_DUMMY_HA1 = {base: "0" * length for base, length in _HEX_LENGTH.items()}


def check_credentials(
    creds: Credentials,
    method: str,
    ha1: str | None,
    *,
    nonces: NonceManager,
    counts: NonceCounts,
    now: float,
    bound: str,
    body: bytes = b"",
) -> AuthResult:
    """Decide a request's credentials.

    ``ha1`` is the stored HA1 of ``creds.username`` for the base hash of
    ``creds.algorithm``, or None when there is no such user (or no HA1 for
    that algorithm). ``bound`` is what the nonces were minted for (the
    realm). The nonce count is recorded only when the answer is OK, so
    nobody without the password can consume a client's counts.
    """
    known = ha1 is not None
    try:
        dummy = _DUMMY_HA1[base_algorithm(creds.algorithm)]
    except ValueError:
        dummy = _DUMMY_HA1["SHA-256"]
    right = verify(creds, method, ha1 if ha1 is not None else dummy, body)
    issued = nonces.issued(creds.nonce, bound)
    if not (right and known):
        return AuthResult.FAILED
    if issued is None or nonces.status(issued, now) is not NonceStatus.VALID:
        return AuthResult.STALE
    if not counts.accept(creds.nonce, creds.nonce_count, issued):
        return AuthResult.STALE
    counts.forget_issued_before(now - nonces.lifetime)
    return AuthResult.OK

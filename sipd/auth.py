"""Challenge, verify, throttle: digest authentication as the server applies it.

Sans-IO. Where the credentials come from (NSS, PAM, ``~/.sr/passwd``) is
the directory's business and runs in a worker thread; this module gets the
resulting :class:`~srfs.directory.Account` (or None) and decides.

Every refusal looks the same from outside: an unknown user, a wrong
password, a user outside the SIP group and a PAM refusal all get the same
fresh challenge after the same hashing work. The log says which, one line
per failure, in a form fail2ban can match::

    auth failed: user "jan" from 203.0.113.5 port 5060 (REGISTER): wrong password
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from srfs.directory import Account
from srfs.logtext import quote

from .digest import (
    AuthResult,
    Credentials,
    NonceCounts,
    NonceManager,
    NotDigest,
    base_algorithm,
    challenges,
    check_credentials,
    parse_credentials,
)
from .peer import Peer
from .sip.errors import ParseError, SipError
from .sip.message import Request

log = logging.getLogger("sipd.auth")

#: How long after its request a failed authentication is answered, whatever
#: the look-ups cost (NSS, the SIP group, PAM, ``~/.sr/passwd``): an unknown
#: user, a user outside the group and a wrong password take the same time.
AUTH_FAILURE_DELAY = 0.5


@dataclass
class AuthStats:
    challenges: int = 0
    ok: int = 0
    stale: int = 0
    failed: int = 0
    throttled: int = 0


class Throttle:
    """Failures per key (a source address, a user name) in a sliding window.

    After ``limit`` failures within ``window`` seconds the key is refused
    for ``ban`` seconds. A success clears the key. Memory is bounded: the
    least recently failing keys are forgotten first.
    """

    def __init__(self, limit: int = 10, window: float = 60.0, ban: float = 60.0,
                 max_entries: int = 100_000) -> None:
        self.limit = limit
        self.window = window
        self.ban = ban
        self.max_entries = max_entries
        self._fails: OrderedDict[str, list[float]] = OrderedDict()
        self._banned: dict[str, float] = {}

    def blocked(self, key: str, now: float) -> bool:
        until = self._banned.get(key)
        if until is None:
            return False
        if now >= until:
            del self._banned[key]
            return False
        return True

    def failure(self, key: str, now: float) -> bool:
        """Count a failure; True if this one starts a ban."""
        times = self._fails.pop(key, [])
        times = [t for t in times if now - t < self.window]
        times.append(now)
        self._fails[key] = times
        while len(self._fails) > self.max_entries:
            self._fails.popitem(last=False)
        if len(times) >= self.limit:
            self._banned[key] = now + self.ban
            del self._fails[key]
            if len(self._banned) > self.max_entries:
                self._banned = {k: v for k, v in self._banned.items() if v > now}
            return True
        return False

    def success(self, key: str) -> None:
        self._fails.pop(key, None)


class RecentAccounts:
    """Accounts looked up lately, so a phone's next request needs no worker thread.

    An entry is used while it is younger than ``ttl`` (the group and PAM
    answers: a minute, like the PAM cache) and ``fresh(account)`` says its
    ``~/.sr/passwd`` has not changed (one stat), so a new password still
    counts from the next request. Unknown users and refused accounts are
    remembered for ``negative_ttl`` only, so an administrator's fix counts
    within seconds.
    """

    def __init__(self, fresh: Callable[[Account], bool], ttl: float = 60.0,
                 negative_ttl: float = 10.0, max_entries: int = 20_000) -> None:
        self.fresh = fresh
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, Account | None]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, name: str, now: float) -> tuple[bool, Account | None]:
        """``(True, account)`` when a usable answer is remembered."""
        entry = self._entries.get(name)
        if entry is not None:
            until, account = entry
            if now < until and (account is None or not account.allowed or self.fresh(account)):
                self.hits += 1
                return True, account
            del self._entries[name]
        self.misses += 1
        return False, None

    def put(self, name: str, account: Account | None, now: float) -> None:
        good = account is not None and account.allowed
        self._entries.pop(name, None)
        self._entries[name] = (now + (self.ttl if good else self.negative_ttl), account)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self) -> None:
        self._entries.clear()


class Authenticator:
    def __init__(self, realm: str, nonces: NonceManager, counts: NonceCounts | None = None,
                 throttle: Throttle | None = None,
                 algorithms: tuple[str, ...] = ("MD5", "SHA-256")) -> None:
        self.realm = realm
        self.algorithms = algorithms
        self.nonces = nonces
        self.counts = counts or NonceCounts()
        self.throttle = throttle or Throttle()
        self.stats = AuthStats()

    def credentials(self, req: Request, header: str) -> Credentials | None:
        """Our realm's digest credentials from ``header``, if any (RFC 3261 §22.3)."""
        for value in req.get_all(header):
            try:
                creds = parse_credentials(value, header)
            except NotDigest:
                continue
            except ParseError as exc:
                raise SipError(400, exc.reason) from None
            if creds.realm == self.realm:
                return creds
        return None

    def challenge_headers(self, proxy: bool, now: float, stale: bool = False) -> tuple[tuple[str, str], ...]:
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        self.stats.challenges += 1
        values = challenges(self.realm, now, self.nonces, stale=stale, algorithms=self.algorithms)
        return tuple((name, v) for v in values)

    def throttled(self, creds: Credentials, source: Peer, now: float) -> bool:
        blocked = self.throttle.blocked(f"user:{creds.username}", now) or self.throttle.blocked(
            f"host:{source.host}", now
        )
        if blocked:
            self.stats.throttled += 1
            log.warning("auth throttled: user %s from %s port %d", quote(creds.username, 64),
                        source.host, source.port)
        return blocked

    def check(self, creds: Credentials, req: Request, account: Account | None, source: Peer,
              now: float) -> AuthResult:
        ha1: str | None = None
        why = "unknown user"
        if account is not None:
            if not account.allowed:
                why = account.reason
            else:
                ha1 = account.ha1.get(base_algorithm(creds.algorithm))
                why = account.reason or f"no {base_algorithm(creds.algorithm)} password"
        result = check_credentials(
            creds, req.method, ha1, nonces=self.nonces, counts=self.counts, now=now,
            bound=self.realm, body=req.body,
        )
        if result is AuthResult.OK:
            self.stats.ok += 1
            self.throttle.success(f"user:{creds.username}")
        elif result is AuthResult.STALE:
            self.stats.stale += 1
        else:
            self.stats.failed += 1
            if ha1 is not None:
                why = "wrong password"
            log.warning("auth failed: user %s from %s port %d (%s): %s", quote(creds.username, 64),
                        source.host, source.port, req.method, why)
            banned = self.throttle.failure(f"user:{creds.username}", now)
            banned = self.throttle.failure(f"host:{source.host}", now) or banned
            if banned:
                log.warning("auth throttling: user %s from %s: too many failures",
                            quote(creds.username, 64), source.host)
        return result

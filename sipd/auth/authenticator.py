"""Challenge, verify, throttle: digest authentication as the server applies it.

Sans-IO, and one flow for REGISTER and for calls
(:meth:`Authenticator.authenticate`): credentials, then the throttle, then
the account (remembered, or looked up in a worker thread: NSS, PAM,
``~/.sr/passwd`` are the directory's business), then the digest, then a
:data:`Verdict` the registrar and the proxy each turn into their answer.

Every refusal looks the same from outside: an unknown user, a wrong
password, a user outside the SIP group and a PAM refusal all get the same
fresh challenge, sent :data:`AUTH_FAILURE_DELAY` after the request
arrived; a throttled request gets the same 403 whoever it names. The log
says which, one line per failure, in a form fail2ban can match::

    auth failed: user "jan" from 203.0.113.5 port 5060 (REGISTER): wrong password

A user database that fails to answer (NSS or PAM could not look, as
opposed to "no such user") is nobody's failed login: the request gets
``503 Service Unavailable`` with ``Retry-After`` (:data:`RETRY_AFTER`),
is never counted by the throttle and never logged as ``auth failed``. A
user whose account was looked up before is served from that answer
meanwhile (:meth:`RecentAccounts.last_good`). The outage is logged once
when it begins and once when it ends (:class:`DirectoryHealth`); while it
lasts, one look-up at a time probes the directory and other requests
that would need one get their 503 at once, so a hanging directory holds
no queue of requests.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeAlias
from urllib.parse import unquote

from sipd.auth.challenges import ChallengePolicy, challenge_hint
from sipd.auth.throttle import Throttle
from sipd.core.identity import LocalIdentity
from sipd.core.peer import Peer
from sipd.core.work import Outcome
from sipd.sip.digest import (
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
from sipd.sip.errors import ParseError, SipError
from sipd.sip.message import Request
from sipd.sip.uri import SipURI, TelURI, parse_uri
from srfs.accounts.directory import Account
from srfs.addresses import parse_host
from srfs.logtext import quote

log = logging.getLogger("sipd.auth")

#: How long after its request a failed authentication is answered, whatever
#: the look-ups cost (NSS, the SIP group, PAM, ``~/.sr/passwd``): an unknown
#: user, a user outside the group and a wrong password take the same time.
AUTH_FAILURE_DELAY = 0.5

#: Seconds a phone is asked to wait (``Retry-After``) while the user database
#: fails, unless set otherwise (``retry_after``, :attr:`DirectoryHealth.retry_after`).
RETRY_AFTER = 30

UNAVAILABLE_REASON = "User database unavailable"


def unavailable_headers(retry_after: int = RETRY_AFTER) -> tuple[tuple[str, str], ...]:
    return (("Retry-After", str(retry_after)),)


class DirectoryHealth:
    """Whether the user database answers, as the look-ups found it.

    Sans-IO: the callers report each look-up's outcome with the wall
    clock. The outage is logged when it begins and when it ends, never per
    request; ``failures`` counts the look-ups that failed (metrics).
    """

    def __init__(self) -> None:
        self.down_since: float | None = None
        self.failures = 0
        self.outages = 0
        self.refused = 0
        #: A look-up is under way while down: the one probe.
        self.probing = False
        #: What the 503's ``Retry-After`` says (the ``retry_after`` setting).
        self.retry_after = RETRY_AFTER

    @property
    def down(self) -> bool:
        return self.down_since is not None

    def failed(self, what: str, error: BaseException, wall: float) -> None:
        self.failures += 1
        if self.down_since is None:
            self.down_since = wall
            self.outages += 1
            log.error("user database unavailable (looking up %s: %s): requests that need it "
                      "get 503 until it answers; cached accounts are still served", what, error)

    def answered(self, wall: float) -> None:
        if self.down_since is not None:
            log.warning("user database answers again after %.0f s (%d request(s) got 503)",
                        max(0.0, wall - self.down_since), self.refused)
            self.down_since = None
            self.refused = 0

    def refusal(self) -> Refused:
        """The answer to a request the failing database cannot decide."""
        self.refused += 1
        return Refused(503, UNAVAILABLE_REASON, unavailable_headers(self.retry_after))



@dataclass(frozen=True, slots=True)
class AuthFailure:
    """A refused authentication, as the log line names it (the live event file)."""

    username: str
    source: Peer
    method: str
    reason: str
    wall: float


@dataclass
class AuthStats:
    challenges: int = 0
    ok: int = 0
    stale: int = 0
    failed: int = 0
    throttled: int = 0
    blocks: int = 0


class RecentAccounts:
    """Accounts looked up lately, so a phone's next request needs no worker thread.

    An entry is used while it is younger than ``ttl`` and than what is left
    of the directory's own cached account state (``Account.valid_for``), so
    a suspension takes no longer here than in the directory, and
    ``fresh(account)`` says its ``~/.sr/passwd`` has not changed (one stat),
    so a new password still counts from the next request. Unknown users and
    refused accounts are remembered for ``negative_ttl`` only, so an
    administrator's fix counts within seconds. The daemon calls
    :meth:`forget` whenever the directory forgets (SIGHUP, a change of the
    account files).
    """

    def __init__(self, fresh: Callable[[Account], bool], ttl: float = 60.0,
                 negative_ttl: float = 10.0, max_entries: int = 20_000) -> None:
        self.fresh = fresh
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[str, tuple[float, Account | None]] = OrderedDict()
        #: The last allowed account the directory gave per user, for its
        #: outages only: dropped when the directory says otherwise.
        self._good: OrderedDict[str, Account] = OrderedDict()
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

    def last_good(self, name: str) -> Account | None:
        """The last allowed account looked up for ``name``, whatever its age, if its
        ``~/.sr/passwd`` has not changed since: what serves the user while the
        directory fails."""
        account = self._good.get(name)
        if account is None or not self.fresh(account):
            return None
        return account

    def put(self, name: str, account: Account | None, now: float) -> None:
        good = account is not None and account.allowed
        if account is not None and good:
            self._good[name] = account
            self._good.move_to_end(name)
            while len(self._good) > self.max_entries:
                self._good.popitem(last=False)
        else:
            # The directory answered: no such user, or not allowed.
            self._good.pop(name, None)
        ttl = self.ttl if good else self.negative_ttl
        if account is not None:
            ttl = min(ttl, account.valid_for)
        self._entries.pop(name, None)
        if ttl <= 0:
            return
        self._entries[name] = (now + ttl, account)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self) -> None:
        """Every answer goes; the last good accounts stay, for outages only."""
        self._entries.clear()

    def forget_user(self, name: str) -> None:
        """``name``'s answer goes (the user joined the SIP group, say)."""
        self._entries.pop(name, None)


@dataclass(frozen=True, slots=True)
class Authenticated:
    """The request carries a right password of an account that may use SIP."""

    account: Account
    creds: Credentials

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, account: Account, creds: Credentials) -> None:
        object.__setattr__(self, "account", account)
        object.__setattr__(self, "creds", creds)


@dataclass(frozen=True, slots=True)
class Refused:
    """The answer to a request that did not authenticate.

    A challenge (401/407 with its headers), a throttled request (403) or a
    user database that failed (503 with Retry-After). ``not_before`` is the
    wall-clock time before which it must not be sent (failures wait for
    :data:`AUTH_FAILURE_DELAY`), or None.
    """

    status: int
    reason: str
    headers: tuple[tuple[str, str], ...] = ()
    not_before: float | None = None

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = (),
                 not_before: float | None = None) -> None:
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "reason", reason)
        object.__setattr__(self, "headers", headers)
        object.__setattr__(self, "not_before", not_before)


Verdict: TypeAlias = Authenticated | Refused


@dataclass(frozen=True, slots=True)
class LookUp:
    """The account must be looked up first: ``run`` blocks (a worker thread),
    then ``resume(outcome, wall)`` gives the verdict."""

    run: Callable[[], Account | None]
    resume: Callable[[Outcome[Account | None], float], Verdict]
    name: str

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, run: Callable[[], Account | None],
                 resume: Callable[[Outcome[Account | None], float], Verdict], name: str) -> None:
        object.__setattr__(self, "run", run)
        object.__setattr__(self, "resume", resume)
        object.__setattr__(self, "name", name)


def _no_lookup(name: str, rhost: str | None) -> Account | None:
    return None


class Authenticator:
    def __init__(
        self,
        realm: str,
        nonces: NonceManager,
        counts: NonceCounts | None = None,
        throttle: Throttle | None = None,
        algorithms: tuple[str, ...] = ("MD5", "SHA-256"),
        *,
        policy: ChallengePolicy | None = None,
        identity: LocalIdentity | None = None,
        lookup: Callable[[str, str | None], Account | None] = _no_lookup,
        accounts: RecentAccounts | None = None,
    ) -> None:
        self.realm = realm
        self.algorithms = algorithms
        self.nonces = nonces
        self.counts = counts or NonceCounts()
        self.throttle = throttle or Throttle()
        self.policy = policy or ChallengePolicy(algorithms)
        #: Who "this server" is, for the digest uri of a request to it.
        self.identity = identity
        #: Blocking: the account a digest username names (NSS, PAM, ~/.sr/passwd),
        #: for a REGISTER and a call alike; it may also find what routing will
        #: ask about the user, in the same worker trip.
        self.lookup = lookup
        self.accounts = accounts
        self.stats = AuthStats()
        #: Shared with the proxy: one outage, logged once.
        self.health = DirectoryHealth()
        self._failure_listeners: list[Callable[[AuthFailure], None]] = []

    def subscribe_failures(self, listener: Callable[[AuthFailure], None]) -> None:
        """Call ``listener`` with every failure that :meth:`check` logs."""
        self._failure_listeners.append(listener)

    # ------------------------------------------------------------ the flow

    def authenticate(self, req: Request, source: Peer, wall: float, *,
                     proxy: bool) -> Verdict | LookUp:
        """Credentials, throttle, account, digest: who sent ``req``, or the answer.

        ``proxy`` picks Proxy-Authorization and 407 over Authorization and
        401. Raises SipError(400) for credentials that do not parse.
        """
        creds = self.credentials(req, "Proxy-Authorization" if proxy else "Authorization")
        hint, agent = challenge_hint(req)
        if creds is None:
            return self._challenge(proxy, wall, self.policy.offer(hint, agent))
        if self.throttle.blocked(creds.username, source.host, wall, source.port):
            # The same answer, at the same time, for every name and password.
            self.stats.throttled += 1
            return Refused(403, "Too many failed attempts", (), wall + AUTH_FAILURE_DELAY)
        name = creds.username
        accounts = self.accounts
        if accounts is not None:
            hit, known = accounts.get(name, wall)
            if hit:
                return self._verify(req, creds, known, source, wall, proxy, (hint, agent), wall)
        lookup = self.lookup
        health = self.health
        if health.down and health.probing:
            # One look-up probes the failing directory; the rest are not queued.
            return self._unavailable(req, creds, source, wall, proxy, (hint, agent))
        probe = health.down
        health.probing = health.probing or probe

        def resume(outcome: Outcome[Account | None], later: float) -> Verdict:
            if probe:
                health.probing = False
            if outcome.error is not None:
                # Not the user's failure: never counted, never a challenge.
                health.failed(f"user {quote(name, 64)}", outcome.error, later)
                return self._unavailable(req, creds, source, later, proxy, (hint, agent))
            health.answered(later)
            if accounts is not None:
                accounts.put(name, outcome.value, later)
            return self._verify(req, creds, outcome.value, source, later, proxy, (hint, agent),
                                wall)

        return LookUp(lambda: lookup(name, source.host), resume, f"account {name}")

    def _unavailable(self, req: Request, creds: Credentials, source: Peer, wall: float,
                     proxy: bool, who: tuple[str, str]) -> Verdict:
        """While the directory fails: the last good account if there is one, else 503."""
        known = None if self.accounts is None else self.accounts.last_good(creds.username)
        if known is None:
            return self.health.refusal()
        return self._verify(req, creds, known, source, wall, proxy, who, wall)

    def _verify(self, req: Request, creds: Credentials, account: Account | None, source: Peer,
                wall: float, proxy: bool, who: tuple[str, str], arrived: float) -> Verdict:
        result = self.check(creds, req, account, source, wall)
        algorithm = base_algorithm(creds.algorithm)
        if result is AuthResult.OK:
            assert account is not None
            self.policy.succeeded(*who, algorithm)
            return Authenticated(account, creds)
        if result is AuthResult.STALE:
            # The password was right: offer what the phone just used.
            offer = (algorithm,) if algorithm in self.algorithms else self.policy.offer(*who)
            return self._challenge(proxy, wall, offer, stale=True)
        refused = self._challenge(proxy, wall, self.policy.offer(*who))
        return Refused(refused.status, refused.reason, refused.headers,
                       arrived + AUTH_FAILURE_DELAY)

    def _challenge(self, proxy: bool, wall: float, algorithms: Sequence[str],
                   stale: bool = False) -> Refused:
        if proxy:
            return Refused(407, "Proxy Authentication Required",
                           self.challenge_headers(True, wall, stale, algorithms))
        return Refused(401, "Unauthorized", self.challenge_headers(False, wall, stale, algorithms))

    # ------------------------------------------------------------ the parts

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

    def challenge_headers(self, proxy: bool, now: float, stale: bool = False,
                          algorithms: Sequence[str] | None = None) -> tuple[tuple[str, str], ...]:
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        self.stats.challenges += 1
        offered = self.algorithms if algorithms is None else algorithms
        values = challenges(self.realm, now, self.nonces, stale=stale, algorithms=offered)
        return tuple((name, v) for v in values)

    def check(self, creds: Credentials, req: Request, account: Account | None, source: Peer,
              now: float) -> AuthResult:
        """Verify ``creds`` for ``req``; count and log a failure."""
        ha1: str | None = None
        why = "unknown user"
        if account is not None:
            if not account.allowed:
                why = account.reason
            else:
                ha1 = account.ha1.get(base_algorithm(creds.algorithm))
                why = account.reason or f"no {base_algorithm(creds.algorithm)} password"
        if base_algorithm(creds.algorithm) not in self.algorithms:
            ha1, why = None, f"{base_algorithm(creds.algorithm)} is not accepted (auth_algorithms)"
        result = check_credentials(
            creds, req.method, ha1, nonces=self.nonces, counts=self.counts, now=now,
            bound=self.realm, body=req.body,
        )
        if result is not AuthResult.FAILED and not _uri_designates(creds.uri, req, self.identity):
            # RFC 7616 §3.4.6: credentials computed for another Request-URI (a
            # captured INVITE replayed towards another callee) are a failure.
            result, why = AuthResult.FAILED, "digest uri is not the Request-URI"
        if result is AuthResult.OK:
            self.stats.ok += 1
            self.throttle.success(creds.username, source.host, now, source.port)
        elif result is AuthResult.STALE:
            self.stats.stale += 1
        else:
            self.stats.failed += 1
            if ha1 is not None and why != "digest uri is not the Request-URI":
                why = "wrong password"
            log.warning("auth failed: user %s from %s port %d (%s): %s", quote(creds.username, 64),
                        source.host, source.port, req.method, why)
            if self._failure_listeners:
                failure = AuthFailure(creds.username, source, req.method, why, now)
                for listener in self._failure_listeners:
                    listener(failure)
            if self.throttle.failure(creds.username, source.host, now):
                self.stats.blocks += 1
                log.warning("auth throttling: user %s from %s: too many failures",
                            quote(creds.username, 64), source.host)
        return result


def _uri_designates(text: str, req: Request, identity: LocalIdentity | None) -> bool:
    """Does the digest ``uri`` name the Request-URI (RFC 7616 §3.4.6)?

    Scheme, user and host must be the same, and the port. The one
    difference allowed: a digest uri that is this server's own address
    (no user part, one of its names or addresses, with or without one of
    its ports), which sipp writes whatever the Request-URI. Credentials a
    phone computed for a callee never pass for another callee.
    """
    try:
        given = parse_uri(text)
        target = req.uri
    except ParseError:
        return False
    if isinstance(given, TelURI) or isinstance(target, TelURI):
        return (isinstance(given, TelURI) and isinstance(target, TelURI)
                and given.number == target.number)
    if not isinstance(given, SipURI) or not isinstance(target, SipURI):
        return False
    if given.secure != target.secure:
        return False
    if given.user is None and identity is not None and _names_me(given, identity):
        return True
    return (unquote(given.user or "") == unquote(target.user or "")
            and _host_key(given.host) == _host_key(target.host) and given.port == target.port)


def _names_me(uri: SipURI, identity: LocalIdentity) -> bool:
    return identity.is_local_host(uri.host) and (uri.port is None or uri.port in identity.ports)


def _host_key(host: str) -> str:
    addr = parse_host(host)
    return str(addr) if addr is not None else host.strip("[]").lower().rstrip(".")

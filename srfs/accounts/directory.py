"""Who may use SIP, and with which credentials: one blocking call per request.

:meth:`Directory.state` answers whether a UNIX user may use SIP now (the
SIP group, a locked or expired shadow entry, PAM's account check: see
:mod:`srfs.accounts.state`); registrations, calls with credentials, calls
from a user's trusted trunk and calls to the user all ask it.
:meth:`Directory.account` adds, for a user name taken from a digest
``username``, what HA1s ``~/.sr/passwd`` holds for the realm. Every part
may block (NSS on LDAP, PAM ~2 ms, home I/O), so the daemon calls them
from a worker thread.

Account states are cached per user for ``ttl`` seconds (refusals for at
most ``negative_ttl``), so phones refreshing their registrations cost no
PAM call; :meth:`Directory.files_changed` drops them all as soon as
``/etc/passwd``, ``/etc/group``, ``/etc/shadow`` or the PAM service file
changed, and :meth:`Directory.forget` on SIGHUP. ``passwd`` is re-read
only when it changed (one ``fstatat``), so a new password set with
``sippasswd`` counts from the next request.
"""

from __future__ import annotations

import errno
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from srfs.accounts import pamcheck, passwd, users
from srfs.accounts.nss import DirectoryUnavailable
from srfs.accounts.pamcheck import PAM_AUTHINFO_UNAVAIL, PAM_SUCCESS, AccountCache
from srfs.accounts.state import ALLOWED, AccountState, SystemFiles, shadow_refusal
from srfs.files.home import FileCache, HomeError, SrDir, Stamp, as_user, open_watched, stamp_of
from srfs.files.homewatch import HomeWatch
from srfs.logtext import Recurring
from srfs.user import User

log = logging.getLogger("srfs.directory")

ALGORITHMS = ("MD5", "SHA-256")


@dataclass(frozen=True, slots=True)
class Account:
    """What the daemon needs to authenticate and authorise one user."""

    user: User
    allowed: bool
    """Member of the SIP group and, unless PAM is off, PAM's account check passed."""
    reason: str
    """Why not allowed, or why there are no credentials (for the log only)."""
    ha1: dict[str, str] = field(default_factory=dict)
    """HA1 per algorithm ("MD5", "SHA-256") for the realm; empty if none."""
    passwd_stamp: Stamp | None = None
    """What ``~/.sr/passwd`` looked like before it was read (see
    :meth:`Directory.unchanged`); None if it did not exist."""
    valid_for: float = math.inf
    """Seconds the account state stays cached in the directory: a copy kept
    elsewhere must not outlive it."""
    passwd_watched: int | None = None
    """The generation of the user's ``~/.sr`` in the directory's
    :class:`~srfs.files.homewatch.HomeWatch` that vouches for
    ``passwd_stamp``; None when only the stamp can tell."""


class Directory:
    """The UNIX user database seen through the SIP group, the shadow entry, PAM and ~/.sr/passwd."""

    def __init__(
        self,
        realm: str,
        group: str,
        pam_service: str | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        ttl: float = 60.0,
        negative_ttl: float = 10.0,
        locked_suspends: bool = True,
        files: SystemFiles | None = None,
        watch: HomeWatch | None = None,
    ) -> None:
        self.realm = realm
        self.group = group
        self.pam_service = pam_service
        self.locked_suspends = locked_suspends
        self._clock = clock
        self._wall = wall
        self._states: AccountCache[AccountState] = AccountCache(
            ttl=ttl, negative_ttl=negative_ttl, good=lambda s: s.allowed)
        self._lock = threading.Lock()
        #: Counts the times every state was forgotten: a check that began
        #: before one is not kept after it.
        self._generation = 0
        self._files = files
        self._files_lock = threading.Lock()
        # Only the entries: the file's lines would cost every user seen a
        # few hundred bytes more for as long as the daemon runs.
        self._watch = watch
        self._passwd = FileCache("passwd", passwd.index, watch=watch)
        self._unreadable = Recurring()
        #: The SIP group's members as start-up listed them (:meth:`prime`),
        #: by name, until ``_primed_until`` (monotonic).
        self._primed: dict[str, User] = {}
        self._primed_until = -math.inf

    @property
    def ttl(self) -> float:
        return self._states.ttl

    def configure(self, *, ttl: float | None = None, locked_suspends: bool | None = None) -> None:
        """SIGHUP's new settings: every state is checked again under them."""
        with self._lock:
            if ttl is not None:
                self._states.ttl = ttl
            if locked_suspends is not None:
                self.locked_suspends = locked_suspends
            self._invalidate()

    def prime(self, members: Iterable[User]) -> None:
        """The SIP group's members as start-up has just listed them.

        The first :meth:`account` look-up of each, within ``ttl`` seconds,
        takes the user's entry and membership of the group from here, with
        no NSS look-up of its own: after a restart every phone registers
        again, and each ``getpwnam`` may read all of ``/etc/passwd`` or ask
        a directory server. The shadow entry and PAM are still asked; when
        they refuse, the group is looked up after all, since that is what
        tells a directory server's outage from a refusal (the SIP group is
        never "not found"), which they cannot. What
        forgets states forgets these too (SIGHUP, a changed account file,
        the user leaving the group), so they count no longer than an
        account state would.
        """
        with self._lock:
            self._primed = {user.name: user for user in members}
            self._primed_until = self._clock() + self._states.ttl

    def _take_primed(self, name: str) -> User | None:
        with self._lock:
            if not self._primed:
                return None
            if self._clock() >= self._primed_until:
                self._primed = {}
                return None
            return self._primed.pop(name, None)

    def state(self, user: User, rhost: str | None = None) -> AccountState:
        """May ``user`` use SIP now: the group, the shadow entry, PAM; cached.

        ``rhost`` is the peer's address, for PAM modules such as pam_access
        (the answer is cached per user, whatever the address). Raises
        :class:`~srfs.accounts.users.DirectoryUnavailable` when NSS fails.
        """
        return self._state(user, rhost)[0]

    def _state(self, user: User, rhost: str | None,
               member: bool = False) -> tuple[AccountState, float]:
        """The state and for how many more seconds it is cached; ``member``:
        start-up found the user in the SIP group (:meth:`prime`)."""
        now = self._clock()
        with self._lock:
            cached = self._states.get(user.name, now)
            expiry = self._states.expiry(user.name)
            generation = self._generation
        if cached is not None and expiry is not None:
            return cached, expiry - now
        found = self._check(user, rhost, member)
        with self._lock:
            if generation != self._generation:
                # The files changed while this check ran: answer, keep nothing.
                return found, 0.0
            self._states.put(user.name, now, found)
            expiry = self._states.expiry(user.name)
        return found, (0.0 if expiry is None else expiry - now)

    def _check(self, user: User, rhost: str | None, member: bool = False) -> AccountState:
        if not member:
            if not users.is_sip_member(user, self.group, required=True):
                return AccountState(False, f"not a member of group {self.group}")
            return self._shadow_and_pam(user, rhost)
        found = self._shadow_and_pam(user, rhost)
        # A refusal may be the user database failing: the shadow entry and
        # PAM cannot tell, the group look-up can (it raises then, and
        # nothing is kept), and a membership ended since start counts first.
        if not found.allowed and not users.is_sip_member(user, self.group, required=True):
            return AccountState(False, f"not a member of group {self.group}")
        return found

    def _shadow_and_pam(self, user: User, rhost: str | None) -> AccountState:
        refusal = shadow_refusal(user.name, self._wall(), locked_suspends=self.locked_suspends)
        if refusal is not None:
            return AccountState(False, refusal)
        if self.pam_service is not None:
            rc, message = self._pam(user, rhost)
            if rc == PAM_AUTHINFO_UNAVAIL:
                # The module could not ask its directory: an outage, not a refusal.
                raise DirectoryUnavailable(errno.EAGAIN, f"PAM account check: {message}")
            if rc != PAM_SUCCESS:
                return AccountState(False, f"PAM account check failed: {message}")
        return ALLOWED

    def state_of(self, name: str, rhost: str | None = None) -> AccountState | None:
        """:meth:`state` by name; None when there is no such UNIX user."""
        user = users.lookup(name)
        if user is None:
            users.confirm_absent(name, self.group)
            return None
        return self.state(user, rhost)

    def account(self, name: str, rhost: str | None = None,
                also: Callable[[User, SrDir | None], None] | None = None) -> Account | None:
        """The account called ``name``, or None if there is no such UNIX user.

        Raises :class:`~srfs.accounts.users.DirectoryUnavailable` when NSS fails: the
        caller answers that as a server error, never as an unknown user or
        a refused account.

        ``also``, for an allowed account, is called with the user and their
        ``~/.sr`` as opened to read ``passwd`` (None: there is none), acting
        as the user, to read another kept file through the same open (their
        call settings); not called when that open or that read failed.
        """
        user = self._take_primed(name)
        member = user is not None
        if user is None:
            user = users.lookup(name)
        if user is None:
            # A directory that cannot look says "not found" too (nslcd).
            users.confirm_absent(name, self.group)
            return None
        state, valid_for = self._state(user, rhost, member)
        if not state.allowed:
            return Account(user, False, state.reason, valid_for=valid_for)
        try:
            # One open of ~/.sr and one turn of the thread's identity for
            # the files of one look-up: in a worker, every system call lets
            # the GIL go, a hand-off with a busy event loop each.
            with as_user(user):
                sr = open_watched(user, self._watch)
                try:
                    pw, stamp, watched = self._passwd.look_in(user, sr)
                    if also is not None:
                        also(user, sr)
                finally:
                    if sr is not None:
                        sr.close()
        except HomeError as exc:
            # Met at every authentication of the user: said once, until it changes.
            if self._unreadable.report(user.name, exc.reason):
                log.warning("ignoring passwd of %s: %s", user.name, exc.reason)
            return Account(user, True, exc.reason, passwd_stamp=passwd_stamp(user),
                           valid_for=valid_for)
        self._unreadable.clear(user.name)
        if pw is None:
            return Account(user, True, "no ~/.sr/passwd", passwd_stamp=stamp,
                           valid_for=valid_for, passwd_watched=watched)
        ha1 = {}
        entry = pw.get((user.name, self.realm))
        for algorithm in ALGORITHMS:
            value = None if entry is None else entry.ha1(algorithm)
            if value:
                ha1[algorithm] = value
        reason = "" if ha1 else f"no password for realm {self.realm}"
        return Account(user, True, reason, ha1, passwd_stamp=stamp, valid_for=valid_for,
                       passwd_watched=watched)

    def passwd_entries(self, user: User) -> dict[tuple[str, str], passwd.Entry] | None:
        """``user``'s ``~/.sr/passwd`` by (user, realm), None without it;
        :class:`HomeError` when it fails the checks. Kept as for
        :meth:`account`: start-up's look at every member's file leaves
        their first authentication nothing to read."""
        return self._passwd.get(user)

    def _pam(self, user: User, rhost: str | None) -> tuple[int, str]:
        assert self.pam_service is not None
        return pamcheck.account_check(user, self.pam_service, rhost)

    def unchanged(self, account: Account) -> bool:
        """Whether ``~/.sr/passwd`` is still the file ``account`` was read from.

        The watch's word where it gives one (:mod:`srfs.files.homewatch`:
        one ``poll``), else one ``lstat`` by path, as the user
        (:func:`srfs.files.home.stamp_of`), cheap enough for every request:
        it only decides whether to read again, and reading again goes
        through the safe path in :mod:`srfs.files.home` (no link is ever
        followed there).
        """
        watched = account.passwd_watched
        if watched is not None and self._watch is not None and self._watch.still(
                account.user.name, watched):
            return True
        return passwd_stamp(account.user) == account.passwd_stamp

    def forget(self) -> None:
        """Drop cached account states and passwd files (SIGHUP)."""
        with self._lock:
            self._invalidate()
        self._passwd.forget()

    def forget_user(self, name: str) -> None:
        """``name``'s cached state goes (the user joined or left the SIP
        group): a refusal remembered from before counts no longer, nor what
        start-up found (:meth:`prime`)."""
        with self._lock:
            self._states.invalidate(name)
            self._primed.pop(name, None)

    def files_changed(self) -> bool:
        """Whether the account files changed since the last call; if so, forget every state.

        One ``stat`` per file (blocking, local files). Without watched
        files (none given to the constructor) always False.
        """
        if self._files is None:
            return False
        with self._files_lock:
            changed = self._files.changed()
        if changed:
            with self._lock:
                self._invalidate()
        return changed

    def _invalidate(self) -> None:
        self._states.invalidate()
        self._primed = {}
        self._generation += 1


def passwd_stamp(user: User) -> Stamp | None:
    return stamp_of(user, "passwd")

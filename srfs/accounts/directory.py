"""Who may use SIP, and with which credentials: one blocking call per request.

:meth:`Directory.account` answers, for a user name taken from a digest
``username``: does the UNIX user exist (NSS), are they in the SIP group,
does PAM's account check pass, and what HA1s does ``~/.sr/passwd`` hold
for the realm. Every part may block (NSS on LDAP, PAM ~2 ms, home I/O), so
the daemon calls it from a worker thread. PAM answers are cached briefly
per user; ``passwd`` is re-read only when it changed (one ``fstatat``), so
a new password set with ``sippasswd`` counts from the next request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from srfs.accounts import passwd, users
from srfs.accounts.users import PAM_SUCCESS, AccountCache
from srfs.files.home import FileCache, HomeError, Stamp, stamp_of
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


class Directory:
    """The UNIX user database seen through the SIP group, PAM and ~/.sr/passwd."""

    def __init__(
        self,
        realm: str,
        group: str,
        pam_service: str | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        pam_ttl: float = 60.0,
    ) -> None:
        self.realm = realm
        self.group = group
        self.pam_service = pam_service
        self._clock = clock
        self._pam_cache = AccountCache(ttl=pam_ttl)
        self._pam_lock = threading.Lock()
        self._passwd = FileCache("passwd", passwd.parse)
        self._unreadable = Recurring()
        self._first_pam = threading.Lock()
        self._pam_warmed = False

    def account(self, name: str, rhost: str | None = None) -> Account | None:
        """The account called ``name``, or None if there is no such UNIX user.

        Raises :class:`~srfs.accounts.users.DirectoryUnavailable` when NSS fails: the
        caller answers that as a server error, never as an unknown user or
        a refused account.
        """
        user = users.lookup(name)
        if user is None:
            return None
        if not users.is_sip_member(user, self.group):
            return Account(user, False, f"not a member of group {self.group}")
        if self.pam_service is not None:
            rc, message = self._pam(user, rhost)
            if rc != PAM_SUCCESS:
                return Account(user, False, f"PAM account check failed: {message}")
        # The stamp is taken before the read: a change after it shows as a
        # different stamp next time, never as the old content kept.
        stamp = passwd_stamp(user)
        try:
            pw = self._passwd.get(user)
        except HomeError as exc:
            # Met at every authentication of the user: said once, until it changes.
            if self._unreadable.report(user.name, exc.reason):
                log.warning("ignoring passwd of %s: %s", user.name, exc.reason)
            return Account(user, True, exc.reason, passwd_stamp=stamp)
        self._unreadable.clear(user.name)
        if pw is None:
            return Account(user, True, "no ~/.sr/passwd", passwd_stamp=stamp)
        ha1 = {}
        for algorithm in ALGORITHMS:
            value = pw.lookup(user.name, self.realm, algorithm)
            if value:
                ha1[algorithm] = value
        reason = "" if ha1 else f"no password for realm {self.realm}"
        return Account(user, True, reason, ha1, passwd_stamp=stamp)

    def _pam(self, user: User, rhost: str | None) -> tuple[int, str]:
        assert self.pam_service is not None
        now = self._clock()
        with self._pam_lock:
            cached = self._pam_cache.get(user.name, now)
        if cached is not None:
            return cached
        # The first PAM call in a process loads the modules; running it alone
        # avoids spurious refusals seen when several threads race to do so.
        if not self._pam_warmed:
            with self._first_pam:
                result = users.account_check(user, self.pam_service, rhost)
                self._pam_warmed = True
        else:
            result = users.account_check(user, self.pam_service, rhost)
        with self._pam_lock:
            self._pam_cache.put(user.name, now, result)
        return result

    @staticmethod
    def unchanged(account: Account) -> bool:
        """Whether ``~/.sr/passwd`` is still the file ``account`` was read from.

        One ``lstat`` by path, as the user (:func:`srfs.files.home.stamp_of`),
        cheap enough for every request: it only decides whether to read
        again, and reading again goes through the safe path in
        :mod:`srfs.files.home` (no link is ever followed there).
        """
        return passwd_stamp(account.user) == account.passwd_stamp

    def forget(self) -> None:
        """Drop cached PAM answers and passwd files (SIGHUP)."""
        with self._pam_lock:
            self._pam_cache.invalidate()
        self._passwd.forget()

    def members(self) -> list[User]:
        return users.members(self.group)


def passwd_stamp(user: User) -> Stamp | None:
    return stamp_of(user, "passwd")

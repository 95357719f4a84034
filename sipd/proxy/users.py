"""Who a local user is, and their call settings: the blocking part of routing a call.

A local user is one whose account may use SIP now: the same account state
(:meth:`srfs.accounts.directory.Directory.state`: the SIP group, a locked
or expired account, PAM) that decides their registrations, so a suspended
customer's numbers get no calls either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from srfs.accounts import users
from srfs.accounts.state import AccountState
from srfs.files.home import FileCache, HomeError
from srfs.files.userconfig import EMPTY, UserConfig
from srfs.files.userconfig import parse as parse_userconfig
from srfs.logtext import Recurring
from srfs.user import User, valid_name

log = logging.getLogger("sipd.proxy")


class UserLookup(Protocol):
    """Blocking: does a local user exist (SIP group member), and their settings."""

    def find(self, name: str) -> tuple[bool, UserConfig]:
        """Raises :class:`~srfs.accounts.users.DirectoryUnavailable` when NSS fails."""
        ...


class HomeUsers:
    """:class:`UserLookup` on NSS, the account state and ``~/.sr/config``.

    Without ``state`` (tests), SIP group membership alone decides.
    """

    def __init__(self, group: str,
                 state: Callable[[User], AccountState] | None = None) -> None:
        self.group = group
        self.state = state
        self._configs: FileCache[UserConfig] = FileCache("config", parse_userconfig)
        self._unreadable = Recurring()

    def find(self, name: str) -> tuple[bool, UserConfig]:
        if not valid_name(name):
            return False, EMPTY
        user = users.lookup(name)
        if user is None or not self._allowed(user):
            return False, EMPTY
        try:
            config = self._configs.get(user)
        except HomeError as exc:
            # Met on every call to the user: said once, until it changes.
            if self._unreadable.report(name, exc.reason):
                log.warning("ignoring config of %s: %s", name, exc.reason)
            return True, EMPTY
        self._unreadable.clear(name)
        return True, config or EMPTY

    def _allowed(self, user: User) -> bool:
        if self.state is None:
            return users.is_sip_member(user, self.group)
        return self.state(user).allowed

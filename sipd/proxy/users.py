"""Who a local user is, and their call settings: the blocking part of routing a call.

A local user is one whose account may use SIP now: the same account state
(:meth:`srfs.accounts.directory.Directory.state`: the SIP group, a locked
or expired account, PAM) that decides their registrations, so a suspended
customer's numbers get no calls either.

While the user database fails, a user found allowed before is still
found (with their settings, read from their home as usual): the last
good answer is kept per user until the directory answers otherwise, as
the authenticator keeps its own (see :mod:`sipd.auth.authenticator`).

A call needs no worker thread when its users were found lately:
:meth:`HomeUsers.find_cached` answers on the event loop from what
:meth:`HomeUsers.find` found (kept ``account_cache_ttl`` seconds, refusals
10, forgotten with every account answer when the account files change, on
SIGHUP and when the user joins or leaves the SIP group) and from
``~/.sr/config`` as last read, if its stamp says it has not changed since
(one ``lstat``), so a user's change of their settings counts for the next
call as before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from srfs.accounts import users
from srfs.accounts.state import AccountState
from srfs.files.home import FileCache, HomeError, SrDir
from srfs.files.homewatch import HomeWatch
from srfs.files.userconfig import EMPTY, UserConfig
from srfs.files.userconfig import parse as parse_userconfig
from srfs.logtext import Recurring
from srfs.user import User, valid_name

log = logging.getLogger("sipd.proxy")

#: Users whose last good answer is kept for outages (the oldest go first).
MAX_REMEMBERED = 20_000


class UserLookup(Protocol):
    """Blocking: does a local user exist (SIP group member), and their settings."""

    def find(self, name: str) -> tuple[bool, UserConfig]:
        """Raises :class:`~srfs.accounts.users.DirectoryUnavailable` when NSS fails."""
        ...

    def find_cached(self, name: str) -> tuple[bool, UserConfig] | None:
        """:meth:`find`'s answer when it is known without blocking, else None."""
        ...

    def forget(self, name: str | None = None) -> None:
        """Answers kept for ``name`` (or everyone) go."""
        ...


class HomeUsers:
    """:class:`UserLookup` on NSS, the account state and ``~/.sr/config``.

    Without ``state`` (tests), SIP group membership alone decides.
    """

    def __init__(self, group: str,
                 state: Callable[[User], AccountState] | None = None, *,
                 ttl: float = 600.0, negative_ttl: float = 10.0,
                 clock: Callable[[], float] = time.monotonic,
                 watch: HomeWatch | None = None) -> None:
        self.group = group
        self.state = state
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self._clock = clock
        #: What find() found per name: (until, the user if allowed, else None).
        self._found: OrderedDict[str, tuple[float, User | None]] = OrderedDict()
        #: Counts forget(): a find() that began before one keeps nothing.
        self._generation = 0
        self._configs: FileCache[UserConfig] = FileCache("config", parse_userconfig, watch=watch)
        self._unreadable = Recurring()
        #: Users last found allowed, for the directory's outages only.
        self._good: OrderedDict[str, User] = OrderedDict()
        self._good_lock = threading.Lock()

    def find(self, name: str) -> tuple[bool, UserConfig]:
        if not valid_name(name):
            return False, EMPTY
        generation = self._generation
        try:
            user = users.lookup(name)
            if user is None:
                # A directory that cannot look says "not found" too (nslcd).
                users.confirm_absent(name, self.group)
            allowed = user is not None and self._allowed(user)
        except users.DirectoryUnavailable:
            with self._good_lock:
                user = self._good.get(name)
            if user is None:
                raise
            allowed = True
        else:
            self._remember(name, user if allowed else None)
            self._note(name, user if allowed else None, generation)
        if user is None or not allowed:
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

    @property
    def generation(self) -> int:
        """Taken before a look-up made elsewhere, for :meth:`learn`."""
        return self._generation

    def learn(self, user: User, generation: int) -> None:
        """Blocking: ``user`` was found allowed by the same account state
        elsewhere (a caller's authentication): kept as :meth:`find` keeps
        it, with their settings read, so routing their call needs no trip
        of its own. ``generation`` is :attr:`generation` from before that
        look-up began: one that a :meth:`forget` overtook keeps nothing.
        """
        self._learned(user, generation)
        try:
            self._configs.get(user)
        except HomeError:
            pass  # find() reads it again, and says why once

    def learn_in(self, user: User, generation: int, sr: SrDir | None) -> None:
        """:meth:`learn`, reading through ``user``'s ``~/.sr`` as that look-up
        opened it (:func:`~srfs.files.home.open_watched`; None: there is
        none) rather than opening it again."""
        self._learned(user, generation)
        try:
            self._configs.get_in(user, sr)
        except HomeError:
            pass  # as in learn()

    def _learned(self, user: User, generation: int) -> None:
        self._remember(user.name, user)
        self._note(user.name, user, generation)

    def find_cached(self, name: str) -> tuple[bool, UserConfig] | None:
        if not valid_name(name):
            return False, EMPTY
        with self._good_lock:
            entry = self._found.get(name)
        if entry is None or self._clock() >= entry[0]:
            return None
        user = entry[1]
        if user is None:
            return False, EMPTY
        fresh, config = self._configs.peek(user)
        if not fresh:
            return None
        return True, config or EMPTY

    def forget(self, name: str | None = None) -> None:
        with self._good_lock:
            self._generation += 1
            if name is None:
                self._found.clear()
            else:
                self._found.pop(name, None)

    def _note(self, name: str, user: User | None, generation: int) -> None:
        ttl = self.ttl if user is not None else min(self.ttl, self.negative_ttl)
        with self._good_lock:
            self._found.pop(name, None)
            if ttl <= 0 or generation != self._generation:
                return
            self._found[name] = (self._clock() + ttl, user)
            while len(self._found) > MAX_REMEMBERED:
                self._found.popitem(last=False)

    def _remember(self, name: str, user: User | None) -> None:
        with self._good_lock:
            if user is None:
                self._good.pop(name, None)
                return
            self._good[name] = user
            self._good.move_to_end(name)
            while len(self._good) > MAX_REMEMBERED:
                self._good.popitem(last=False)

    def _allowed(self, user: User) -> bool:
        if self.state is None:
            return users.is_sip_member(user, self.group, required=True)
        return self.state(user).allowed

"""The SIP group's members, re-read often at a cost a directory server bears.

:func:`srfs.accounts.users.members` finds every member at once: the
group entry, one look-up per listed name, and an enumeration of every
account for those whose *primary* group is the SIP group. On LDAP that
enumeration lists the whole directory; done every few seconds it is most
of the load a daemon puts on the server, idle or not.

:class:`Membership` splits the two. Each :meth:`~Membership.refresh`
reads the group entry and looks up only the names newly listed in it
(names no longer listed go at once). The full pass, with the enumeration
(which also gives the listed members' entries, so they need no look-up
of their own when the directory client enumerates), runs every
``full_interval`` seconds,
or at the next refresh when the watched files (``/etc/passwd`` and
``/etc/group``, nss_wrapper's under it) changed, which costs one ``stat``
each: with files-backed NSS a change counts at once, with a directory a
new primary-group member shows within ``full_interval``.

A failing user database is never a removal: a failed look-up raises
:class:`~srfs.accounts.nss.DirectoryUnavailable` and the caller keeps the
members it had. So does a group that is suddenly "not found" after it was
found: sipd does not start without its group, and directory clients
(nslcd among them) answer "not found" when the server times out.
Blocking throughout; one caller at a time.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Iterable

from srfs.accounts import nss, users
from srfs.accounts.nss import DirectoryUnavailable
from srfs.accounts.state import SystemFiles, system_files
from srfs.user import User

__all__ = ["FULL_INTERVAL", "Membership", "group_membership"]

#: Seconds between full passes (the enumeration of every account).
FULL_INTERVAL = 300.0


class Membership:
    def __init__(self, group: str, *, full_interval: float = FULL_INTERVAL,
                 files: Iterable[str] = ()) -> None:
        self.group = group
        self.full_interval = full_interval
        self._files = SystemFiles(files)
        #: Supplementary members (listed in the group entry) by name.
        self._listed: dict[str, User] = {}
        #: Primary members as the last full pass found them.
        self._primary: dict[str, User] = {}
        self._next_full = -math.inf
        self._found_group = False
        self.full_passes = 0

    def refresh(self, now: float) -> list[User]:
        """Every member at monotonic ``now``, sorted by name.

        Raises :class:`DirectoryUnavailable` when a look-up fails; then
        nothing of what is kept changed.
        """
        files_changed = self._files.changed() if self._files.paths else False
        group = users.group_entry(self.group)
        if group is None:
            if self._found_group:
                raise DirectoryUnavailable(errno.ENOENT, f"getgrnam_r: group {self.group} "
                                                         "not found, though it was before")
            return []
        full = files_changed or now >= self._next_full
        # A full pass enumerates first: the listed members found there need
        # no look-up of their own (one search for all, not one per member).
        # A directory client that does not enumerate (sssd's default) lists
        # nobody, and each listed member is looked up as before.
        everyone = {pw.name: pw for pw in nss.all_passwd()} if full else {}
        listed: dict[str, User] = {}
        for name in group.members:
            entry = everyone.get(name)
            known = users.user_of(entry) if entry is not None else (
                None if full else self._listed.get(name))
            user = known or users.lookup(name)
            if user is not None:
                listed[user.name] = user
        primary = self._primary
        if full:
            primary = {pw.name: users.user_of(pw) for pw in everyone.values()
                       if pw.gid == group.gid}
        # Everything looked up: only now is anything replaced.
        self._found_group = True
        self._listed = listed
        if full:
            self._primary = primary
            self._next_full = now + self.full_interval
            self.full_passes += 1
        found = {**primary, **listed}
        return [found[name] for name in sorted(found)]

    def force_full(self) -> None:
        """The next refresh is a full pass (SIGHUP)."""
        self._next_full = -math.inf


def group_membership(group: str, full_interval: float = FULL_INTERVAL) -> Membership:
    """The members of ``group``, with a full pass whenever the passwd or group file changes."""
    return Membership(group, full_interval=full_interval, files=system_files()[:2])

"""UNIX users as SIP users: NSS lookups and the SIP group.

Everything goes through NSS (``getpwnam_r``, ``getgrnam_r``, ``getgrouplist``)
so users from LDAP or sssd work exactly like those in ``/etc/passwd``. Every
function here may block (an NSS module can talk to a directory server over
the network): the daemon calls them through ``trio.to_thread.run_sync``.

A lookup answers None (or False, or leaves a user out) only when NSS said
there is no such entry. When the user database fails (out of descriptors,
an unreachable directory server) they raise :class:`DirectoryUnavailable`
instead: a valid user must never look unknown, since an unknown user's
registration counts as a failed login. See :mod:`srfs.nss`.

The PAM account check is :mod:`srfs.accounts.pamcheck`: ``sippasswd``
needs only what is here, and runs without python-pam.
"""

from __future__ import annotations

import errno
import os

from srfs.accounts import nss
from srfs.accounts.nss import DirectoryUnavailable
from srfs.user import User, valid_name

__all__ = [
    "DirectoryUnavailable",
    "confirm_absent",
    "group_entry",
    "group_exists",
    "is_sip_member",
    "lookup",
    "lookup_uid",
    "members",
    "user_of",
]


def user_of(pw: nss.PasswdEntry) -> User:
    return User(name=pw.name, uid=pw.uid, gid=pw.gid, home=pw.home)


_user = user_of


def lookup(name: str) -> User | None:
    """The user called ``name``, or None if NSS knows no such user.

    Raises :class:`DirectoryUnavailable` when the user database fails.
    """
    if not valid_name(name):
        return None
    pw = nss.getpwnam(name)
    return None if pw is None else _user(pw)


#: uid_t is 32 bits and (uid_t)-1 means "no uid" to the kernel.
_MAX_UID = 2**32 - 2


def lookup_uid(uid: int) -> User | None:
    """The user with this uid, or None (a uid without a passwd entry).

    Raises :class:`DirectoryUnavailable` when the user database fails.
    """
    if not 0 <= uid <= _MAX_UID:
        return None
    pw = nss.getpwuid(uid)
    return None if pw is None else _user(pw)


def group_entry(group_name: str) -> nss.GroupEntry | None:
    """The group with its listed members; None if NSS has no such group.

    Raises :class:`DirectoryUnavailable` when the group database fails.
    """
    if not valid_name(group_name):
        return None
    return nss.getgrnam(group_name)


_group = group_entry


def group_exists(group_name: str) -> bool:
    """Whether NSS knows the group (sipd refuses to start when the SIP group is missing).

    Raises :class:`DirectoryUnavailable` when the group database fails.
    """
    return _group(group_name) is not None


def confirm_absent(name: str, group_name: str) -> None:
    """Believe NSS's "no such user ``name``" only while it still finds the SIP group.

    Directory clients answer "not found" when their server is out of
    reach: nslcd does so when slapd times out or refuses, and when nslcd
    itself is down the NSS module says the same. sipd does not start
    without its SIP group, so a group that is "not found" too means the
    answer came from a directory that could not look: raises
    :class:`DirectoryUnavailable`. One more ``getgrnam`` per unknown name,
    which the callers' negative caches bound. A SIP group kept in local
    files while the users come from a directory cannot tell: there an
    outage still reads as "no such user".
    """
    if _group(group_name) is None:
        raise DirectoryUnavailable(errno.ENOENT, f"getpwnam_r: user {name} not found, nor "
                                                 f"group {group_name}")


def is_sip_member(user: User, group_name: str, *, required: bool = False) -> bool:
    """Whether ``user`` belongs to ``group_name`` as primary or supplementary group.

    The group's own member list answers most users; ``getgrouplist`` then
    asks NSS the way login does, for memberships only a directory server
    knows (nested groups in LDAP or sssd). Raises
    :class:`DirectoryUnavailable` when the group cannot be read. glibc's
    getgrouplist reports no NSS errors, so a directory that fails between
    the group lookup and that call can still hide such a membership.

    With ``required`` (the daemon's SIP group, without which it does not
    start) a group that is "not found" raises :class:`DirectoryUnavailable`
    too: see :func:`confirm_absent`.
    """
    group = _group(group_name)
    if group is None:
        if required:
            raise DirectoryUnavailable(errno.ENOENT, f"getgrnam_r: group {group_name} not found")
        return False
    if user.gid == group.gid or user.name in group.members:
        return True
    try:
        return group.gid in os.getgrouplist(user.name, user.gid)
    except OSError as exc:
        raise DirectoryUnavailable(exc.errno or errno.EIO, "getgrouplist") from None


def members(group_name: str) -> list[User]:
    """Every user of the group, supplementary and primary members, sorted by name.

    Names listed in the group that NSS cannot resolve to a user are left
    out. Primary members are found by enumerating the passwd database (every
    account: the daemon's periodic refresh does that seldom, see
    :mod:`srfs.accounts.membership`); sssd
    enumerates only with ``enumerate = true``, so such sites should list
    SIP users as supplementary members. Raises :class:`DirectoryUnavailable`
    when a lookup or the enumeration fails: a partial list is never returned.
    """
    group = _group(group_name)
    if group is None:
        return []
    found: dict[str, User] = {}
    for name in group.members:
        user = lookup(name)
        if user is not None:
            found[user.name] = user
    for pw in nss.all_passwd():
        if pw.gid == group.gid and pw.name not in found:
            found[pw.name] = _user(pw)
    return [found[name] for name in sorted(found)]

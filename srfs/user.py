"""A UNIX user as NSS reports it, and what a user name may be.

The one type every part of srfs speaks of users by; looking users up is
:mod:`srfs.accounts.users`' business.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["User", "valid_name"]


@dataclass(frozen=True, slots=True)
class User:
    """One UNIX user as NSS reports it.

    ``name`` is the name NSS returned, which can differ from the name asked
    for (case-insensitive LDAP or sssd domains); use it, not the request's
    spelling, as the key for anything stored per user.
    """

    name: str
    uid: int
    gid: int
    home: str


# Characters no NSS source accepts in a user name, and which would be
# dangerous if one did: "/" and NUL in paths, ":" in passwd(5) and
# ~/.sr/passwd lines, line breaks in every line-based file.
_FORBIDDEN_IN_NAME = frozenset("/:\0\n\r")
_MAX_NAME = 256


def valid_name(name: str) -> bool:
    """Whether ``name`` could be a user or group name worth asking NSS about.

    Names reach us from the network (a SIP Authorization header), so this
    guards NSS modules and file formats against absurd input; it is not a
    full policy of what a UNIX name may look like.
    """
    if not name or len(name) > _MAX_NAME or name in (".", ".."):
        return False
    if name.startswith(("-", "#")) or name != name.strip():
        return False
    return name.isprintable() and _FORBIDDEN_IN_NAME.isdisjoint(name)

"""Whether a UNIX account may use SIP now: one answer for everything a customer does.

A registration, a call with digest credentials, a call from a trusted
trunk and a call to the user's numbers all ask the same question, answered
here in one order:

1. the user is a member of the SIP group (:func:`~srfs.accounts.users.is_sip_member`);
2. the shadow entry, read through NSS (:func:`~srfs.accounts.nss.getspnam`),
   is not locked (a password field starting with ``!``, what ``usermod -L``,
   ``passwd -l`` and ``adduser --disabled-login`` leave; ``passwd -S``
   shows ``L``) unless ``locked_suspends`` is off, and the account has not
   expired (``usermod -e``; the rule pam_unix applies: expired from the
   day ``sp_expire`` on);
3. PAM's account stack passes, unless PAM is off.

A user without a shadow entry (``sssd`` or LDAP users, or a password field
of ``*`` with no entry) passes step 2: PAM, step 3, is their account check.
Step 2 repeats the expiry rule of pam_unix so that it holds with PAM off
too, and because pam_unix reads the shadow entry with ``getspnam_r``,
which nss_wrapper does not interpose: under the test wrappers only this
step sees a fake shadow file.

:class:`SystemFiles` tells when the files these answers come from changed
(``/etc/passwd``, ``/etc/group``, ``/etc/shadow`` and the PAM service
file), so cached answers can be dropped at once instead of at their expiry.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from srfs.accounts import nss, pamcheck
from srfs.files.home import Stamp

__all__ = ["AccountState", "SystemFiles", "shadow_refusal", "system_files"]

SECONDS_PER_DAY = 86_400


@dataclass(frozen=True, slots=True)
class AccountState:
    """May the account use SIP; if not, why (for the log only, never sent)."""

    allowed: bool
    reason: str = ""


ALLOWED = AccountState(True)


def shadow_refusal(name: str, wall: float, *, locked_suspends: bool = True) -> str | None:
    """Why the shadow entry of ``name`` suspends SIP at wall-clock ``wall``; None if it does not.

    Blocking (NSS). Raises :class:`~srfs.accounts.nss.DirectoryUnavailable`
    when the shadow database fails.
    """
    entry = nss.getspnam(name)
    if entry is None:
        return None
    if locked_suspends and entry.password.startswith("!"):
        return "password locked (usermod -L)"
    today = int(wall // SECONDS_PER_DAY)
    if entry.expire >= 0 and today >= entry.expire:
        return "account expired"
    return None


def system_files(pam_service: str | None = None) -> tuple[str, ...]:
    """The files account answers come from: passwd, group, shadow (nss_wrapper's under it),
    and the file of the PAM service when PAM is on."""
    wrapped = os.environ.get("LD_PRELOAD", "").find("nss_wrapper") >= 0
    out = []
    for name, var in (("passwd", "NSS_WRAPPER_PASSWD"), ("group", "NSS_WRAPPER_GROUP"),
                      ("shadow", "NSS_WRAPPER_SHADOW")):
        path = os.environ.get(var) if wrapped else None
        out.append(path or f"/etc/{name}")
    if pam_service is not None:
        out.append(pamcheck.pam_service_path(pam_service))
    return tuple(out)


class SystemFiles:
    """The stamps (device, inode, size, times) of a few files, to tell a change cheaply.

    :meth:`changed` costs one ``stat`` per file. ``usermod``, ``gpasswd``
    and ``passwd`` replace the files by rename, which changes the inode;
    an edit in place changes the size or the times. A missing or
    unreadable file has no stamp, so its appearance is a change too.
    Not thread safe: one caller at a time.
    """

    def __init__(self, paths: Iterable[str]) -> None:
        self.paths = tuple(paths)
        self._stamps = self._now()

    def _now(self) -> tuple[Stamp | None, ...]:
        out: list[Stamp | None] = []
        for path in self.paths:
            try:
                out.append(Stamp.of(os.stat(path)))
            except OSError:
                out.append(None)
        return tuple(out)

    def changed(self) -> bool:
        """Whether any file changed since the last call (or since creation)."""
        now = self._now()
        if now == self._stamps:
            return False
        self._stamps = now
        return True

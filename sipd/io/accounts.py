"""Account states kept fresh: a change of the account files or SIGHUP counts at once.

Registrations, calls with credentials, calls from trusted trunks and calls
to a user all ask the directory's cached account state
(:mod:`srfs.accounts.directory`); the authenticator keeps the accounts it
looked up too (:class:`~sipd.auth.authenticator.RecentAccounts`). Both
forget everything when ``/etc/passwd``, ``/etc/group``, ``/etc/shadow`` or
the PAM service file changed (checked every :data:`ACCOUNT_FILES_POLL`
seconds, one ``stat`` per file in a worker thread) and on SIGHUP. Changes
these files do not show (a directory server, a PAM module reading
elsewhere, an expiry day that arrives) count within ``account_cache_ttl``.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import trio

from sipd.io.reload import ReloadRequest
from srfs.accounts.state import system_files

if TYPE_CHECKING:
    from sipd.io.daemon import Daemon

__all__ = ["ACCOUNT_FILES_POLL", "forget_accounts", "forget_user", "watch_account_files"]

log = logging.getLogger("sipd")

#: How often the account files' stamps are compared, seconds.
ACCOUNT_FILES_POLL = 1.0


def forget_accounts(daemon: Daemon) -> None:
    """Every cached account state and looked-up account goes (SIGHUP, a changed file)."""
    if daemon.directory is not None:
        daemon.directory.forget()
    if daemon.auth.accounts is not None:
        daemon.auth.accounts.forget()
    daemon.proxy.user_lookup.forget()
    if daemon.membership is not None:
        # Primary-group members are listed again at the next refresh.
        daemon.membership.force_full()


def forget_user(daemon: Daemon, name: str) -> None:
    """``name``'s cached account state goes (they joined the SIP group)."""
    if daemon.directory is not None:
        daemon.directory.forget_user(name)
    if daemon.auth.accounts is not None:
        daemon.auth.accounts.forget_user(name)
    daemon.proxy.user_lookup.forget(name)


def _warn_unreadable_shadow(daemon: Daemon) -> None:
    shadow = system_files()[2]
    if daemon.settings.locked_suspends and os.path.exists(shadow) and not os.access(
            shadow, os.R_OK):
        log.warning("cannot read %s: locked and expired accounts are not seen "
                    "(sipd reads shadow entries as root)", shadow)


async def watch_account_files(daemon: Daemon, reload: ReloadRequest) -> None:
    """Drop cached account states when the account files change, or at once on SIGHUP."""
    directory = daemon.directory
    if directory is None:
        return
    _warn_unreadable_shadow(daemon)
    while True:
        if await reload.wait(ACCOUNT_FILES_POLL):
            forget_accounts(daemon)
            log.info("account states forgotten: each is checked again at its next use")
            continue
        if await trio.to_thread.run_sync(directory.files_changed):
            # The directory forgot its own; what the authenticator and the
            # proxy kept goes too.
            if daemon.auth.accounts is not None:
                daemon.auth.accounts.forget()
            daemon.proxy.user_lookup.forget()
            log.info("account files changed: each account state is checked again")

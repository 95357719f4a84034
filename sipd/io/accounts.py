"""Account states kept fresh: a change of the account files or SIGHUP counts at once.

Registrations, calls with credentials, calls from trusted trunks and calls
to a user all ask the directory's cached account state
(:mod:`srfs.accounts.directory`); the authenticator keeps the accounts it
looked up too (:class:`~sipd.auth.authenticator.RecentAccounts`). Both
forget everything when ``/etc/passwd``, ``/etc/group``, ``/etc/shadow`` or
the PAM service file changed (checked every :data:`ACCOUNT_FILES_POLL`
seconds, one ``stat`` per file in a worker thread), on SIGHUP and when
root writes ``flush accounts`` to ``/run/sr/control`` (:func:`control`). Changes
these files do not show (a directory server, a PAM module reading
elsewhere, an expiry day that arrives) count within ``account_cache_ttl``.

While the user database is down (:class:`~sipd.auth.authenticator.DirectoryHealth`),
:func:`probe_directory` asks it for the SIP group every few seconds, one
call at a time in the directory's worker threads, so the outage's end is
noticed, logged and the 503s stop without waiting for a request.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import trio

from sipd.io.reload import ReloadRequest
from srfs.accounts import users
from srfs.accounts.state import system_files
from srfs.files.homewatch import HomeWatch

if TYPE_CHECKING:
    from sipd.io.daemon import Daemon

__all__ = ["ACCOUNT_FILES_POLL", "CACHED_HOME_FILES", "control", "drain_home_watch",
           "forget_accounts", "forget_user", "probe_directory", "watch_account_files"]

log = logging.getLogger("sipd")

#: How often the account files' stamps are compared, seconds.
ACCOUNT_FILES_POLL = 1.0

#: The files of ``~/.sr`` kept parsed in memory, whose changes the home watch hears.
CACHED_HOME_FILES = ("passwd", "config")


#: Seconds the home watch's reader rests after reading its queue.
HOME_WATCH_REST = 0.5


async def drain_home_watch(watch: HomeWatch) -> None:
    """Read the home watch's events when there are some, at most twice a second.

    Every check reads the queue first (one per request that uses a cached
    file), so this only keeps it from overflowing while nothing checks:
    sipd's own writes in ``~/.sr`` (``usrloc``, ``acc``) are events too.
    A wake-up per write would cost the event loop more than the events
    (the kernel holds 16,384 by default).
    """
    while True:
        await trio.lowlevel.wait_readable(watch.fileno())
        watch.drain()
        await trio.sleep(HOME_WATCH_REST)


def forget_accounts(daemon: Daemon) -> None:
    """Every cached account state and looked-up account goes (SIGHUP, a changed file)."""
    if daemon.directory is not None:
        daemon.directory.forget()
    if daemon.auth.accounts is not None:
        daemon.auth.accounts.forget()
    daemon.proxy.user_lookup.forget()
    if daemon.membership is not None:
        # Primary-group members are listed again at the next refresh, now.
        daemon.membership.force_full()
    if daemon.statefs is not None:
        daemon.statefs.wake()


def control(daemon: Daemon, command: str) -> None:
    """A command root wrote to ``/run/sr/control`` (:data:`srfs.fs.tree.CONTROL_COMMANDS`)."""
    if command == "flush accounts":
        forget_accounts(daemon)
        log.info("account states forgotten: each is checked again at its next use")


def forget_user(daemon: Daemon, name: str) -> None:
    """``name``'s cached account state goes (they joined or left the SIP group)."""
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
            if daemon.statefs is not None:
                # The group too: a member added with usermod counts within a second.
                daemon.statefs.wake()
            log.info("account files changed: each account state is checked again")


async def probe_directory(daemon: Daemon, limiter: trio.CapacityLimiter) -> None:
    """While the user database is down, look the SIP group up every
    ``member_refresh_interval`` seconds.

    The group is what the daemon cannot start without, so finding it is the
    directory answering again (:meth:`DirectoryHealth.answered` logs the
    end). At most one probe at a time, and none while a request's look-up
    probes already; a probe that hangs is abandoned at shutdown.
    """
    health = daemon.auth.health
    group = daemon.settings.group
    while True:
        await trio.sleep(daemon.settings.member_refresh_interval)
        if not health.down or health.probing:
            continue
        health.probing = True
        try:
            found = await trio.to_thread.run_sync(users.group_entry, group, limiter=limiter,
                                                  abandon_on_cancel=True)
        except OSError as exc:
            health.failed(f"group {group}", exc, time.time())
        else:
            if found is not None:
                health.answered(time.time())
        finally:
            health.probing = False

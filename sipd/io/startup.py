"""The start-up checks: what must hold before sipd serves, in one place.

The daemon runs :func:`check_host` before it binds a socket, and
``sipd --check-config`` runs :func:`check_all`; a problem is the same
:class:`StartupError`, with the same one line, whichever found it. All of
it blocks (NSS, PAM, files, a probe of the mountpoint) and none of it
changes anything: nothing is created, mounted or bound for good.

Once the daemon has read the SIP group, :func:`report_missing_passwords`
names the users who cannot log in for want of a password for the realm:
a warning, not a reason to refuse the start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager

from sipd.config import Settings
from sipd.io.metrics_http import bind_metrics
from sipd.io.tls import TlsContexts, TlsError
from sipd.io.transport import StartupError, bind_sockets
from srfs.accounts import pamcheck, passwd, users
from srfs.files import home
from srfs.files.adminfile import AdminFileError, read_admin_file
from srfs.logtext import log_problems, quote
from srfs.user import User

log = logging.getLogger("sipd")

#: Reads a user's ``~/.sr/passwd`` into its entries by (user, realm); raises HomeError.
PasswdReader = Callable[[User], Mapping[tuple[str, str], passwd.Entry] | None]

__all__ = [
    "check_accounts",
    "check_admin_files",
    "check_all",
    "check_host",
    "check_mount",
    "check_tls",
    "mount_failed",
    "passwd_entries",
    "password_problem",
    "report_missing_passwords",
    "user_database_needed",
]


@contextmanager
def user_database_needed() -> Iterator[None]:
    """Steps that read NSS: a failing user database stops the start, in one line."""
    try:
        yield
    except users.DirectoryUnavailable as exc:
        raise StartupError(f"cannot start: {exc}") from None


def check_accounts(settings: Settings) -> None:
    """Refuse to start where users would be let in by mistake."""
    if not users.group_exists(settings.group):
        raise StartupError(
            f"group {settings.group!r} does not exist: create it (groupadd {settings.group}) "
            "or name another with --group"
        )
    if settings.pam:
        try:
            pamcheck.load_libpam()
        except pamcheck.PamUnavailable as exc:
            raise StartupError(f"PAM is unavailable: {exc}; run with --no-pam to skip it") from None
        if not pamcheck.pam_service_exists(settings.pam_service):
            # libpam would fall back to /etc/pam.d/other, which lets in
            # users outside the SIP group.
            raise StartupError(
                f"PAM service file {pamcheck.pam_service_path(settings.pam_service)} is missing: "
                "install pam/sipd there (make setup does) or run with --no-pam"
            )


def check_admin_files(settings: Settings) -> None:
    """The alias map and the trusted trunks must be trusted and readable, when they exist.

    While serving, a file that fails these checks leaves the map in force
    as it was; at start nothing is in force, and starting without the
    trunks would let anyone register a contact at a PBX's address. A
    missing file is an empty map.
    """
    for what, path in (("the alias map", settings.aliases), ("the trusted trunks", settings.trunks)):
        try:
            read_admin_file(path)
        except AdminFileError as exc:
            raise StartupError(f"cannot use {what}: {exc.reason}") from None


def mount_failed(settings: Settings, reason: object) -> StartupError:
    """The error for a state filesystem that cannot be mounted, before or at the mount."""
    return StartupError(f"cannot mount the state filesystem at {settings.mount}: {reason}")


def check_mount(settings: Settings, *, beside_daemon: bool = False) -> None:
    """With mounting on, the mountpoint must be usable and /dev/fuse openable."""
    if not settings.mount_enabled:
        return
    # Imported here: pyfuse3 is needed only when mounting.
    from srfs.fs.fuse import MountError, check_mountpoint

    try:
        check_mountpoint(settings.mount, running_srfs_ok=beside_daemon)
    except MountError as exc:
        raise mount_failed(settings, exc) from None


def check_tls(settings: Settings) -> TlsContexts:
    """The TLS certificate, key and CA files load and fit together (blocking).

    Returns the contexts: the daemon serves with the ones it checked.
    """
    try:
        return TlsContexts(settings)
    except TlsError as exc:
        raise StartupError(str(exc)) from None


def check_host(settings: Settings, *, beside_daemon: bool = False) -> None:
    """Everything but the sockets, in the order the daemon meets them.

    ``beside_daemon``: the sipd these settings are meant for may be running
    (a check before a restart), so its working mount is not a problem.
    """
    with user_database_needed():
        check_accounts(settings)
    check_admin_files(settings)
    check_mount(settings, beside_daemon=beside_daemon)
    check_tls(settings)


def check_all(settings: Settings) -> None:
    """``--check-config``: :func:`check_host`, then every listen address.

    It may run beside the sipd it is meant to replace, so what that sipd
    holds is left out: each address, ``metrics_listen``'s too, is bound on
    a port the kernel picks and closed again (an address the host does not
    have fails as it would at start, a port in use does not), and a
    working srfs mount passes.
    """
    check_host(settings, beside_daemon=True)
    for _, sock in bind_sockets(settings.listen, settings.listen_is_default, any_port=True):
        sock.close()
    if settings.metrics_listen is not None:
        bind_metrics(settings.metrics_listen, any_port=True).close()


#: Users named one by one at start for a missing password; the rest are counted.
PASSWORDLESS_SHOWN = 5
#: Other realms named for one user's ``~/.sr/passwd``.
REALMS_SHOWN = 3


def passwd_entries(user: User) -> Mapping[tuple[str, str], passwd.Entry] | None:
    """``~/.sr/passwd``'s entries by (user, realm); None without the file."""
    data = home.read_file(user, "passwd")
    return None if data is None else passwd.index(data)


def password_problem(user: User, realm: str,
                     read: PasswdReader = passwd_entries) -> str | None:
    """Why ``user`` cannot authenticate in ``realm`` from ``~/.sr/passwd``, or None.

    Names the other realms the file holds an entry for, never a hash.
    ``read`` reads the file (the daemon's reads keep it for the user's
    first authentication).
    """
    try:
        entries = read(user)
    except home.HomeError as exc:
        return exc.reason
    if entries is None:
        return "no ~/.sr/passwd"
    if (user.name, realm) in entries:
        return None
    # The file is the user's: its realms are quoted, and only a few are named.
    others = sorted({r for (u, r) in entries if u == user.name})
    if not others:
        return "no entry for the user"
    named = ", ".join(quote(r) for r in others[:REALMS_SHOWN])
    more = len(others) - REALMS_SHOWN
    return f"entries only for realm {named}" + (f" and {more} more" if more > 0 else "")


def report_missing_passwords(members: Sequence[User], realm: str,
                             read: PasswdReader = passwd_entries) -> int:
    """Log each SIP user who holds no password for ``realm``; how many there are.

    A password set for another realm (the host renamed, ``-r`` given to
    one command and not the other) lets nobody in and shows nowhere else.
    """
    problems = []
    for user in members:
        why = password_problem(user, realm, read)
        if why is not None:
            problems.append(f"{user.name} ({why})")
    log_problems(log, f"no password for realm {realm}", problems, shown=PASSWORDLESS_SHOWN)
    return len(problems)

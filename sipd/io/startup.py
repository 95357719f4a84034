"""The start-up checks: what must hold before sipd serves, in one place.

The daemon runs :func:`check_host` before it binds a socket, and
``sipd --check-config`` runs :func:`check_all`; a problem is the same
:class:`StartupError`, with the same one line, whichever found it. All of
it blocks (NSS, PAM, files, a probe of the mountpoint) and none of it
changes anything: nothing is created, mounted or bound for good.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from srfs import users
from srfs.adminfile import AdminFileError, read_admin_file

from ..config import Settings
from .transport import StartupError, bind_sockets

__all__ = [
    "check_accounts",
    "check_admin_files",
    "check_all",
    "check_host",
    "check_mount",
    "mount_failed",
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
            users.load_libpam()
        except users.PamUnavailable as exc:
            raise StartupError(f"PAM is unavailable: {exc}; run with --no-pam to skip it") from None
        if not users.pam_service_exists(settings.pam_service):
            # libpam would fall back to /etc/pam.d/other, which lets in
            # users outside the SIP group.
            raise StartupError(
                f"PAM service file {users.pam_service_path(settings.pam_service)} is missing: "
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
    from srfs.fuse import MountError, check_mountpoint

    try:
        check_mountpoint(settings.mount, running_srfs_ok=beside_daemon)
    except MountError as exc:
        raise mount_failed(settings, exc) from None


def check_host(settings: Settings, *, beside_daemon: bool = False) -> None:
    """Everything but the sockets, in the order the daemon meets them.

    ``beside_daemon``: the sipd these settings are meant for may be running
    (a check before a restart), so its working mount is not a problem.
    """
    with user_database_needed():
        check_accounts(settings)
    check_admin_files(settings)
    check_mount(settings, beside_daemon=beside_daemon)


def check_all(settings: Settings) -> None:
    """``--check-config``: :func:`check_host`, then every listen address.

    It may run beside the sipd it is meant to replace, so what that sipd
    holds is left out: each address is bound on a port the kernel picks
    and closed again (an address the host does not have fails as it would
    at start, a port in use does not), and a working srfs mount passes.
    """
    check_host(settings, beside_daemon=True)
    for _, sock in bind_sockets(settings.listen, settings.listen_is_default, any_port=True):
        sock.close()

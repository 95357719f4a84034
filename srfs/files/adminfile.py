"""Reading and replacing the admin's files under ``/etc/sipd`` (aliases, trunks).

These files grant numbers and trust, so only root may have written them: a
file owned by anyone else, writable by group or others, or reached through a
symlink is refused with a reason and the daemon keeps what it had. Reads are
cached by (device, inode, size, mtime, ctime), so an unchanged file costs one
``stat`` and an edit is picked up on the next look. Replacing the file (root
writing ``/run/sr/aliases``) is a temporary file renamed over the old one.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat

from srfs.errors import ReasonedError
from srfs.files.home import Stamp

__all__ = [
    "MAX_SIZE",
    "AdminFileError",
    "WatchedAdminFile",
    "read_admin_file",
    "replace_admin_file",
    "stat_admin_file",
]

#: Larger than any sane alias map of a provider (a million short lines).
MAX_SIZE = 32 << 20


class AdminFileError(ReasonedError):
    """A file under ``/etc/sipd`` that must not be used; ``reason`` says why."""


def _check(path: str, st: os.stat_result, owner: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise AdminFileError(errno.EINVAL, f"{path} is not a regular file")
    if st.st_uid != owner:
        raise AdminFileError(errno.EPERM, f"{path} is owned by uid {st.st_uid}, not by root")
    if st.st_mode & 0o022:
        raise AdminFileError(errno.EPERM, f"{path} is writable by group or others")
    if st.st_size > MAX_SIZE:
        raise AdminFileError(errno.EFBIG, f"{path} is larger than {MAX_SIZE} bytes")


def stat_admin_file(path: str) -> Stamp | None:
    """The stamp of ``path`` without following a final symlink; None if absent."""
    try:
        return Stamp.of(os.lstat(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AdminFileError(exc.errno or errno.EIO, f"{path}: {exc.strerror}") from None


def read_admin_file(path: str, *, owner: int = 0) -> tuple[bytes, Stamp] | None:
    """The content and stamp of ``path``, or None when it does not exist.

    Raises :class:`AdminFileError` when the file must not be trusted.
    ``owner`` is the uid that must own it (root; tests pass their own).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise AdminFileError(errno.ELOOP, f"{path} is a symlink") from None
        raise AdminFileError(exc.errno or errno.EIO, f"{path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        _check(path, st, owner)
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_SIZE:
                raise AdminFileError(errno.EFBIG, f"{path} is larger than {MAX_SIZE} bytes")
            chunks.append(chunk)
        return b"".join(chunks), Stamp.of(st)
    except OSError as exc:
        raise AdminFileError(exc.errno or errno.EIO, f"{path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def replace_admin_file(path: str, data: bytes, *, owner: int = 0, mode: int = 0o644) -> Stamp:
    """Atomically replace ``path`` with ``data`` (temporary file, fsync, rename).

    The directory must exist; the new file gets ``owner`` and ``mode``.
    Raises :class:`AdminFileError`.
    """
    directory, name = os.path.split(path)
    directory = directory or "."
    temp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise AdminFileError(exc.errno or errno.EIO, f"cannot write {path}: {exc.strerror}") from None
    try:
        try:
            os.fchown(fd, owner, -1)
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)
    except OSError as exc:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise AdminFileError(exc.errno or errno.EIO, f"cannot write {path}: {exc.strerror}") from None
    return Stamp.of(st)


class WatchedAdminFile:
    """One admin file, re-read when it changes.

    :meth:`poll` costs one ``lstat`` when nothing changed. A missing file
    reads as empty. A file that fails the checks is not used: the caller
    keeps what was in force, so a wrong ``chmod`` never drops every alias of
    a provider; ``problem`` holds the reason after the poll that found it.
    """

    def __init__(self, path: str, *, owner: int = 0) -> None:
        self.path = path
        self.owner = owner
        self.stamp: Stamp | None = None
        self.problem: str | None = None
        self._polled = False

    def poll(self, *, force: bool = False) -> bytes | None:
        """The new content when the file changed (or ``force``), else None.

        Blocking; the daemon calls it from a worker thread.
        """
        self.problem = None
        try:
            stamp = stat_admin_file(self.path)
        except AdminFileError as exc:
            self.problem = exc.reason
            return None
        if self._polled and stamp == self.stamp and not force:
            return None
        self._polled = True
        self.stamp = stamp
        try:
            got = read_admin_file(self.path, owner=self.owner)
        except AdminFileError as exc:
            self.problem = exc.reason
            return None
        return b"" if got is None else got[0]

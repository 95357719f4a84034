"""How much of sipd's memory editors' temporary files may take.

``sed -i``, vim and other editors save through a temporary file, which the
tree keeps in sipd's memory (see :mod:`srfs.fs.fuse`). Without a bound, every
user could make the daemon hold 16 files of 1 MiB in each of their
directories, and all users together as much as they liked. Each user (by
the uid that created the file) may hold at most ``user_files`` temporary
files and ``user_bytes`` bytes in them, and all of them together at most
``total_files`` and ``total_bytes``.

A user over their own limit gets ``EDQUOT`` ("Disk quota exceeded"): the
shell's word for a per-user limit, which the user can act on by removing
their own temporary files. The whole daemon at its limit gives ``ENOSPC``
("No space left on device"): the filesystem is full for everybody, which
is what happened. A user's own limit is checked first.

Sans-IO bookkeeping: :class:`ScratchQuota` is told of every file made and
dropped and of every change of size, before the memory is taken.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from srfs.fs.tree import TreeError

__all__ = ["DEFAULT_LIMITS", "ScratchLimits", "ScratchQuota"]


@dataclass(frozen=True, slots=True)
class ScratchLimits:
    """The most temporary files and bytes in them, per user and in all."""

    user_files: int = 16
    user_bytes: int = 4 << 20
    total_files: int = 1024
    total_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if min(self.user_files, self.user_bytes, self.total_files, self.total_bytes) < 0:
            raise ValueError("scratch limits cannot be negative")


#: 16 files and 4 MiB per user (one file may hold 1 MiB, so ``sed -i`` of
#: the largest contacts file fits several times), 1024 files and 64 MiB in all.
DEFAULT_LIMITS = ScratchLimits()


class ScratchQuota:
    """Files and bytes of temporary files per uid and in all, checked against limits.

    :meth:`add_file` and :meth:`grow` raise :class:`~srfs.fs.tree.TreeError`
    (``EDQUOT`` or ``ENOSPC``) and change nothing when the limit would be
    passed; shrinking and dropping never fail.
    """

    def __init__(self, limits: ScratchLimits = DEFAULT_LIMITS) -> None:
        self.limits = limits
        self.files = 0
        self.bytes = 0
        self._files: dict[int, int] = {}
        self._bytes: dict[int, int] = {}

    def usage(self, uid: int) -> tuple[int, int]:
        """(files, bytes) held by ``uid``."""
        return self._files.get(uid, 0), self._bytes.get(uid, 0)

    def add_file(self, uid: int) -> None:
        """Count a new, empty file of ``uid``."""
        lim = self.limits
        if self._files.get(uid, 0) + 1 > lim.user_files:
            raise TreeError(errno.EDQUOT, f"uid {uid} holds {lim.user_files} temporary "
                                          "file(s), the most one user may")
        if self.files + 1 > lim.total_files:
            raise TreeError(errno.ENOSPC, f"{lim.total_files} temporary files are held, "
                                          "the most the tree keeps")
        self._files[uid] = self._files.get(uid, 0) + 1
        self.files += 1

    def grow(self, uid: int, by: int) -> None:
        """Count ``by`` more bytes in a file of ``uid`` (a negative ``by`` shrinks)."""
        if by <= 0:
            self._take_back(uid, -by)
            return
        lim = self.limits
        if self._bytes.get(uid, 0) + by > lim.user_bytes:
            raise TreeError(errno.EDQUOT, f"uid {uid}'s temporary files would pass "
                                          f"{lim.user_bytes} bytes, the most one user may")
        if self.bytes + by > lim.total_bytes:
            raise TreeError(errno.ENOSPC, f"temporary files would pass {lim.total_bytes} "
                                          "bytes, the most the tree keeps")
        self._bytes[uid] = self._bytes.get(uid, 0) + by
        self.bytes += by

    def drop_file(self, uid: int, size: int) -> None:
        """A file of ``uid`` holding ``size`` counted bytes is gone."""
        self._take_back(uid, size)
        left = self._files.get(uid, 0) - 1
        if left > 0:
            self._files[uid] = left
        else:
            self._files.pop(uid, None)
        self.files = max(0, self.files - 1)

    def _take_back(self, uid: int, size: int) -> None:
        if size <= 0:
            return
        left = self._bytes.get(uid, 0) - size
        if left > 0:
            self._bytes[uid] = left
        else:
            self._bytes.pop(uid, None)
        self.bytes = max(0, self.bytes - size)

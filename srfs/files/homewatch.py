"""inotify on users' ``~/.sr``: a cached file known unchanged without a look at it.

:class:`~srfs.files.home.FileCache` answers from memory while its file's
:class:`~srfs.files.home.Stamp` is the same, and a stamp is an ``lstat``
as the user, six system calls with the identity switches around it: a call
set up looks at three (the caller's ``passwd``, both parties' ``config``).
A :class:`HomeWatch` holds one inotify watch on each ``~/.sr`` whose files
were read and gives each user a *generation*, renewed by every event that
may concern a cached file: a change of one of the watched names in the
directory (written, replaced, created, removed, its mode or owner
changed), or of the directory itself (its mode or owner, moved, removed).
A file read while its user's generation was *g* is as it was while the
generation is still *g*: one ``poll`` of the inotify descriptor (the queue
drained if it holds anything) instead of the ``lstat``. sipd's own writes
in ``~/.sr`` (``usrloc``, ``acc``) are events of other names and renew
nothing.

The kernel queues an event before the system call that made the change
returns, and every check drains the queue first: a change made before a
request arrived counts for that request, as with stamps.

Where inotify cannot vouch for a file the stamp decides, as before:

- a filesystem on which changes can come from elsewhere (NFS, CIFS, FUSE
  and anything not in :data:`LOCAL_FILESYSTEMS`);
- a file with more than one link, which could be written through a link
  in another directory without an event in this one (the caller checks
  the link count);
- no watch to be had (``fs.inotify.max_user_watches`` reached);
- after the kernel's queue overflowed: every user, until their file is
  found unchanged by stamp again.

A change above ``~/.sr`` (the mode of the home directory) is not an event
here; it counts when the cached account state expires
(``account_cache_ttl``), on SIGHUP and with ``flush accounts``.

Thread safe: watches are armed in worker threads (while a file is read,
as its user), checks run on the event loop's thread.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import itertools
import logging
import os
import select
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

log = logging.getLogger("srfs.homewatch")

__all__ = ["LOCAL_FILESYSTEMS", "HomeWatch", "open_home_watch"]

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_EXCL_UNLINK = 0x04000000

#: What a watch of ``~/.sr`` asks for: a change of a file in it (the write
#: closed too, which a write through a shared mapping leaves as its only
#: trace), of its names, and of the directory itself.
WATCH_MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
              | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK)
#: The directory is gone from where it was read: its watch vouches for nothing more.
_GONE = IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT | IN_IGNORED

#: ``statfs.f_type`` of the filesystems whose every change goes through
#: this kernel, so inotify hears it (``<linux/magic.h>``): ext2/3/4, XFS,
#: Btrfs, tmpfs, overlayfs, F2FS, ZFS, ReiserFS, JFS, bcachefs, NILFS2, ramfs.
LOCAL_FILESYSTEMS = frozenset({
    0xEF53, 0x58465342, 0x9123683E, 0x01021994, 0x794C7630, 0xF2F52010, 0x2FC12FC1,
    0x52654973, 0x3153464A, 0xCA451A4E, 0x3434, 0x858458F6,
})

_EVENT = struct.Struct("iIII")
_READ_SIZE = 64 * 1024
#: The longest event: its header and a name of NAME_MAX bytes with its NUL.
_MAX_EVENT = _EVENT.size + 256


@dataclass(slots=True)
class _Watched:
    """One user's watched ``~/.sr``."""

    wd: int
    #: The directory's device and inode.
    ident: tuple[int, int]
    generation: int


class HomeWatch:
    """One inotify descriptor and a generation per watched user (see the module text)."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(os.fsencode(n) for n in names)
        self._libc = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        self._libc.fstatfs.argtypes = [ctypes.c_int, ctypes.c_void_p]
        fd: int = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._fd = fd
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._lock = threading.Lock()
        # Every renewal takes a number never given before: a generation
        # taken from a watch that has since gone can never match again.
        self._numbers = itertools.count(1)
        #: Each watched user's ``~/.sr``, and the users of each watch (one
        #: directory may be the home of two names).
        self._watched: dict[str, _Watched] = {}
        self._users_of: dict[int, set[str]] = {}
        #: Overflows of the kernel's queue and watches refused, since start.
        self.overflows = 0
        self.refused = 0
        self._refusal_logged = False

    def fileno(self) -> int:
        return self._fd

    @property
    def watches(self) -> int:
        with self._lock:
            return len(self._users_of)

    # ------------------------------------------------------------ arming

    def arm(self, name: str, sr_fd: int, ident: tuple[int, int]) -> int | None:
        """Watch ``name``'s ``~/.sr``, open as ``sr_fd``; their generation, or None.

        ``ident`` is the directory's device and inode. Call as the user
        (the thread's filesystem identity theirs), before the files are
        looked at, and then check that the directory is still where the
        path leads (:meth:`srfs.files.home.SrDir.watch`): a change after
        that is an event. The watch is set on the directory the descriptor
        holds (by ``/proc/self/fd``), not on a path the user could swap
        meanwhile. None when inotify cannot vouch for it (see the module
        text).
        """
        if not self._local(sr_fd):
            return None
        path = f"/proc/self/fd/{sr_fd}".encode()
        with self._lock:
            self._drain()
            wd = self._libc.inotify_add_watch(self._fd, path, WATCH_MASK)
            if wd < 0:
                err = ctypes.get_errno()
            else:
                watched = self._watched.get(name)
                if watched is not None and watched.wd == wd:
                    watched.ident = ident
                else:
                    if watched is not None:
                        self._unwatch(name, watched.wd)
                    watched = self._watched[name] = _Watched(wd, ident, next(self._numbers))
                    self._users_of.setdefault(wd, set()).add(name)
                return watched.generation
        self._refused(err)
        return None

    def watching(self, name: str, ident: tuple[int, int]) -> int | None:
        """``name``'s generation if the directory ``ident`` (device, inode) is
        the one watched for them already; else None (then :meth:`arm`).

        Found so after an open by path, it was watched before that open
        found it there, so a move since is an event: no look at the path
        is needed, unlike after :meth:`arm`.
        """
        with self._lock:
            # What the kernel queued first: a directory that went away
            # must be seen gone before it is found watched (its inode
            # number can only come back once its watch is removed).
            self._drain()
            watched = self._watched.get(name)
        return watched.generation if watched is not None and watched.ident == ident else None

    def _local(self, fd: int) -> bool:
        buf = ctypes.create_string_buffer(256)  # struct statfs, with room to spare
        if self._libc.fstatfs(fd, buf) != 0:
            return False
        # f_type is the first member, a long (__fsword_t) on every Linux ABI.
        return (ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF) in LOCAL_FILESYSTEMS

    def _refused(self, err: int) -> None:
        with self._lock:
            self.refused += 1
            first = not self._refusal_logged
            self._refusal_logged = True
        if first and err == errno.ENOSPC:
            log.warning("inotify watches exhausted (fs.inotify.max_user_watches): files of "
                        "users without one are checked by a stat per request")

    def _unwatch(self, name: str, wd: int) -> None:
        """``name`` no longer watched by ``wd``; the watch goes when nobody is (lock held)."""
        users = self._users_of.get(wd)
        if users is None:
            return
        users.discard(name)
        self._watched.pop(name, None)
        if not users:
            del self._users_of[wd]
            self._libc.inotify_rm_watch(self._fd, wd)

    # ------------------------------------------------------------ checking

    def still(self, name: str, generation: int) -> bool:
        """Whether ``name``'s files are as they were at ``generation`` (from
        :meth:`arm` or :meth:`current`)."""
        return self.current(name) == generation

    def current(self, name: str) -> int | None:
        """``name``'s generation now, if their ``~/.sr`` is watched.

        Taken before a stamp that finds a file unchanged, it vouches for
        the file from then on: a change after the stamp is an event.
        """
        with self._lock:
            self._drain()
            watched = self._watched.get(name)
        return None if watched is None else watched.generation

    def generations(self, names: Sequence[str]) -> list[int | None]:
        """:meth:`current` for each of ``names``, after one read of the queue:
        a look at every member asks once, not once per member."""
        with self._lock:
            self._drain()
            watched = self._watched
            return [None if (w := watched.get(name)) is None else w.generation for name in names]

    def drain(self) -> None:
        """Read what the kernel queued (the event loop does so when it is readable,
        so the queue does not overflow between checks)."""
        with self._lock:
            self._drain()

    def _drain(self) -> None:
        if not self._poll.poll(0):
            return
        while True:
            try:
                data = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            if not data:
                return
            self._apply(data)
            if len(data) < _READ_SIZE - _MAX_EVENT:
                return  # a read gives every event that fits: the queue is empty

    def _apply(self, data: bytes) -> None:
        offset = 0
        size = _EVENT.size
        while offset + size <= len(data):
            wd, mask, _, length = _EVENT.unpack_from(data, offset)
            name = data[offset + size:offset + size + length].rstrip(b"\0")
            offset += size + length
            if mask & IN_Q_OVERFLOW:
                # Events were lost: no generation holds.
                self.overflows += 1
                for watched in self._watched.values():
                    watched.generation = next(self._numbers)
                continue
            users = self._users_of.get(wd)
            if not users or (name and name not in self.names):
                continue
            # A user is in the set of the one watch they are watched by.
            for user in users:
                self._watched[user].generation = next(self._numbers)
            if not name and mask & _GONE:
                del self._users_of[wd]
                for user in users:
                    del self._watched[user]
                if not mask & IN_IGNORED:
                    # Moved: the watch would follow it; removed or
                    # unmounted: the kernel drops it anyway.
                    self._libc.inotify_rm_watch(self._fd, wd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
                self._watched.clear()
                self._users_of.clear()


def open_home_watch(names: Iterable[str]) -> HomeWatch | None:
    """A :class:`HomeWatch`, or None (logged) where the kernel gives no inotify."""
    try:
        return HomeWatch(names)
    except OSError as exc:
        log.warning("no inotify (%s): cached files are checked by a stat per request", exc)
        return None

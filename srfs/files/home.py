"""Safe file I/O inside a user's ``~/.sr``: the only code that opens files in homes.

The daemon runs as root and a user controls everything under their home, so
a plain ``open("~jan/.sr/passwd")`` would let jan point root at any file on
the host through a symlink, a hard link or a FIFO. The rules here, in the
spirit of sshd's StrictModes:

- ``~/.sr`` is opened once relative to the home directory with
  ``O_NOFOLLOW``, then every file relative to that directory fd, also with
  ``O_NOFOLLOW``. Holding the fd means a rename of ``.sr`` after the checks
  cannot redirect us.
- ``~/.sr`` must be a directory owned by the user and not group or world
  writable; every file read or appended to must be a regular file owned by
  the user and not group or world writable. A hard link to someone else's
  file fails the owner check; ``O_NONBLOCK`` keeps a FIFO from blocking the
  open long enough to be refused.
- Whole-file writes never open an existing file: they create a new temporary
  file (``O_CREAT|O_EXCL|O_NOFOLLOW``), give it to the user, write, optionally
  fsync, and rename it over the old name. A symlink in the way is replaced as
  a directory entry; its target is never touched. The temporary file is
  removed on every failure.
- Reads and writes are capped in size: a user must not make root read a
  huge file into memory or write unbounded data that is not charged to
  anyone.
- Second layer, when running as root: each operation runs with the thread's
  filesystem uid/gid set to the user's (``setfsuid``/``setfsgid``, which are
  per thread, unlike ``seteuid``), so even a bug in the checks above can
  only reach files the user could reach anyway. This also makes root's
  writes work on NFS homes exported with root_squash.

Every failure is a :class:`HomeError` with an errno and a reason meant for a
log line ("~jan/.sr/passwd is a symlink"). All calls block; the daemon runs
them with ``trio.to_thread.run_sync``.

Why one module of this size: it is the one place that opens files in
homes, so that the rules below are audited once.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import itertools
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Container, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Generic, TypeVar

from srfs.entropy import random_hex
from srfs.errors import ReasonedError
from srfs.user import User

_NativeItem = tuple[bytes, int, int, bytes, bytes, bytes, bytes, int, bool]
_write_batch: Callable[[Sequence[_NativeItem]], list[int]] | None
try:
    from srfs.files._homewrite import Writer as _Writer
    from srfs.files._homewrite import write_batch as _write_batch
except ImportError:  # a checkout, or a build without a C compiler
    _write_batch = None
    _Writer = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:
    from srfs.files.homewatch import HomeWatch

__all__ = [
    "MAX_APPEND",
    "MAX_READ",
    "MAX_WRITE",
    "SR_DIR",
    "UNKNOWN_STAMP",
    "FileCache",
    "FileWriter",
    "HomeError",
    "SrDir",
    "Stamp",
    "append_file",
    "as_user",
    "open_sr",
    "open_watched",
    "read_file",
    "remove_file",
    "spare_name",
    "stamp_of",
    "stamps_of",
    "temp_name",
    "write_file",
    "write_files",
]

SR_DIR = ".sr"
#: Largest file read from a home (bytes).
MAX_READ = 1 << 20
#: Largest whole file written into a home (bytes).
MAX_WRITE = 1 << 20
#: Largest size an appended-to file (``acc``) may reach; rotate before that.
MAX_APPEND = 64 << 20

# Names are chosen by our own code ("passwd", "usrloc", ...); anything else
# is a bug, so it is rejected before any system call.
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# O_PATH: a home may be searchable but not readable (0711), and the fd is
# only used as a base for openat/mkdirat and fstat.
_HOME_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_WRITE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_TEMP_ATTEMPTS = 8

# Tests turn the setfsuid layer off to prove the first layer works alone.
_SETFSUID = True


class HomeError(ReasonedError):
    """A file in a home could not be used, with an errno and a reason for humans."""


_U64 = (1 << 64) - 1
_U32 = (1 << 32) - 1


@dataclass(frozen=True, slots=True)
class Stamp:
    """What identifies one version of a file: a change in any field means re-read.

    The device, inode, size, modification and change times (ns), mode and
    owner, packed into one int, since only equality counts: sipd keeps a
    few per user it has seen, and seven ints took about 300 bytes. The
    change time, mode and owner are there so that a chmod or chown, which
    can make a file fail the checks, also invalidates a cached read.
    """

    key: int
    #: The file's link count, which is no part of its identity: a file of
    #: more than one link can change without an event in its directory
    #: (see :mod:`srfs.files.homewatch`).
    links: int = field(default=1, compare=False)

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        key = st.st_dev & _U64
        for value in (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns):
            key = (key << 64) | (value & _U64)
        key = (key << 32) | (st.st_mode & _U32)
        return cls((key << 32) | (st.st_uid & _U32), st.st_nlink)


#: What :func:`stamps_of` gives a file it could not look at as its owner:
#: equal to no stamp (no ``Stamp.of`` key is negative), so it reads as a change.
UNKNOWN_STAMP = Stamp(-1)


# --- per-thread filesystem identity ----------------------------------------

_libc_lock = threading.Lock()
_libc: ctypes.PyDLL | None = None


def _get_libc() -> ctypes.PyDLL:
    global _libc
    lib = _libc
    if lib is not None:
        return lib  # the lock only for the first call: stamps take this path on every request
    with _libc_lock:
        if _libc is None:
            # PyDLL: the call keeps the GIL. These system calls never block,
            # and a release per call (a CDLL's default) let the event loop and
            # the worker threads trade the GIL back and forth, two futex
            # round trips per call, some thirty calls per file written.
            lib = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            lib.setfsuid.argtypes = [ctypes.c_int]
            lib.setfsuid.restype = ctypes.c_int
            lib.setfsgid.argtypes = [ctypes.c_int]
            lib.setfsgid.restype = ctypes.c_int
            _libc = lib
        return _libc


def _current_fsids(libc: ctypes.PyDLL) -> tuple[int, int]:
    # setfsuid(-1) is always rejected and so just reports the current value;
    # the calls report no errors any other way.
    return libc.setfsuid(-1) & 0xFFFFFFFF, libc.setfsgid(-1) & 0xFFFFFFFF


_MASK = 0xFFFFFFFF
#: The identity this thread's innermost :func:`_acting_as` took, if any.
_acting = threading.local()


@contextmanager
def _acting_as(user: User) -> Iterator[None]:
    """Run the body with this thread's fsuid/fsgid set to the user's when we are root.

    Nested in one for the same user it costs nothing: a file write takes
    the identity once for opening ``~/.sr`` and creating its file.
    """
    want = (user.uid, user.gid)
    if getattr(_acting, "ids", None) == want:
        yield
        return
    if not _SETFSUID or os.geteuid() != 0 or user.uid == 0:
        yield
        return
    libc = _get_libc()
    # Each call answers with the value it replaced: the identity to go back to.
    prev_gid = libc.setfsgid(user.gid) & _MASK
    prev_uid = libc.setfsuid(user.uid) & _MASK
    outer = getattr(_acting, "ids", None)
    _acting.ids = want
    try:
        if _current_fsids(libc) != want:
            raise HomeError(errno.EPERM, f"cannot take the file identity of {user.name}")
        yield
    finally:
        _acting.ids = outer
        # fsuid first: back to root restores the capability to set fsgid.
        libc.setfsuid(prev_uid)
        libc.setfsgid(prev_gid)
        if _current_fsids(libc) != (prev_uid, prev_gid):
            # A worker thread left with another identity would fail in
            # confusing ways later; stop loudly instead.
            raise RuntimeError("could not restore the thread's filesystem identity")


# --- names and checks --------------------------------------------------------


def temp_name(name: str) -> str:
    """A new temporary file's name in ``~/.sr``, to be renamed to ``name``."""
    return f".{name}.{random_hex(8)}.tmp"


def spare_name(name: str) -> str:
    """The spare kept beside ``~/.sr/<name>`` by :func:`write_files`' C part:
    the file it replaced last, written over and swapped in next time."""
    return f".{name}.spare"


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"bad file name for ~/.sr: {name!r}")


def _perm_problem(st: os.stat_result, uid: int) -> str | None:
    if st.st_uid != uid:
        return f"owned by uid {st.st_uid}"
    if st.st_mode & 0o022:
        return "group or world writable"
    return None


def _kind(st: os.stat_result, want_dir: bool = False) -> str:
    """What is in the way, for a reason string."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if want_dir:
        return "is not a directory"
    if stat.S_ISDIR(st.st_mode):
        return "is a directory"
    return "is not a regular file"


class SrDir:
    """One user's ``~/.sr``, opened and checked; use as a context manager.

    Every method re-checks what it opens and raises :class:`HomeError`. The
    object holds a directory fd: keep it for one task (a read-modify-write),
    not across requests, since the user may replace the directory.
    """

    def __init__(self, user: User, fd: int, device: int, inode: int) -> None:
        # Use SrDir.open(); this only wraps an fd that passed the checks.
        self.user = user
        self._fd = fd
        #: The filesystem the directory is on (st_dev), and so every file
        #: staged in it: what write_files syncs, without a stat.
        self.device = device
        self.inode = inode
        #: The user's generation in the home watch given to :meth:`open`,
        #: if it vouches for this directory (see :meth:`watch`).
        self.watched: int | None = None

    # -- opening -----------------------------------------------------------

    @classmethod
    def open(cls, user: User, *, create: bool = False, watch: HomeWatch | None = None) -> SrDir:
        """Open ``~user/.sr``; create it (0700, owned by the user) if ``create``.

        A missing directory without ``create`` is ``HomeError(ENOENT)``.
        With ``watch``, it is armed on the directory before anything in it
        is looked at (:meth:`watch`, in the same turn of the user's identity).
        """
        euid = os.geteuid()
        if euid not in (0, user.uid):
            raise HomeError(errno.EPERM, f"uid {euid} cannot act for {user.name}")
        with _acting_as(user):
            home_fd = cls._open_home(user)
            try:
                fd, device, inode = cls._open_sr(user, home_fd, create)
            finally:
                os.close(home_fd)
            sr = cls(user, fd, device, inode)
            if watch is not None:
                try:
                    sr.watched = sr._arm(watch)
                except BaseException:
                    sr.close()
                    raise
        return sr

    @staticmethod
    def _open_home(user: User) -> int:
        # The home path comes from NSS, i.e. from the administrator, so it is
        # followed as given; only what is inside it belongs to the user.
        label = f"~{user.name}"
        if not os.path.isabs(user.home):
            raise HomeError(errno.EINVAL, f"{label}: no usable home directory ({user.home!r})")
        try:
            fd = os.open(user.home, _HOME_FLAGS)
        except OSError as e:
            raise HomeError(
                e.errno or errno.EIO, f"{label}: {os.strerror(e.errno or errno.EIO)}"
            ) from e
        try:
            st = os.fstat(fd)
            if st.st_uid not in (user.uid, 0):
                raise HomeError(errno.EPERM, f"{label} is owned by uid {st.st_uid}")
            if st.st_mode & 0o002:
                raise HomeError(errno.EPERM, f"{label} is world writable")
        except BaseException:
            os.close(fd)
            raise
        return fd

    @classmethod
    def _open_sr(cls, user: User, home_fd: int, create: bool) -> tuple[int, int, int]:
        label = f"~{user.name}/{SR_DIR}"
        flags = _DIR_FLAGS | os.O_NOFOLLOW
        created = False
        try:
            fd = os.open(SR_DIR, flags, dir_fd=home_fd)
        except FileNotFoundError:
            if not create:
                raise HomeError(errno.ENOENT, f"{label} does not exist") from None
            try:
                os.mkdir(SR_DIR, 0o700, dir_fd=home_fd)
                created = True
            except FileExistsError:
                pass  # made meanwhile; the checks below decide
            except OSError as e:
                raise cls._os_error(label, e, "cannot create ") from e
            try:
                fd = os.open(SR_DIR, flags, dir_fd=home_fd)
            except OSError as e:
                raise cls._open_error(label, e, home_fd, SR_DIR, want_dir=True) from e
        except OSError as e:
            raise cls._open_error(label, e, home_fd, SR_DIR, want_dir=True) from e
        try:
            st = os.fstat(fd)
            if created and st.st_uid != user.uid and st.st_uid == os.geteuid():
                # Made by root without the fsuid layer: hand it over, but only
                # an empty directory, so a root-owned directory slipped in its
                # place between mkdir and open is never given away.
                if os.listdir(fd):
                    raise HomeError(errno.EPERM, f"{label} changed while being created")
                os.fchown(fd, user.uid, user.gid)
                st = os.fstat(fd)
            if created and st.st_uid == user.uid and stat.S_IMODE(st.st_mode) != 0o700:
                os.fchmod(fd, 0o700)  # the umask may have taken bits we want
                st = os.fstat(fd)
            problem = _perm_problem(st, user.uid)
            if problem:
                raise HomeError(errno.EPERM, f"{label} is {problem}")
        except OSError as e:
            os.close(fd)
            raise cls._os_error(label, e) from e
        except BaseException:
            os.close(fd)
            raise
        return fd, st.st_dev, st.st_ino

    # -- errors ------------------------------------------------------------

    @staticmethod
    def _os_error(label: str, e: OSError, prefix: str = "") -> HomeError:
        code = e.errno or errno.EIO
        return HomeError(code, f"{prefix}{label}: {os.strerror(code)}")

    @classmethod
    def _open_error(
        cls, label: str, e: OSError, dir_fd: int, name: str, want_dir: bool = False
    ) -> HomeError:
        # ELOOP (symlink with O_NOFOLLOW), ENOTDIR (symlink or file where a
        # directory should be) and ENXIO (FIFO or socket opened for writing)
        # deserve a reason that names what is in the way.
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.EISDIR):
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:
                pass
            else:
                return HomeError(e.errno or errno.EIO, f"{label} {_kind(st, want_dir)}")
        return cls._os_error(label, e)

    def _label(self, name: str) -> str:
        return f"~{self.user.name}/{SR_DIR}/{name}"

    # -- operations --------------------------------------------------------

    def _checked_fd(self, name: str, fd: int) -> os.stat_result:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise HomeError(errno.EINVAL, f"{self._label(name)} {_kind(st)}")
        problem = _perm_problem(st, self.user.uid)
        if problem:
            raise HomeError(errno.EPERM, f"{self._label(name)} is {problem}")
        return st

    def watch(self, watch: HomeWatch) -> int | None:
        """Arm ``watch`` on this directory (:meth:`HomeWatch.arm`); the user's generation.

        None when it cannot vouch for the files: among its own reasons, when
        the directory is no longer where ``~/.sr`` leads (moved since it
        was opened), which, looked at after the watch is set, would
        otherwise go unheard.
        """
        with _acting_as(self.user):
            return self._arm(watch)

    def _arm(self, watch: HomeWatch) -> int | None:
        # As the user.
        ident = (self.device, self.inode)
        generation = watch.watching(self.user.name, ident)
        if generation is not None:
            return generation
        generation = watch.arm(self.user.name, self._fd, ident)
        if generation is None:
            return None
        try:
            at_path = os.lstat(os.path.join(self.user.home, SR_DIR))
        except OSError:
            return None
        if (at_path.st_dev, at_path.st_ino) != (self.device, self.inode):
            return None
        return generation

    def stat(self, name: str) -> Stamp | None:
        """The file's stamp without following a link, or None if it does not exist."""
        _check_name(name)
        with _acting_as(self.user):
            try:
                return Stamp.of(os.stat(name, dir_fd=self._fd, follow_symlinks=False))
            except FileNotFoundError:
                return None
            except OSError as e:
                raise self._os_error(self._label(name), e) from e

    def read(self, name: str, max_size: int = MAX_READ, *, spare: bool = False) -> bytes | None:
        """The file's bytes (its spare's), or None if it does not exist."""
        found = self.read_stamped(name, max_size, spare=spare)
        return None if found is None else found[0]

    def read_stamped(self, name: str, max_size: int = MAX_READ, *,
                     spare: bool = False) -> tuple[bytes, Stamp] | None:
        """The file's bytes and the stamp of the file they came from, or None;
        with ``spare``, those of its spare (:func:`spare_name`)."""
        _check_name(name)
        if spare:
            name = spare_name(name)
        label = self._label(name)
        with _acting_as(self.user):
            try:
                fd = os.open(name, _READ_FLAGS, dir_fd=self._fd)
            except FileNotFoundError:
                return None
            except OSError as e:
                raise self._open_error(label, e, self._fd, name) from e
            try:
                st = self._checked_fd(name, fd)
                if st.st_size > max_size:
                    raise HomeError(errno.EFBIG, f"{label} is larger than {max_size} bytes")
                chunks: list[bytes] = []
                total = 0
                # Read one byte past the cap: the file may grow after fstat.
                while total <= max_size:
                    chunk = os.read(fd, max_size + 1 - total)
                    if not chunk:
                        break
                    chunks.append(chunk)
                    total += len(chunk)
                if total > max_size:
                    raise HomeError(errno.EFBIG, f"{label} is larger than {max_size} bytes")
                return b"".join(chunks), Stamp.of(st)
            except OSError as e:
                raise self._os_error(label, e) from e
            finally:
                os.close(fd)

    def _give_to_user(self, fd: int, mode: int) -> None:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (self.user.uid, self.user.gid) and os.geteuid() == 0:
            os.fchown(fd, self.user.uid, self.user.gid)
        os.fchmod(fd, mode)

    def write(
        self,
        name: str,
        data: bytes,
        *,
        fsync: bool = True,
        mode: int = 0o600,
        max_size: int = MAX_WRITE,
    ) -> None:
        """Replace the file with ``data`` atomically (temp file + rename).

        Whatever is at ``name`` (a file, a symlink, a hard link to a foreign
        file) is replaced as a directory entry and never opened. With
        ``fsync`` the data and the rename are on disk before this returns.
        """
        tmp, fd = self.stage(name, data, mode=mode, max_size=max_size)
        self.publish(name, tmp, fd, fsync=fsync)
        if fsync:
            self.sync()

    def stage(self, name: str, data: bytes, *, mode: int = 0o600,
              max_size: int = MAX_WRITE) -> tuple[str, int]:
        """The first half of :meth:`write`: ``data`` in a new temporary file.

        Returns the temporary file's name and its open fd, for
        :meth:`publish` (or :meth:`discard`). Nothing is synced yet, so the
        writes of a batch reach the disk together (:func:`write_files`).
        """
        _check_name(name)
        label = self._label(name)
        if len(data) > max_size:
            raise HomeError(
                errno.EFBIG, f"{label}: {len(data)} bytes is over the limit of {max_size}"
            )
        if mode & ~0o644:
            raise ValueError(f"mode {mode:o} would let others write")
        with _acting_as(self.user):
            tmp, fd = self._create_temp(name)
            try:
                self._give_to_user(fd, mode)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as e:
                self.discard(tmp, fd)
                raise self._os_error(label, e) from e
            except BaseException:
                self.discard(tmp, fd)
                raise
        return tmp, fd

    def publish(self, name: str, tmp: str, fd: int, *, fsync: bool) -> None:
        """The second half of :meth:`write`: sync the staged file (if ``fsync``),
        close it and rename it over ``name``. The rename is durable only
        after :meth:`sync`. On failure the temporary file is removed."""
        label = self._label(name)
        try:
            if fsync:
                os.fsync(fd)
            os.close(fd)
            fd = -1
            with _acting_as(self.user):
                os.rename(tmp, name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
            tmp = ""
        except OSError as e:
            if e.errno == errno.EISDIR:
                raise HomeError(e.errno, f"{label} is a directory") from e
            raise self._os_error(label, e) from e
        finally:
            self.discard(tmp, fd)

    def discard(self, tmp: str, fd: int) -> None:
        """Close and remove a staged file (either may already be gone: "" and -1)."""
        if fd >= 0:
            os.close(fd)
        if tmp:
            try:
                with _acting_as(self.user):
                    os.unlink(tmp, dir_fd=self._fd)
            except (OSError, HomeError):
                pass

    def sync(self) -> None:
        """Make the directory's entries durable (the renames of :meth:`publish`)."""
        try:
            os.fsync(self._fd)
        except OSError as e:
            raise self._os_error(f"~{self.user.name}/{SR_DIR}", e) from e

    def _create_temp(self, name: str) -> tuple[str, int]:
        for _ in range(_TEMP_ATTEMPTS):
            # A random name: the user can pre-create any predictable one.
            tmp = temp_name(name)
            try:
                fd = os.open(tmp, _WRITE_FLAGS | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=self._fd)
            except FileExistsError:
                continue
            except OSError as e:
                raise self._os_error(
                    self._label(name), e, "cannot create a temporary file for "
                ) from e
            return tmp, fd
        raise HomeError(errno.EEXIST, f"cannot create a temporary file for {self._label(name)}")

    def append(
        self,
        name: str,
        data: bytes,
        *,
        fsync: bool = False,
        mode: int = 0o600,
        max_size: int = MAX_APPEND,
    ) -> None:
        """Append ``data`` to the file, creating it (owned by the user) if missing.

        For log-like files such as ``acc``. An existing file must pass the
        same checks as for reading; ``HomeError(EFBIG)`` when the file would
        grow past ``max_size``, so the caller can rotate it.
        """
        _check_name(name)
        label = self._label(name)
        if mode & ~0o644:
            raise ValueError(f"mode {mode:o} would let others write")
        with _acting_as(self.user):
            fd, created = self._open_for_append(name)
            try:
                if created:
                    self._give_to_user(fd, mode)
                st = self._checked_fd(name, fd)
                if st.st_size + len(data) > max_size:
                    raise HomeError(errno.EFBIG, f"{label} would grow past {max_size} bytes")
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if fsync:
                    os.fsync(fd)
            except OSError as e:
                raise self._os_error(label, e) from e
            finally:
                os.close(fd)

    def _open_for_append(self, name: str) -> tuple[int, bool]:
        # Never O_CREAT without O_EXCL: a file that exists is opened without
        # it and checked; one we create is known to be ours. That is how a
        # root-owned hard link is told apart from a file we just made.
        flags = _WRITE_FLAGS | os.O_APPEND
        label = self._label(name)
        for _ in range(_TEMP_ATTEMPTS):
            try:
                return os.open(name, flags, dir_fd=self._fd), False
            except FileNotFoundError:
                pass
            except OSError as e:
                raise self._open_error(label, e, self._fd, name) from e
            try:
                return os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=self._fd), True
            except FileExistsError:
                continue
            except OSError as e:
                raise self._open_error(label, e, self._fd, name) from e
        raise HomeError(errno.EAGAIN, f"{label} keeps changing")

    def remove(self, name: str) -> bool:
        """Remove the directory entry (a link itself, never its target); False if absent."""
        _check_name(name)
        with _acting_as(self.user):
            try:
                os.unlink(name, dir_fd=self._fd)
            except FileNotFoundError:
                return False
            except OSError as e:
                raise self._open_error(self._label(name), e, self._fd, name) from e
        return True

    def rename(self, name: str, new_name: str) -> bool:
        """Rename the entry ``name`` to ``new_name`` inside ``~/.sr``; False if absent.

        For rotating log-like files (``acc`` to ``acc.1``). Works on
        directory entries only: a symlink is renamed as a link, and one at
        ``new_name`` is replaced, never followed, so nothing outside
        ``~/.sr`` is touched.
        """
        _check_name(name)
        _check_name(new_name)
        with _acting_as(self.user):
            try:
                os.rename(name, new_name, src_dir_fd=self._fd, dst_dir_fd=self._fd)
            except FileNotFoundError:
                return False
            except OSError as e:
                raise self._os_error(self._label(new_name), e, f"cannot rename {name} to ") from e
        return True

    @contextmanager
    def lock(self, timeout: float = 10.0) -> Iterator[None]:
        """Hold an exclusive flock on ``~/.sr`` for a read-modify-write.

        Only cooperating writers (sippasswd) take it. Polls rather than
        blocks, so a user holding the lock on their own directory delays us
        at most ``timeout`` seconds, then it is ``HomeError(EWOULDBLOCK)``.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise HomeError(
                        errno.EWOULDBLOCK,
                        f"~{self.user.name}/{SR_DIR} is locked by another process",
                    ) from None
                time.sleep(0.05)
            except OSError as e:
                raise self._os_error(f"~{self.user.name}/{SR_DIR}", e, "cannot lock ") from e
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def fileno(self) -> int:
        """The directory's fd (for a sync of its filesystem)."""
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> SrDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A forgotten close must not leak a directory fd in a long-running daemon.
        if getattr(self, "_fd", -1) >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass


# --- one-shot helpers --------------------------------------------------------


def stamp_of(user: User, name: str) -> Stamp | None:
    """``~user/.sr/<name>``'s stamp, the entry itself (a link is not followed); None if unseen.

    One ``lstat`` by path, made as the user like every access here (as
    root: the thread's filesystem identity set to the user's and back, two
    system calls that never block), so it is cheap enough to decide on the
    event loop's thread whether a file needs reading again. As the user is
    also how it reaches homes of mode 0700 without root's override of
    permissions, which sipd gives up, and homes on NFS with root_squash.
    """
    _check_name(name)
    try:
        st = _lstat_as(user, os.path.join(user.home, SR_DIR, name))
    except OSError:
        return None
    return Stamp.of(st)


def stamps_of(users: Sequence[User], name: str) -> list[Stamp | None]:
    """:func:`stamp_of` for each of ``users``, for a look at every member.

    The same ``lstat`` as each user, but the thread goes from one user's
    identity straight to the next, and back to its own (checked) once at
    the end: two system calls per user rather than six, most of what a
    stamp costs. Each switch also tells whether the one before it took
    (``setfsuid`` and ``setfsgid`` answer with the identity they replace):
    an ``lstat`` made under another identity than its user's gets
    :data:`UNKNOWN_STAMP`, which equals no stamp, so its file counts as
    changed and is read the checked way. Meant for a worker thread: the
    event loop's thread should not make thousands of system calls in a
    row.
    """
    if not _SETFSUID or os.geteuid() != 0 or getattr(_acting, "ids", None) is not None:
        return [stamp_of(user, name) for user in users]
    _check_name(name)
    paths = [os.path.join(user.home, SR_DIR, name) for user in users]
    out: list[Stamp | None] = []
    libc = _get_libc()
    prev_uid, prev_gid = _current_fsids(libc)
    want = (prev_uid, prev_gid)
    try:
        for user, path in zip(users, paths, strict=True):
            ids = (prev_uid, prev_gid) if user.uid == 0 else (user.uid, user.gid)
            # fsuid first when going back to root: it restores the
            # capability to set the fsgid (as _acting_as does).
            if user.uid == 0:
                had_uid = libc.setfsuid(ids[0]) & _MASK
                had_gid = libc.setfsgid(ids[1]) & _MASK
            else:
                had_gid = libc.setfsgid(ids[1]) & _MASK
                had_uid = libc.setfsuid(ids[0]) & _MASK
            if (had_uid, had_gid) != want and out:
                out[-1] = UNKNOWN_STAMP  # that lstat ran as somebody else
            want = ids
            try:
                out.append(Stamp.of(os.lstat(path)))
            except OSError:
                out.append(None)
    finally:
        had = (libc.setfsuid(prev_uid) & _MASK, libc.setfsgid(prev_gid) & _MASK)
        if had != want and out:
            out[-1] = UNKNOWN_STAMP
        if _current_fsids(libc) != (prev_uid, prev_gid):
            raise RuntimeError("could not restore the thread's filesystem identity")
    return out


def _lstat_as(user: User, path: str) -> os.stat_result:
    """``os.lstat`` as the user: :func:`_acting_as` without its check that the
    switch took. Were it refused, the ``lstat`` would run as a root without
    the permission overrides, and find less, never more: a stamp only says
    whether to read again, and the reading is checked. Going back is still
    checked, since the event loop's thread goes on with what is left."""
    if (not _SETFSUID or user.uid == 0 or getattr(_acting, "ids", None) == (user.uid, user.gid)
            or os.geteuid() != 0):
        return os.lstat(path)
    libc = _get_libc()
    prev_gid = libc.setfsgid(user.gid) & _MASK
    prev_uid = libc.setfsuid(user.uid) & _MASK
    try:
        return os.lstat(path)
    finally:
        libc.setfsuid(prev_uid)
        libc.setfsgid(prev_gid)
        if _current_fsids(libc) != (prev_uid, prev_gid):
            raise RuntimeError("could not restore the thread's filesystem identity")


def open_watched(user: User, watch: HomeWatch | None) -> SrDir | None:
    """``user``'s ``~/.sr`` opened to read kept files (:meth:`FileCache.get_in`),
    armed with ``watch`` before anything in it is looked at, so a change
    after the look is an event; None when it does not exist."""
    try:
        return SrDir.open(user, watch=watch)
    except HomeError as e:
        if e.errno == errno.ENOENT:
            return None
        raise


def as_user(user: User) -> AbstractContextManager[None]:
    """The thread acts as ``user`` on files until the block ends: what this
    module does for that user inside it takes the identity without turning
    it again (a turn is four system calls and their checks, about 7 µs)."""
    return _acting_as(user)


def open_sr(user: User, *, create: bool = False) -> SrDir:
    """Same as :meth:`SrDir.open`."""
    return SrDir.open(user, create=create)


def read_file(user: User, name: str, max_size: int = MAX_READ, *,
              watch: HomeWatch | None = None) -> bytes | None:
    """``~user/.sr/<name>``, or None when ``~/.sr`` or the file does not exist.

    With ``watch``, ``~/.sr`` is watched from then on (:meth:`SrDir.open`).
    """
    try:
        sr = SrDir.open(user, watch=watch)
    except HomeError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    with sr:
        return sr.read(name, max_size)


def write_file(
    user: User,
    name: str,
    data: bytes,
    *,
    fsync: bool = True,
    mode: int = 0o600,
    max_size: int = MAX_WRITE,
) -> None:
    """Atomically replace ``~user/.sr/<name>``, creating ``~/.sr`` if needed."""
    with _acting_as(user), SrDir.open(user, create=True) as sr:
        sr.write(name, data, fsync=fsync, mode=mode, max_size=max_size)


def write_files(
    items: Sequence[tuple[User, str, bytes]],
    *,
    mode: int = 0o600,
    max_size: int = MAX_WRITE,
    checksummed_for: Container[str] = (),
) -> list[HomeError | None]:
    """Atomically and durably replace several files, each ``~user/.sr/<name>``.

    The same steps as :func:`write_file` for each, taken together: every
    file is written to its temporary file, then each filesystem holding
    one is synced once (``syncfs``), then every file is renamed into
    place, then each filesystem synced once more for the renames. A batch
    thus costs one trip to a worker thread and two syncs whatever its
    size, where a file at a time cost two ``fsync`` each: the sync is
    what makes a group commit cheaper per file the larger the group.
    ``syncfs`` also writes what other programs left pending on the same
    filesystem; where it fails, each file and directory is synced on its
    own instead. Returns one entry per item: None once the file is
    durable, or the :class:`HomeError` that refused it (others go on).

    Where the compiled :mod:`srfs.files._homewrite` is there and sipd is
    root, it takes the usual files (``~/.sr`` in place and sound) with the
    GIL released once for the batch. Here each of some seventeen system
    calls per file lets it go, and with the event loop busy each was a
    hand-off between the threads (writing the files was a third of a
    REGISTER's CPU). What it does not write it leaves untouched, and this
    module's own path writes it, or words why not. It writes each file
    over its spare (:func:`spare_name`, the file it replaced the time
    before) and swaps the two, so that no write frees blocks: on a
    filesystem mounted with ``discard``, a rename that frees the replaced
    file's blocks waits for the device to discard them. So no two threads
    may write the same file at once (:class:`~srfs.files.usrloc.UsrlocFiles`
    holds a lock per user).

    The files of the users in ``checksummed_for`` start with a line their
    reader checks, which names the run that wrote them, and where it fails
    (a crash cut the write short) the reader takes the spare instead
    (:meth:`srfs.files.usrloc.UsrlocFiles.load`); the caller vouches that
    each one's file in place is its run's last durable write. Where the
    spare's first line names the same run as the new text, the C part
    swaps the file with its spare as soon as it is written, before any
    sync, and a batch of them costs one sync round, not two: a crash
    before the sync leaves the old file in place, or in its place the new
    one, whole, half written or not at all (an older write of the run),
    beside the old one as its spare. Any other file takes both rounds, as
    does every file on this module's own path.
    """
    native = _write_batch
    if native is None or not _native_fits(mode):
        return _write_files(items, mode=mode, max_size=max_size)
    batch, taken = _native_items(items, mode, max_size, checksummed_for)
    codes = native(batch)
    return _finish(items, taken, codes, mode=mode, max_size=max_size)


def _native_fits(mode: int) -> bool:
    """Whether the C path may write files of this mode from this thread now."""
    return (_SETFSUID and not mode & ~0o644 and os.geteuid() == 0
            and getattr(_acting, "ids", None) is None)


def _native_items(items: Sequence[tuple[User, str, bytes]], mode: int,
                  max_size: int, checksummed_for: Container[str],
                  ) -> tuple[list[_NativeItem], list[int]]:
    """The items the C path takes, as it takes them, and their indexes in ``items``."""
    batch: list[_NativeItem] = []
    taken: list[int] = []
    for i, (user, name, data) in enumerate(items):
        if (user.uid == 0 or len(data) > max_size or not _NAME_RE.fullmatch(name)
                or not os.path.isabs(user.home) or "\0" in user.home):
            continue  # refused, or root's own: the path below says why
        taken.append(i)
        batch.append((os.fsencode(user.home), user.uid, user.gid,
                      temp_name(name).encode(), spare_name(name).encode(),
                      name.encode(), data, mode, user.name in checksummed_for))
    return batch, taken


def _finish(items: Sequence[tuple[User, str, bytes]], taken: Sequence[int],
            codes: Sequence[int], *, mode: int, max_size: int) -> list[HomeError | None]:
    """Each item's error, once this module's own path has written those
    the C path did not (``codes`` are its, for the ``taken`` items)."""
    written = {i for i, code in zip(taken, codes, strict=True) if code == 0}
    errors: list[HomeError | None] = [None] * len(items)
    rest = [i for i in range(len(items)) if i not in written]
    if rest:
        for i, error in zip(rest, _write_files([items[i] for i in rest], mode=mode,
                                               max_size=max_size), strict=True):
            errors[i] = error
    return errors


class WriterBroken(RuntimeError):
    """The writing thread could not take back root's file identity: it must
    end, and the batch ``ticket`` is not written."""

    def __init__(self, ticket: int) -> None:
        super().__init__("could not restore the writing thread's filesystem identity")
        self.ticket = ticket


@dataclass(frozen=True, slots=True)
class _Submitted:
    items: Sequence[tuple[User, str, bytes]]
    taken: list[int]
    mode: int
    max_size: int


class FileWriter:
    """:func:`write_files` for one thread that writes every batch handed
    to it, in the order given, and holds the GIL only where a batch needs
    this module's own path.

    A worker thread that called :func:`write_files` for each batch took
    the GIL three times per batch (woken with the batch, back from the C
    path, handing the answer over), and under load each time waited for
    the event loop to let it go: that was most of the time a group commit
    took, and a large share of its CPU. Here the event loop queues a batch
    (:meth:`submit`, which copies it), the thread that runs :meth:`serve`
    writes it without the GIL, and the event loop learns which batches are
    durable when :meth:`fileno` (an eventfd) is readable
    (:meth:`collect`). A batch with a file the C path did not write (it
    words no errors, and makes no ``~/.sr``) comes back out of
    :meth:`serve`, whose thread writes the rest as :func:`write_files`
    does. Since one thread writes every batch in order, no two write one
    file at once, and a file is never replaced by one queued before it.

    Only where the C path is built and sipd is root (:meth:`available`).
    """

    def __init__(self) -> None:
        if _Writer is None:
            raise RuntimeError("the C path of home.write_files is not built")
        self._native = _Writer()
        self._tickets = itertools.count(1)
        #: Batches queued, by ticket: written to on the event loop, read and
        #: dropped there (collect) or by the writing thread (serve).
        self._submitted: dict[int, _Submitted] = {}

    @staticmethod
    def available(mode: int = 0o600) -> bool:
        return _Writer is not None and _native_fits(mode)

    def submit(self, items: Sequence[tuple[User, str, bytes]], *, mode: int = 0o600,
               max_size: int = MAX_WRITE, checksummed_for: Container[str] = ()) -> int:
        """Queue ``items`` as one batch (see :func:`write_files`); its ticket.
        RuntimeError once closed."""
        batch, taken = _native_items(items, mode, max_size, checksummed_for)
        ticket = next(self._tickets)
        # Recorded first: the writing thread may be done with it before
        # submit returns, and looks it up then.
        self._submitted[ticket] = _Submitted(items, taken, mode, max_size)
        try:
            self._native.submit(ticket, batch, len(taken) == len(items))
        except BaseException:
            del self._submitted[ticket]
            raise
        return ticket

    def serve(self) -> tuple[int, list[HomeError | None]] | None:
        """The writing thread's loop: returns for a batch it had to finish
        here, with its errors (one per item, as :func:`write_files`), or
        None once closed and every batch is written. Raises
        :class:`WriterBroken`: the thread must end."""
        got = self._native.serve()
        if got is None:
            return None
        ticket, codes = got
        batch = self._submitted.pop(ticket)
        if codes is None:
            raise WriterBroken(ticket)
        return ticket, _finish(batch.items, batch.taken, codes, mode=batch.mode,
                               max_size=batch.max_size)

    def collect(self) -> list[tuple[int, int]]:
        """(ticket, number of items) of each batch written whole since the last call."""
        done = []
        for ticket in self._native.collect():
            done.append((ticket, len(self._submitted.pop(ticket).items)))
        return done

    def fileno(self) -> int:
        return self._native.fileno()

    def close(self) -> None:
        """Take no more batches: :meth:`serve` returns None once the queued ones are written."""
        self._native.close()


def _write_files(
    items: Sequence[tuple[User, str, bytes]],
    *,
    mode: int = 0o600,
    max_size: int = MAX_WRITE,
) -> list[HomeError | None]:
    """:func:`write_files` in Python, one file after another."""
    errors: list[HomeError | None] = [None] * len(items)
    staged: list[tuple[int, SrDir, str, int]] = []
    published: list[tuple[int, SrDir]] = []
    try:
        for i, (user, name, data) in enumerate(items):
            with _acting_as(user):  # once for the open and the new file
                try:
                    sr = SrDir.open(user, create=True)
                except HomeError as e:
                    errors[i] = e
                    continue
                try:
                    tmp, fd = sr.stage(name, data, mode=mode, max_size=max_size)
                except HomeError as e:
                    errors[i] = e
                    sr.close()
                    continue
            staged.append((i, sr, tmp, fd))
        unsynced = _sync_filesystems([(sr.device, fd) for _, sr, _, fd in staged])
        while staged:
            i, sr, tmp, fd = staged.pop(0)
            try:
                sr.publish(items[i][1], tmp, fd, fsync=fd in unsynced)
            except HomeError as e:
                errors[i] = e
                sr.close()
                continue
            published.append((i, sr))
        unsynced = _sync_filesystems([(sr.device, sr.fileno()) for _, sr in published])
        for i, sr in published:
            try:
                if sr.fileno() in unsynced:
                    sr.sync()
            except HomeError as e:
                errors[i] = e
            finally:
                sr.close()
    finally:
        # Reached with something left only when interrupted: nothing half-done stays.
        for _, sr, tmp, fd in staged:
            sr.discard(tmp, fd)
            sr.close()
        for _, sr in published:
            sr.close()  # a no-op for those already closed
    return errors


def _sync_filesystems(fds: Sequence[tuple[int, int]]) -> set[int]:
    """``syncfs`` once per filesystem of the (device, fd) pairs; the fds whose
    filesystem it failed for."""
    by_device: dict[int, list[int]] = {}
    for device, fd in fds:
        by_device.setdefault(device, []).append(fd)
    failed: set[int] = set()
    for group in by_device.values():
        if _syncfs(group[0]) != 0:
            failed.update(group)
    return failed


_blocking_libc: ctypes.CDLL | None = None


def _syncfs(fd: int) -> int:
    """syncfs(2): 0, or the errno (ENOSYS where the C library lacks it)."""
    global _blocking_libc
    if _blocking_libc is None:
        # A CDLL, which lets go of the GIL: a sync can take a while.
        _blocking_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6",
                                     use_errno=True)
    func = getattr(_blocking_libc, "syncfs", None)
    if func is None:
        return errno.ENOSYS
    if func(fd) == 0:
        return 0
    return ctypes.get_errno() or errno.EIO


def append_file(
    user: User,
    name: str,
    data: bytes,
    *,
    fsync: bool = False,
    max_size: int = MAX_APPEND,
) -> None:
    """Append to ``~user/.sr/<name>``, creating ``~/.sr`` and the file if needed."""
    with SrDir.open(user, create=True) as sr:
        sr.append(name, data, fsync=fsync, max_size=max_size)


def remove_file(user: User, name: str) -> bool:
    """Remove ``~user/.sr/<name>``; False when it (or ``~/.sr``) was not there."""
    try:
        sr = SrDir.open(user)
    except HomeError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    with sr:
        return sr.remove(name)


# --- cached reads ------------------------------------------------------------

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Cached(Generic[T]):
    user: User
    stamp: Stamp | None
    """None: the file was not there."""
    value: T | None
    error: HomeError | None
    watched: int | None = None
    """The user's generation in the :class:`~srfs.files.homewatch.HomeWatch`
    from before the file was last found as ``stamp`` says; None when only
    the stamp can tell."""


def _usable(cached: _Cached[T] | None, user: User) -> _Cached[T] | None:
    """``cached`` if its stamp alone can tell whether it still holds: read
    for this same user (not a moved home), and without an error."""
    if cached is None or cached.user != user or cached.error is not None:
        return None
    return cached


def _vouched(stamp: Stamp | None, watched: int | None) -> int | None:
    # A file of several links can be written through one elsewhere.
    return watched if stamp is None or stamp.links == 1 else None


class FileCache(Generic[T]):
    """Parsed ``~/.sr/<name>`` per user, read again only when its :class:`Stamp` changes.

    ``get(user)`` costs opening ``~/.sr`` and one ``fstatat`` when nothing
    changed, so hand edits are seen on the next call without a restart. A
    file that fails the checks raises the same :class:`HomeError` on every
    call until it changes (log it once per change if you like: the error
    object is the same). Thread safe; ``parse`` runs in the calling thread.

    With a ``watch``, :meth:`get` arms it on the user's ``~/.sr``, and
    :meth:`peek` and :meth:`unchanged` take its word that a file did not
    change rather than a stamp (:mod:`srfs.files.homewatch`), where it can
    give it.
    """

    def __init__(self, name: str, parse: Callable[[bytes], T], *, max_size: int = MAX_READ,
                 watch: HomeWatch | None = None) -> None:
        _check_name(name)
        self.name = name
        self._parse = parse
        self._max_size = max_size
        self._watch = watch
        self._lock = threading.Lock()
        self._entries: dict[str, _Cached[T]] = {}

    def get(self, user: User) -> T | None:
        """The parsed file, or None when ``~/.sr`` or the file does not exist."""
        sr = open_watched(user, self._watch)
        if sr is None:
            return self.get_in(user, None)
        with sr:
            return self.get_in(user, sr)

    def get_in(self, user: User, sr: SrDir | None) -> T | None:
        """:meth:`get` through ``user``'s ``~/.sr`` as :func:`open_watched`
        opened it with this cache's watch (None: there is none), which the
        caller closes: one open serves several files of a user."""
        return self.look_in(user, sr)[0]

    def look_in(self, user: User, sr: SrDir | None) -> tuple[T | None, Stamp | None, int | None]:
        """:meth:`get_in`'s answer with the stamp of the file it came from
        (None: no file) and the watch's generation that vouches for that
        file from then on (None: only the stamp can tell), taken together:
        what another thread reads meanwhile cannot pair one's stamp with
        the other's content."""
        if sr is None:
            self._absent(user)
            return None, None, None
        watched = sr.watched
        stamp = sr.stat(self.name)
        if stamp is None:
            self._absent(user, watched)
            return None, None, watched
        with self._lock:
            cached = self._entries.get(user.name)
        if cached is not None and cached.user == user and cached.stamp == stamp:
            if cached.error is not None:
                raise cached.error
            watched = _vouched(stamp, watched)
            if cached.watched != watched:
                self._keep(cached, replace(cached, watched=watched))
            return cached.value, stamp, watched
        try:
            found = sr.read_stamped(self.name, self._max_size)
        except HomeError as e:
            with self._lock:
                self._entries[user.name] = _Cached(user, stamp, None, e)
            raise
        if found is None:  # removed between stat and open
            self._absent(user, watched)
            return None, None, watched
        data, read_stamp = found
        value = self._parse(data)
        watched = _vouched(read_stamp, watched)
        with self._lock:
            self._entries[user.name] = _Cached(user, read_stamp, value, None, watched)
        return value, read_stamp, watched

    def peek(self, user: User) -> tuple[bool, T | None]:
        """What :meth:`get` would answer, if it is known without opening anything.

        ``(True, value)`` when the file (or its absence) is as the last
        :meth:`get` found it: told by the watch, else by its stamp
        (:func:`stamp_of`: one ``lstat`` as the user, cheap enough for the
        event loop's thread); ``(False, None)`` when only :meth:`get` can
        tell (never read, changed, or refused).
        """
        with self._lock:
            cached = _usable(self._entries.get(user.name), user)
        if cached is None:
            return False, None
        watch = self._watch
        if watch is None:
            if stamp_of(user, self.name) != cached.stamp:
                return False, None
            return True, cached.value
        if cached.watched is not None and watch.still(user.name, cached.watched):
            return True, cached.value
        # After an event (of another file, say) the stamp decides, and the
        # generation taken before it vouches for the file from then on.
        watched = _vouched(cached.stamp, watch.current(user.name))
        if stamp_of(user, self.name) != cached.stamp:
            return False, None
        if watched is not None:
            self._keep(cached, replace(cached, watched=watched))
        return True, cached.value

    def unchanged(self, users: Sequence[User]) -> list[bool]:
        """For each of ``users``, whether :meth:`peek` would know the answer
        (the file as the last :meth:`get` found it); the ``lstat`` calls,
        for those the watch does not vouch for, are :func:`stamps_of`'s.
        For a worker thread's look at every member."""
        with self._lock:
            cached = [_usable(self._entries.get(user.name), user) for user in users]
        watch = self._watch
        now = (watch.generations([user.name for user in users]) if watch is not None
               else [None] * len(users))
        known = [c is not None and c.watched is not None and c.watched == generation
                 for c, generation in zip(cached, now, strict=True)]
        stamps = iter(stamps_of([u for u, c, k in zip(users, cached, known, strict=True)
                                 if c is not None and not k], self.name))
        return [k or (c is not None and next(stamps) == c.stamp)
                for c, k in zip(cached, known, strict=True)]

    def _keep(self, was: _Cached[T], now: _Cached[T]) -> None:
        with self._lock:
            if self._entries.get(was.user.name) is was:
                self._entries[was.user.name] = now

    def _absent(self, user: User, watched: int | None = None) -> None:
        with self._lock:
            self._entries[user.name] = _Cached(user, None, None, None, watched)

    def forget(self, user: User | None = None) -> None:
        """Drop one user's entry (or all), e.g. when they leave the SIP group."""
        with self._lock:
            if user is None:
                self._entries.clear()
            else:
                self._entries.pop(user.name, None)

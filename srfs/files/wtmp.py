"""SIP registrations as logins: utmp (``who``) and wtmp (``last``) records.

Each registration gets a pseudo terminal line ``sip/<n>`` (lowest free n),
a ``USER_PROCESS`` record in utmp while it lasts and a ``USER_PROCESS`` /
``DEAD_PROCESS`` pair in wtmp, so ``who`` lists registered users and
``last`` shows when and from where they registered and for how long::

    jan      sip/1        192.0.2.10       Mon Nov 23 16:13 - 17:03  (00:50)

Records go through glibc (``utmpname``/``setutent``/``pututline``/
``endutent`` and ``updwtmp``) via ctypes rather than through our own file
writes, so that we take part in glibc's fcntl locking exactly like login,
sshd and tmux do. The ``struct utmp`` layout is the x86_64 glibc one (384
bytes); anywhere else the module reports itself unavailable
(:data:`UNAVAILABLE_REASON`, :class:`WtmpUnavailable`) instead of writing
records in a layout ``last`` would misread.

Why the pieces are the way they are:

- ``last`` pairs a logout with its login by ``ut_line`` and glibc's
  ``pututline`` finds the utmp slot to overwrite by ``ut_id`` (the last four
  bytes of the line). Lines are therefore numbered 1..9999 at most: from
  ``sip/10000`` on, the last four bytes would repeat (``sip/10001`` and
  ``sip/20001`` both end in ``0001``) and logouts would hit the wrong slot.
- A login without its logout record is shown by ``last`` as
  "gone - no logout" for ever. (util-linux ``last`` says "still logged in"
  only when ``/proc/<ut_pid>/loginuid`` is the user's uid, which a daemon
  serving many users never has, so open SIP sessions always read "gone -
  no logout" there; ``who`` is the live view.) After a crash,
  :meth:`LoginRecorder.close_stale` writes the missing logouts.
- ``updwtmp`` opens wtmp without ``O_CREAT`` and returns nothing: the file is
  created here if missing, and success is checked by the record being in
  the file afterwards, because glibc reports no error at all.
- errno is no verdict. For exactly ``/var/run/utmp`` and ``/var/log/wtmp``
  glibc first probes for ``utmpx``/``wtmpx`` with access(2), which fails
  with ENOENT on Linux and leaves that in errno however the call goes. So
  ``setutent`` (which returns nothing) is not judged at all: ``getutent``
  and ``pututline`` open the file again if it failed and report by their
  return value. errno is read only once a call is known to have failed.
- glibc's utmp state (the ``utmpname`` file name, the open descriptor) is
  process-global, and its lock timeout temporarily replaces the process's
  SIGALRM handler and alarm. Two threads inside those functions at once can
  leave an alarm armed with the default action, which kills the process, so
  every glibc utmp/wtmp call made by this module runs under one module-wide
  lock. Nothing else in the daemon may call those functions.

Timestamps are passed in (``now``, wall-clock seconds) so callers and tests
decide the time; the only I/O is the record writes. All calls block: the
daemon runs them in a worker thread (``trio.to_thread.run_sync``).

Why one module of this size: the struct layout, the line numbering and
the glibc calls only make sense together.
"""

from __future__ import annotations

import ctypes
import errno
import grp
import heapq
import ipaddress
import math
import os
import platform
import socket
import stat
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

__all__ = [
    "BOOT_TIME",
    "DEAD_PROCESS",
    "DEFAULT_UTMP",
    "DEFAULT_WTMP",
    "LINE_PREFIX",
    "MAX_LINES",
    "UNAVAILABLE_REASON",
    "USER_PROCESS",
    "UTMP_SIZE",
    "LineAllocator",
    "LoginRecorder",
    "Session",
    "Utmp",
    "WtmpError",
    "WtmpUnavailable",
    "iter_records",
    "make_record",
]

DEFAULT_WTMP: Final = "/var/log/wtmp"
DEFAULT_UTMP: Final = "/var/run/utmp"
# glibc's own default (_PATH_UTMP); restored after each use so that any
# other utmp reader in the process is not left pointing at our file.
_GLIBC_DEFAULT_UTMP: Final = b"/var/run/utmp"

LINE_PREFIX: Final = "sip/"
#: Highest line number; see the module docstring for why not more.
MAX_LINES: Final = 9999

# ut_type values from <utmp.h>.
BOOT_TIME: Final = 2
USER_PROCESS: Final = 7
DEAD_PROCESS: Final = 8

UTMP_SIZE: Final = 384
_UT_LINESIZE: Final = 32
_UT_NAMESIZE: Final = 32
_UT_HOSTSIZE: Final = 256
_UT_IDSIZE: Final = 4
_INT32_MAX: Final = 2**31 - 1


class Utmp(ctypes.Structure):
    """``struct utmp`` as glibc lays it out on x86_64.

    The time is two int32 fields rather than a ``struct timeval`` because
    x86_64 glibc keeps the 32-bit layout for file compatibility
    (``__WORDSIZE_TIME64_COMPAT32``); it overflows in January 2038.
    """

    _fields_ = [
        ("ut_type", ctypes.c_short),
        ("ut_pid", ctypes.c_int),
        ("ut_line", ctypes.c_char * _UT_LINESIZE),
        ("ut_id", ctypes.c_char * _UT_IDSIZE),
        ("ut_user", ctypes.c_char * _UT_NAMESIZE),
        ("ut_host", ctypes.c_char * _UT_HOSTSIZE),
        ("ut_exit", ctypes.c_short * 2),
        ("ut_session", ctypes.c_int32),
        ("ut_tv_sec", ctypes.c_int32),
        ("ut_tv_usec", ctypes.c_int32),
        # Declared as bytes, not glibc's int32[4]: it holds inet_pton output,
        # and the size and 4-byte alignment of the struct are the same.
        ("ut_addr_v6", ctypes.c_uint8 * 16),
        ("unused", ctypes.c_char * 20),
    ]

    # Typed views of the fields; ctypes gives c_char arrays back as bytes cut
    # at the first NUL, which is how every utmp reader treats them.
    @property
    def line(self) -> str:
        return _text(self.ut_line)

    @property
    def user(self) -> str:
        return _text(self.ut_user)

    @property
    def host(self) -> str:
        return _text(self.ut_host)

    @property
    def time(self) -> float:
        sec: int = self.ut_tv_sec
        usec: int = self.ut_tv_usec
        return sec + usec / 1_000_000

    @property
    def addr(self) -> bytes:
        return bytes(self.ut_addr_v6)


def _text(raw: object) -> str:
    assert isinstance(raw, bytes)
    return raw.decode("utf-8", "surrogateescape")


class WtmpError(Exception):
    """A utmp/wtmp record could not be written or read; the message names the file."""


class WtmpUnavailable(WtmpError):
    """This platform's ``struct utmp`` or C library is not the one this module knows."""


@dataclass(frozen=True, slots=True)
class Session:
    """One line held by a :class:`LoginRecorder`."""

    line: str
    user: str
    host: str
    since: float


# --------------------------------------------------------------------------
# The C library


class _Libc:
    """The handful of glibc functions used, with prototypes set once."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        ptr = ctypes.POINTER(Utmp)
        self._utmpname = lib.utmpname
        self._utmpname.argtypes = [ctypes.c_char_p]
        self._utmpname.restype = ctypes.c_int
        self._setutent = lib.setutent
        self._setutent.argtypes = []
        self._setutent.restype = None
        self._endutent = lib.endutent
        self._endutent.argtypes = []
        self._endutent.restype = None
        self._getutent = lib.getutent
        self._getutent.argtypes = []
        self._getutent.restype = ptr
        self._pututline = lib.pututline
        self._pututline.argtypes = [ptr]
        self._pututline.restype = ptr
        self._updwtmp = lib.updwtmp
        self._updwtmp.argtypes = [ctypes.c_char_p, ptr]
        self._updwtmp.restype = None

    # Each method returns errno (0 for success) rather than raising, so that
    # callers can attach the file name and the operation to the message.

    def select_utmp(self, path: bytes) -> int:
        """Make ``path`` the utmp file and rewind to its start."""
        if self._utmpname(path) != 0:
            return ctypes.get_errno() or errno.ENOMEM
        # setutent returns nothing, and its errno means nothing (see the
        # module docstring). If the open failed, the next getutent or
        # pututline tries again and says so.
        self._setutent()
        return 0

    def close_utmp(self) -> None:
        self._endutent()
        self._utmpname(_GLIBC_DEFAULT_UTMP)

    def read_utmp(self) -> tuple[Utmp | None, int]:
        # NULL is both the end of the file and a failure; glibc leaves errno
        # as it was at the end, so only a cleared errno tells them apart.
        ctypes.set_errno(0)
        p = self._getutent()
        if not p:
            return None, ctypes.get_errno()
        # Copy out of glibc's static buffer, which the next call reuses.
        return Utmp.from_buffer_copy(p.contents), 0

    def put_utmp(self, rec: Utmp) -> int:
        # pututline looks for the slot to overwrite only from the current
        # position onwards and appends a duplicate if it is behind us.
        self._setutent()
        ctypes.set_errno(0)
        if self._pututline(ctypes.byref(rec)):
            return 0
        return ctypes.get_errno() or errno.EIO

    def append_wtmp(self, path: bytes, rec: Utmp) -> int:
        """errno after ``updwtmp``: the reason if the record is missing, else meaningless."""
        ctypes.set_errno(0)
        self._updwtmp(path, ctypes.byref(rec))
        return ctypes.get_errno()


def _load_libc() -> tuple[_Libc | None, str | None]:
    if not sys.platform.startswith("linux"):
        return None, f"not Linux (platform {sys.platform})"
    machine = platform.machine()
    if machine != "x86_64" or ctypes.sizeof(ctypes.c_void_p) != 8:
        # Other glibc ABIs lay out ut_tv/ut_session differently (aarch64's
        # struct utmp is 400 bytes); a wrong guess would corrupt wtmp.
        return None, f"struct utmp layout unknown on {machine}"
    if ctypes.sizeof(Utmp) != UTMP_SIZE:
        return None, f"struct utmp is {ctypes.sizeof(Utmp)} bytes, expected {UTMP_SIZE}"
    try:
        lib = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError as e:
        return None, f"glibc not found ({e})"
    if not hasattr(lib, "gnu_get_libc_version"):
        # musl and others export utmp functions that do nothing.
        return None, "C library is not glibc"
    try:
        return _Libc(lib), None
    except AttributeError as e:
        return None, f"glibc lacks a utmp function ({e})"


_LIBC, _REASON = _load_libc()
#: ``None`` when records can be written here, else why not (for "wtmp disabled: <reason>").
UNAVAILABLE_REASON: Final[str | None] = _REASON

# See the module docstring: glibc's utmp state and SIGALRM juggling are per
# process, so one lock for all recorders, not one per instance.
_LIBC_LOCK = threading.Lock()


# --------------------------------------------------------------------------
# Pure parts: records and line numbers


def make_record(
    ut_type: int, line: str, user: str, host: str, pid: int, now: float, ut_id: bytes | None = None
) -> Utmp:
    """Build a record; ``host`` may be an IPv4/IPv6 address (bracketed or not) or a name.

    An address is written in canonical form and also as ``ut_addr_v6``
    (which ``last -i`` prints); an IPv4-mapped IPv6 address, as a dual-stack
    socket reports IPv4 peers, is recorded as the IPv4 address it is.
    Fields too long for the struct are cut, as login(1) does.
    """
    if not math.isfinite(now) or now < 0:
        raise ValueError(f"bad time {now!r}")
    sec = int(now)
    if sec > _INT32_MAX:
        raise WtmpError("time does not fit the 32-bit utmp timestamp (after January 2038)")
    line_b = _field(line, "line")
    if not line_b or len(line_b) > _UT_LINESIZE:
        raise ValueError(f"bad line {line!r}")
    host_text, addr = _address(host)

    rec = Utmp()
    rec.ut_type = ut_type
    rec.ut_pid = pid
    rec.ut_line = line_b
    rec.ut_id = line_b[-_UT_IDSIZE:] if ut_id is None else ut_id[:_UT_IDSIZE]
    rec.ut_user = _field(user, "user")[:_UT_NAMESIZE]
    rec.ut_host = _field(host_text, "host")[:_UT_HOSTSIZE]
    rec.ut_tv_sec = sec
    rec.ut_tv_usec = min(int((now - sec) * 1_000_000), 999_999)
    ctypes.memmove(rec.ut_addr_v6, addr, len(addr))
    return rec


def _field(value: str, what: str) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        # A NUL would silently end the field early in every reader.
        raise ValueError(f"NUL in {what} {value!r}")
    return raw


def _address(host: str) -> tuple[str, bytes]:
    """Canonical host text and ``ut_addr_v6`` bytes (empty when host is not an address)."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    bare, _, zone = text.partition("%")
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        return host, b""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
        zone = ""
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    canon = str(ip) + (f"%{zone}" if zone else "")
    return canon, socket.inet_pton(family, str(ip))


def _line_number(line: str) -> int | None:
    if not line.startswith(LINE_PREFIX):
        return None
    digits = line[len(LINE_PREFIX) :]
    if not digits.isascii() or not digits.isdigit() or digits.startswith("0"):
        return None
    return int(digits)


class LineAllocator:
    """Hands out ``sip/<n>``, always the lowest free n, so lines stay short and reused.

    Not thread-safe on its own; :class:`LoginRecorder` holds its lock.
    """

    def __init__(self, max_lines: int = MAX_LINES) -> None:
        if not 1 <= max_lines <= MAX_LINES:
            raise ValueError(f"max_lines must be 1..{MAX_LINES}")
        self._max = max_lines
        self._next = 1  # every n >= _next is free
        self._freed: list[int] = []  # heap of free n below _next
        self._used: set[int] = set()

    def allocate(self) -> str:
        if self._freed:
            n = heapq.heappop(self._freed)
        elif self._next <= self._max:
            n = self._next
            self._next += 1
        else:
            raise WtmpError(f"all {self._max} {LINE_PREFIX}<n> lines are in use")
        self._used.add(n)
        return f"{LINE_PREFIX}{n}"

    def release(self, line: str) -> None:
        n = _line_number(line)
        if n is None or n not in self._used:
            raise ValueError(f"{line!r} is not in use")
        self._used.remove(n)
        heapq.heappush(self._freed, n)

    def __contains__(self, line: object) -> bool:
        return isinstance(line, str) and _line_number(line) in self._used


# --------------------------------------------------------------------------
# File helpers


def iter_records(path: str | os.PathLike[str]) -> Iterator[Utmp]:
    """Every whole record of a utmp/wtmp file, oldest first (diagnostics and tests).

    Reads without locking, as ``last`` does; a trailing partial record
    (a writer died mid-write, or is writing now) is left out.
    """
    with open(path, "rb") as f:
        while chunk := f.read(UTMP_SIZE * 256):
            for off in range(0, len(chunk) - UTMP_SIZE + 1, UTMP_SIZE):
                yield Utmp.from_buffer_copy(chunk, off)
            if len(chunk) % UTMP_SIZE:
                return  # a torn last record; glibc cuts it off on the next write


def _utmp_gid() -> int | None:
    try:
        return grp.getgrnam("utmp").gr_gid
    except KeyError:
        return None


def _ensure_file(path: bytes) -> None:
    """Create a missing utmp/wtmp file the way the distribution ships it: 0664 root:utmp.

    Group write matters: utempter, screen and tmux write through the utmp group.
    """
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o664
        )
    except FileExistsError:
        return
    except OSError as e:
        raise WtmpError(f"cannot create {os.fsdecode(path)}: {e.strerror}") from e
    try:
        os.fchmod(fd, 0o664)  # the umask must not strip group write
        gid = _utmp_gid()
        if gid is not None:
            try:
                os.fchown(fd, -1, gid)
            except PermissionError:
                pass  # not root (tests): the file stays in our own group
    except OSError as e:
        raise WtmpError(f"cannot set up {os.fsdecode(path)}: {e.strerror}") from e
    finally:
        os.close(fd)


def _os_error(err: int, what: str, path: bytes) -> WtmpError:
    return WtmpError(f"{what} {os.fsdecode(path)}: {os.strerror(err)}")


# --------------------------------------------------------------------------
# The recorder


class LoginRecorder:
    """Writes a utmp/wtmp login per registration; safe to call from several threads.

    Typical use in the daemon::

        rec = LoginRecorder()          # WtmpUnavailable -> "wtmp disabled: <reason>"
        rec.close_stale(time.time())   # once, before the first login
        line = rec.login("jan", "192.0.2.10", time.time())
        ...
        rec.logout(line, time.time())

    Every method raises :class:`WtmpError` when a file cannot be written;
    the records are a log, so the caller logs that and carries on.
    """

    def __init__(
        self,
        wtmp_path: str | os.PathLike[str] = DEFAULT_WTMP,
        utmp_path: str | os.PathLike[str] = DEFAULT_UTMP,
        *,
        max_lines: int = MAX_LINES,
    ) -> None:
        if _LIBC is None:
            raise WtmpUnavailable(_REASON or "unavailable")
        self._libc = _LIBC
        self._wtmp = os.fsencode(wtmp_path)
        self._utmp = os.fsencode(utmp_path)
        self._lock = threading.Lock()
        self._lines = LineAllocator(max_lines)
        self._sessions: dict[str, Session] = {}

    @property
    def wtmp_path(self) -> str:
        return os.fsdecode(self._wtmp)

    @property
    def utmp_path(self) -> str:
        return os.fsdecode(self._utmp)

    def login(self, user: str, host: str, now: float) -> str:
        """Record ``user`` logged in from ``host`` at ``now``; returns the line for :meth:`logout`.

        Either both records are written or, on :class:`WtmpError`, nothing is
        left logged in (the utmp entry is withdrawn if wtmp failed).
        """
        if not user:
            raise ValueError("empty user")
        with self._lock:
            line = self._lines.allocate()
            try:
                rec = make_record(USER_PROCESS, line, user, host, os.getpid(), now)
                # utmp first: if it fails, wtmp (the permanent log) has no
                # login to take back.
                self._put_utmp([rec])
                try:
                    self._append_wtmp(rec)
                except WtmpError:
                    dead = make_record(DEAD_PROCESS, line, "", "", os.getpid(), now)
                    try:
                        self._put_utmp([dead])
                    except WtmpError:
                        pass  # the original error is the one worth reporting
                    raise
            except BaseException:
                self._lines.release(line)
                raise
            self._sessions[line] = Session(line, user, rec.host, now)
            return line

    def logout(self, line: str, now: float) -> None:
        """Record the end of ``line``'s session; the line is free again even if writing fails."""
        with self._lock:
            if line not in self._lines:
                raise ValueError(f"{line!r} is not in use")
            try:
                dead = make_record(DEAD_PROCESS, line, "", "", os.getpid(), now)
                errors: list[str] = []
                for write in (self._put_utmp, self._append_wtmp_list):
                    try:
                        write([dead])
                    except WtmpError as e:
                        errors.append(str(e))
                if errors:
                    raise WtmpError("; ".join(errors))
            finally:
                self._lines.release(line)
                del self._sessions[line]

    def close_stale(self, now: float) -> int:
        """Log out every ``sip/<n>`` line left logged in by an earlier run; returns how many.

        Meant for start-up: after a crash, ``who`` would otherwise list those
        sessions for ever and ``last`` never give them an end. Lines this recorder holds are
        left alone; anyone else's ``sip/`` lines are assumed to be ours from
        before (one sipd per host). The logout time is ``now``, the only time
        known, so such sessions look as long as the downtime made them.
        """
        with self._lock:
            stale = [
                r
                for r in self._read_utmp()
                if r.ut_type == USER_PROCESS
                and _line_number(r.line) is not None
                and r.line not in self._lines
            ]
            if not stale:
                return 0
            dead = [
                make_record(DEAD_PROCESS, r.line, "", "", os.getpid(), now, ut_id=bytes(r.ut_id))
                for r in stale
            ]
            # One utmp session for all of them; failures below are reported
            # after trying the rest so one bad record does not block others.
            self._put_utmp(dead)
            failed = 0
            first_error = ""
            for rec in dead:
                try:
                    self._append_wtmp(rec)
                except WtmpError as e:
                    failed += 1
                    first_error = first_error or str(e)
            if failed:
                raise WtmpError(
                    f"closed {len(dead)} stale lines in utmp but {failed} logouts missing "
                    f"from wtmp: {first_error}"
                )
            return len(dead)

    def lines_in_use(self) -> list[Session]:
        """The sessions this recorder holds, by line number."""
        with self._lock:
            return sorted(self._sessions.values(), key=lambda s: _line_number(s.line) or 0)

    # -- file I/O; called with self._lock held ---------------------------

    def _put_utmp(self, recs: list[Utmp]) -> None:
        _ensure_file(self._utmp)
        with _LIBC_LOCK:
            err = self._libc.select_utmp(self._utmp)
            try:
                if err:
                    raise _os_error(err, "cannot open", self._utmp)
                for rec in recs:
                    err = self._libc.put_utmp(rec)
                    if err:
                        raise _os_error(err, f"cannot write {rec.line} to", self._utmp)
            finally:
                self._libc.close_utmp()

    def _read_utmp(self) -> list[Utmp]:
        try:
            os.stat(self._utmp)
        except FileNotFoundError:
            return []  # nobody has logged in since boot (utmp lives on tmpfs)
        except OSError as e:
            raise _os_error(e.errno or errno.EIO, "cannot read", self._utmp) from e
        out: list[Utmp] = []
        with _LIBC_LOCK:
            err = self._libc.select_utmp(self._utmp)
            try:
                if err:
                    raise _os_error(err, "cannot open", self._utmp)
                while True:
                    rec, err = self._libc.read_utmp()
                    if rec is None:
                        if err:
                            raise _os_error(err, "cannot read", self._utmp)
                        return out
                    out.append(rec)
            finally:
                self._libc.close_utmp()

    def _append_wtmp_list(self, recs: list[Utmp]) -> None:
        for rec in recs:
            self._append_wtmp(rec)

    def _append_wtmp(self, rec: Utmp) -> None:
        _ensure_file(self._wtmp)
        record = bytes(rec)
        with _LIBC_LOCK:
            # Our own descriptor is opened and closed under the lock too:
            # closing any descriptor of a file drops every fcntl lock the
            # process holds on it, glibc's included. Held across the call so
            # that a rotation meanwhile cannot hide where the record went.
            # O_NONBLOCK: a FIFO in the way must not hang us here.
            try:
                fd = os.open(self._wtmp, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as e:
                raise _os_error(e.errno or errno.EIO, "cannot open", self._wtmp) from e
            try:
                st = os.fstat(fd)
                if stat.S_ISDIR(st.st_mode):
                    raise _os_error(errno.EISDIR, "cannot append to", self._wtmp)
                if not stat.S_ISREG(st.st_mode):
                    raise WtmpError(f"cannot append to {self.wtmp_path}: not a regular file")
                err = self._libc.append_wtmp(self._wtmp, rec)
                # glibc first cuts a torn trailing record, hence the rounding.
                if _holds(fd, st.st_size - st.st_size % UTMP_SIZE, record):
                    return
                same = _names(self._wtmp, fd)
                if not same and _tail_holds(self._wtmp, record):
                    return  # rotated, and glibc opened the new file
            except OSError as e:
                raise _os_error(e.errno or errno.EIO, "cannot check", self._wtmp) from e
            finally:
                os.close(fd)
        if same and err in (0, errno.ENOENT):
            # updwtmp sets no errno when a write comes up short, and an
            # ENOENT is then the wtmpx probe's, not the file's, which was
            # there all along. glibc's own pututline takes a short write
            # for a full disk.
            err = errno.ENOSPC
        raise _os_error(err or errno.EIO, "cannot append to", self._wtmp)


def _holds(fd: int, start: int, record: bytes) -> bool:
    """Whether ``record`` is one of the whole records of ``fd`` from offset ``start`` on."""
    off = start
    while chunk := os.pread(fd, UTMP_SIZE * 256, off):
        whole = len(chunk) - len(chunk) % UTMP_SIZE
        if any(chunk[i : i + UTMP_SIZE] == record for i in range(0, whole, UTMP_SIZE)):
            return True
        if not whole:
            return False
        off += whole
    return False


def _names(path: bytes, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


#: How far back a just-rotated wtmp is searched; the new file is near-empty.
_ROTATED_TAIL: Final = 64 * UTMP_SIZE


def _tail_holds(path: bytes, record: bytes) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        size = os.fstat(fd).st_size
        return _holds(fd, max(0, size - size % UTMP_SIZE - _ROTATED_TAIL), record)
    finally:
        os.close(fd)

"""The reentrant NSS calls through ctypes, so "no such entry" is told from a failure.

Python's :mod:`pwd` and :mod:`grp` raise ``KeyError`` both when NSS found
nothing and when it could not look (``EMFILE``, ``EIO``, a directory
server out of reach): a daemon built on them calls a valid user unknown
whenever the user database fails. ``getpwnam_r`` and friends say which it
was: a NULL result with return code 0 is "not found", any other code is
the error.

One more code means "not found": ``ENOENT``. glibc returns 0, but
nss_wrapper (used in containers and in the tests) returns ``ENOENT`` for a
name it does not know, and glibc itself passes ``ENOENT`` on when a
database file is missing altogether. The other codes getpwnam_r(3) lists
as seen for "not found" on other systems (``ESRCH``, ``EBADF``,
``EPERM``) count as failures: a refusal that should have been "unknown
user" costs a 500, while the reverse would count a valid user's
registration as a failed login.

The functions are looked up in the process's global symbol scope
(``dlopen(NULL)``), where an LD_PRELOADed NSS interposer such as
nss_wrapper comes before libc. All of them block (an NSS module may ask a
server over the network) and release the GIL while they do.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["DirectoryUnavailable", "GroupEntry", "PasswdEntry", "ShadowEntry", "all_passwd",
           "calls", "getgrnam", "getpwnam", "getpwuid", "getspnam"]

#: NSS calls made by this process, by function (``all_passwd`` counts
#: enumerations, not entries): what sipd asks its directory, in metrics.
_calls: dict[str, int] = {}
_calls_lock = threading.Lock()


def _count(call: str) -> None:
    with _calls_lock:
        _calls[call] = _calls.get(call, 0) + 1


def calls() -> dict[str, int]:
    """A copy of the counts of NSS calls so far, by function name."""
    with _calls_lock:
        return dict(_calls)


class DirectoryUnavailable(OSError):
    """The user database could not answer: an NSS error, never "no such user".

    ``errno`` is what the NSS call returned; sipd answers a request that
    needed the answer with ``500 User database unavailable``.
    """

    def __init__(self, code: int, call: str) -> None:
        super().__init__(code, os.strerror(code))
        self.call = call

    def __str__(self) -> str:
        return f"user database unavailable: {self.call}: {self.strerror}"


class PasswdEntry(NamedTuple):
    name: str
    uid: int
    gid: int
    home: str


class GroupEntry(NamedTuple):
    name: str
    gid: int
    members: tuple[str, ...]


class ShadowEntry(NamedTuple):
    """What sipd reads of a shadow entry: the password field and the expiry day."""

    name: str
    password: str
    #: Days since 1970-01-01 on which the account expires; -1 for never.
    expire: int


class _Passwd(ctypes.Structure):
    _fields_ = [
        ("pw_name", ctypes.c_char_p),
        ("pw_passwd", ctypes.c_char_p),
        ("pw_uid", ctypes.c_uint),
        ("pw_gid", ctypes.c_uint),
        ("pw_gecos", ctypes.c_char_p),
        ("pw_dir", ctypes.c_char_p),
        ("pw_shell", ctypes.c_char_p),
    ]


class _Group(ctypes.Structure):
    _fields_ = [
        ("gr_name", ctypes.c_char_p),
        ("gr_passwd", ctypes.c_char_p),
        ("gr_gid", ctypes.c_uint),
        ("gr_mem", ctypes.POINTER(ctypes.c_char_p)),
    ]


class _Spwd(ctypes.Structure):
    _fields_ = [
        ("sp_namp", ctypes.c_char_p),
        ("sp_pwdp", ctypes.c_char_p),
        ("sp_lstchg", ctypes.c_long),
        ("sp_min", ctypes.c_long),
        ("sp_max", ctypes.c_long),
        ("sp_warn", ctypes.c_long),
        ("sp_inact", ctypes.c_long),
        ("sp_expire", ctypes.c_long),
        ("sp_flag", ctypes.c_ulong),
    ]


_NOT_FOUND = frozenset({0, errno.ENOENT})
_FIRST_BUFFER = 4096
# Groups from a directory can list thousands of members; past this the
# answer is treated as a failure rather than grown without bound.
_MAX_BUFFER = 64 * 1024 * 1024

_libc = ctypes.CDLL(None, use_errno=True)


def _declare(name: str, *args: Any) -> Any:
    fn = getattr(_libc, name)
    fn.argtypes = list(args)
    fn.restype = ctypes.c_int
    return fn


_PW_RESULT = ctypes.POINTER(ctypes.POINTER(_Passwd))
_GR_RESULT = ctypes.POINTER(ctypes.POINTER(_Group))
_getpwnam_r = _declare("getpwnam_r", ctypes.c_char_p, ctypes.POINTER(_Passwd), ctypes.c_char_p,
                       ctypes.c_size_t, _PW_RESULT)
_getpwuid_r = _declare("getpwuid_r", ctypes.c_uint, ctypes.POINTER(_Passwd), ctypes.c_char_p,
                       ctypes.c_size_t, _PW_RESULT)
_getgrnam_r = _declare("getgrnam_r", ctypes.c_char_p, ctypes.POINTER(_Group), ctypes.c_char_p,
                       ctypes.c_size_t, _GR_RESULT)
_getpwent_r = _declare("getpwent_r", ctypes.POINTER(_Passwd), ctypes.c_char_p, ctypes.c_size_t,
                       _PW_RESULT)
# getspnam, not getspnam_r: nss_wrapper interposes only the former (checked
# with nm on Debian 12's libnss-wrapper 1.1.12), and tests read a shadow file
# of their own through it. Its static result is copied under a lock.
_libc.getspnam.argtypes = [ctypes.c_char_p]
_libc.getspnam.restype = ctypes.POINTER(_Spwd)
_shadow = threading.Lock()
_libc.setpwent.argtypes = []
_libc.setpwent.restype = None
_libc.endpwent.argtypes = []
_libc.endpwent.restype = None

# setpwent/getpwent_r walk one cursor per process.
_enumeration = threading.Lock()


def _text(raw: bytes | None) -> str:
    # As pwd and grp decode: undecodable bytes survive as surrogates.
    return os.fsdecode(raw or b"")


def _passwd(pw: _Passwd) -> PasswdEntry:
    return PasswdEntry(_text(pw.pw_name), pw.pw_uid, pw.pw_gid, _text(pw.pw_dir))


def _group(gr: _Group) -> GroupEntry:
    members: list[str] = []
    i = 0
    while gr.gr_mem and gr.gr_mem[i] is not None:
        members.append(_text(gr.gr_mem[i]))
        i += 1
    return GroupEntry(_text(gr.gr_name), gr.gr_gid, tuple(members))


def _call(call: str, run: Callable[[ctypes.Array[ctypes.c_char], int], tuple[int, bool]]) -> bool:
    """Run a ``*_r`` call with a buffer grown on ERANGE: True if it found an entry.

    Raises :class:`DirectoryUnavailable` for any failure.
    """
    size = _FIRST_BUFFER
    while True:
        buf = ctypes.create_string_buffer(size)
        rc, found = run(buf, size)
        if found:
            return True
        if rc == errno.ERANGE and size < _MAX_BUFFER:
            size *= 4
            continue
        if rc in _NOT_FOUND:
            return False
        raise DirectoryUnavailable(rc, call)


def _passwd_by(call: str, function: Callable[..., int], key: bytes | int) -> PasswdEntry | None:
    pw = _Passwd()
    result = ctypes.POINTER(_Passwd)()
    found: PasswdEntry | None = None

    def run(buf: ctypes.Array[ctypes.c_char], size: int) -> tuple[int, bool]:
        nonlocal found
        rc = function(key, ctypes.byref(pw), buf, size, ctypes.byref(result))
        if rc == 0 and result:
            # The strings point into the buffer: copied out before it goes.
            found = _passwd(pw)
            return rc, True
        return rc, False

    _call(call, run)
    return found


def getpwnam(name: str) -> PasswdEntry | None:
    """The passwd entry called ``name``; None if there is none."""
    _count("getpwnam")
    return _passwd_by("getpwnam_r", _getpwnam_r, os.fsencode(name))


def getpwuid(uid: int) -> PasswdEntry | None:
    """The passwd entry with this uid; None if there is none."""
    _count("getpwuid")
    return _passwd_by("getpwuid_r", _getpwuid_r, uid)


def getgrnam(name: str) -> GroupEntry | None:
    """The group called ``name`` with its listed members; None if there is none."""
    _count("getgrnam")
    raw = os.fsencode(name)
    gr = _Group()
    result = ctypes.POINTER(_Group)()
    found: GroupEntry | None = None

    def run(buf: ctypes.Array[ctypes.c_char], size: int) -> tuple[int, bool]:
        nonlocal found
        rc = _getgrnam_r(raw, ctypes.byref(gr), buf, size, ctypes.byref(result))
        if rc == 0 and result:
            found = _group(gr)
            return rc, True
        return rc, False

    _call("getgrnam_r", run)
    return found


def getspnam(name: str) -> ShadowEntry | None:
    """The shadow entry called ``name``; None if NSS has none.

    Reading ``/etc/shadow`` needs root (or the ``shadow`` group): for any
    other process glibc fails with ``EACCES``, raised here like every other
    failure, so a locked account is never taken for an open one. Users of
    sources without shadow entries (sssd, LDAP without them) get None.
    """
    _count("getspnam")
    raw = os.fsencode(name)
    with _shadow:
        ctypes.set_errno(0)
        result = _libc.getspnam(raw)
        code = ctypes.get_errno()
        if not result:
            if code in _NOT_FOUND:
                return None
            raise DirectoryUnavailable(code, "getspnam")
        sp = result.contents
        return ShadowEntry(_text(sp.sp_namp), _text(sp.sp_pwdp), int(sp.sp_expire))


def all_passwd() -> list[PasswdEntry]:
    """Every passwd entry NSS enumerates (``setpwent``/``getpwent_r``).

    The end of the list is "not found"; anything else that stops the walk
    raises :class:`DirectoryUnavailable`, so a partial list is never taken
    for the whole (as far as NSS reports it: a module that fails without
    setting errno ends the list early).
    """
    _count("all_passwd")
    out: list[PasswdEntry] = []
    pw = _Passwd()
    result = ctypes.POINTER(_Passwd)()

    def run(buf: ctypes.Array[ctypes.c_char], size: int) -> tuple[int, bool]:
        rc = _getpwent_r(ctypes.byref(pw), buf, size, ctypes.byref(result))
        if rc == 0 and result:
            out.append(_passwd(pw))
            return rc, True
        return rc, False

    with _enumeration:
        # glibc's getpwent_r says "end of the list" when setpwent could not
        # open a database; only errno tells, and stray ENOENTs from modules
        # probing for optional files are noise.
        ctypes.set_errno(0)
        _libc.setpwent()
        try:
            code = ctypes.get_errno()
            if code not in _NOT_FOUND:
                raise DirectoryUnavailable(code, "setpwent")
            while _call("getpwent_r", run):
                pass
        finally:
            _libc.endpwent()
    return out

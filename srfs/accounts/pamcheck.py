"""The PAM account check, and the cache of its answers.

The check runs ``pam_acct_mgmt`` only: SIP never sees the UNIX password
(digest credentials live in ``~/.sr/passwd``), and python-pam's
``authenticate`` always runs ``pam_authenticate`` first. So python-pam is
used for its ctypes layer (``pam.__internals``: the prototypes it declares
on libpam's functions, ``PamHandle``, ``PamConv``, the conversation type
and the constants) and this module makes the calls: one handle per call,
which is thread safe and costs about 2 ms, a conversation that refuses
every prompt, ``PAM_RHOST`` set and ``PAM_SILENT``. python-pam loads the
system's libpam; ``$SRFS_LIBPAM`` names another library (pam_wrapper in
tests), which gets the same prototypes. Every call may block (a PAM module
can talk to a directory server): the daemon makes them in worker threads.
:class:`AccountCache` keeps the answers for a while because phones
refresh registrations far more often than accounts change.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Generic, TypeVar

# python-pam's ctypes layer, not its public API (see the module docstring);
# pyproject.toml keeps python-pam below 3 for that reason.
import pam.__internals as _pam

from srfs.user import User, valid_name

__all__ = [
    "PAM_ACCT_EXPIRED",
    "PAM_AUTH_ERR",
    "PAM_NEW_AUTHTOK_REQD",
    "PAM_PERM_DENIED",
    "PAM_SUCCESS",
    "PAM_AUTHINFO_UNAVAIL",
    "PAM_SYSTEM_ERR",
    "PAM_USER_UNKNOWN",
    "AccountCache",
    "PamUnavailable",
    "account_check",
    "load_libpam",
    "pam_service_exists",
    "pam_service_path",
]

T = TypeVar("T")

#: Return codes of Linux-PAM (security/_pam_types.h) that callers may test.
PAM_SUCCESS: int = _pam.PAM_SUCCESS
PAM_SYSTEM_ERR: int = _pam.PAM_SYSTEM_ERR
PAM_PERM_DENIED: int = _pam.PAM_PERM_DENIED
PAM_AUTH_ERR: int = _pam.PAM_AUTH_ERR
PAM_USER_UNKNOWN: int = _pam.PAM_USER_UNKNOWN
PAM_NEW_AUTHTOK_REQD: int = _pam.PAM_NEW_AUTHTOK_REQD
PAM_ACCT_EXPIRED: int = _pam.PAM_ACCT_EXPIRED
#: A module could not reach its source (pam_sss, pam_ldap with the directory down).
PAM_AUTHINFO_UNAVAIL: int = _pam.PAM_AUTHINFO_UNAVAIL

_PAM_SERVICE_DIR = "/etc/pam.d"


class PamUnavailable(Exception):
    """libpam could not be loaded; no account check is possible."""


def _refuse_conversation(num_msg: int, msgs: object, resp: object, appdata: object) -> int:
    # There is nobody to answer a prompt: an account stack that asks for
    # anything must fail rather than get an empty answer it might accept.
    return int(_pam.PAM_CONV_ERR)


# Module-level so the callback outlives every handle that points at it;
# pam_start copies the structure, so threads may share it.
_CONV_CALLBACK = _pam.conv_func(_refuse_conversation)
_CONV = _pam.PamConv(_CONV_CALLBACK, None)


@dataclass(frozen=True, slots=True)
class _Libpam:
    """The libpam functions the account check calls, with python-pam's prototypes.

    Handles are python-pam's ``PamHandle`` (passed by value, by reference to
    ``pam_start``); the functions are shared by every thread, each call
    brings its own handle.
    """

    pam_start: Callable[..., int]
    pam_set_item: Callable[..., int]
    pam_acct_mgmt: Callable[..., int]
    pam_strerror: Callable[..., bytes | None]
    pam_end: Callable[..., int]


_FUNCTIONS = tuple(f.name for f in fields(_Libpam))

_lib_lock = threading.Lock()
_libs: dict[str | None, _Libpam] = {}


def _bind(name: str | None) -> _Libpam:
    try:
        # python-pam loads the system's libpam and declares the prototypes.
        reference = _pam.PamAuthenticator()
    except (OSError, AttributeError) as e:
        # No libpam: find_library found nothing, so pam_start is missing.
        raise PamUnavailable(f"cannot load libpam: {e}") from e
    lib: ctypes.CDLL | None = None
    if name is not None:
        # pam_wrapper interposes libpam's functions by LD_PRELOAD, and a
        # symbol looked up through a handle on the real libpam (as
        # python-pam's are) is the real one: the wrapper must be loaded by
        # name, and python-pam's prototypes are put on its functions.
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            raise PamUnavailable(f"cannot load {name}: {e}") from e
    functions: dict[str, Any] = {}
    for f in _FUNCTIONS:
        theirs = getattr(reference, f, None)
        if theirs is None:
            raise PamUnavailable(f"libpam has no {f}")
        if lib is None:
            functions[f] = theirs
            continue
        try:
            mine = lib[f]  # a function object of our own, not one lib caches
        except AttributeError as e:
            raise PamUnavailable(f"{name} has no {f}") from e
        mine.argtypes = theirs.argtypes
        mine.restype = theirs.restype
        functions[f] = mine
    return _Libpam(**functions)


def load_libpam() -> None:
    """Load libpam (``$SRFS_LIBPAM`` or the system's) once; raise :class:`PamUnavailable`.

    sipd calls this at start so that a missing library is a start-up error,
    not a refusal of every registration later.
    """
    _libpam()


def _libpam() -> _Libpam:
    name = os.environ.get("SRFS_LIBPAM") or None
    with _lib_lock:
        lib = _libs.get(name)
        if lib is None:
            lib = _libs[name] = _bind(name)
        return lib


def _strerror(lib: _Libpam, handle: object, rc: int) -> str:
    text = lib.pam_strerror(handle, rc)
    return text.decode("utf-8", "replace") if text else f"PAM error {rc}"


def account_check(user: User | str, service: str, rhost: str | None = None) -> tuple[int, str]:
    """Run the PAM account stack of ``service`` for ``user``: ``(rc, message)``.

    ``rc`` is :data:`PAM_SUCCESS` (0) when the account may be used, else a
    PAM error such as :data:`PAM_ACCT_EXPIRED` or :data:`PAM_USER_UNKNOWN`;
    ``message`` is libpam's text for it, fit for a log line. ``rhost`` is
    the peer's address, for modules such as pam_access. Blocking (a few
    ms, more with a remote directory); one PAM handle per call, so threads
    may call it concurrently. Raises :class:`PamUnavailable` when libpam
    cannot be loaded. Without the service file the answer is
    :data:`PAM_SYSTEM_ERR` (libpam would fall back to the ``other``
    service); sipd should still check :func:`pam_service_exists` at start.
    """
    name = user.name if isinstance(user, User) else user
    if not valid_name(name):
        return PAM_USER_UNKNOWN, "invalid user name"
    if not valid_name(service):
        raise ValueError(f"invalid PAM service name {service!r}")
    if rhost is not None and "\0" in rhost:
        raise ValueError("NUL in rhost")
    if not pam_service_exists(service):
        # Fail closed: libpam would quietly run /etc/pam.d/other instead,
        # e.g. after the file was removed while sipd was running.
        return PAM_SYSTEM_ERR, f"no PAM service file {pam_service_path(service)}"
    lib = _libpam()
    if not _warmed.is_set():
        # The first call in a process runs alone: concurrent first calls
        # under pam_wrapper gave sporadic wrong refusals (lazy set-up in the
        # PAM/NSS layers), and one serialised call costs nothing later.
        with _warm_lock:
            if not _warmed.is_set():
                try:
                    return _account_check(lib, name, service, rhost)
                finally:
                    _warmed.set()
    return _account_check(lib, name, service, rhost)


_warm_lock = threading.Lock()
_warmed = threading.Event()


def _account_check(lib: _Libpam, name: str, service: str, rhost: str | None) -> tuple[int, str]:
    handle = _pam.PamHandle()
    rc = lib.pam_start(service.encode(), name.encode(), ctypes.byref(_CONV), ctypes.byref(handle))
    if rc != PAM_SUCCESS:
        return rc, f"pam_start: {_strerror(lib, handle, rc)}"
    try:
        if rhost:
            # libpam copies the string.
            rc = lib.pam_set_item(handle, _pam.PAM_RHOST, rhost.encode())
            if rc != PAM_SUCCESS:
                return rc, f"pam_set_item: {_strerror(lib, handle, rc)}"
        # Modules must not talk to a user who is not there.
        rc = lib.pam_acct_mgmt(handle, _pam.PAM_SILENT)
        return rc, _strerror(lib, handle, rc)
    finally:
        lib.pam_end(handle, rc)


def pam_service_path(service: str) -> str:
    """Where libpam reads ``service`` from.

    Under pam_wrapper (``PAM_WRAPPER=1``) that is ``$PAM_WRAPPER_SERVICE_DIR``,
    so tests can use a service directory of their own.
    """
    if not valid_name(service):
        raise ValueError(f"invalid PAM service name {service!r}")
    directory = _PAM_SERVICE_DIR
    if os.environ.get("PAM_WRAPPER") == "1":
        directory = os.environ.get("PAM_WRAPPER_SERVICE_DIR") or directory
    return os.path.join(directory, service)


def pam_service_exists(service: str) -> bool:
    """Whether the PAM service file for ``service`` exists.

    sipd must refuse to start with PAM on when this is False: libpam would
    silently use ``/etc/pam.d/other``, which on Debian lets any user with a
    valid account in, SIP group or not.
    """
    try:
        return os.path.isfile(pam_service_path(service))
    except ValueError:
        return False



def _pam_success(result: Any) -> bool:
    return bool(result[0] == PAM_SUCCESS)


class AccountCache(Generic[T]):
    """Recent answers per user (:func:`account_check` results by default), with times passed in.

    ``now`` is any monotonic clock in seconds (``trio.current_time()`` or
    ``time.monotonic()``); the cache never reads a clock itself. Refusals
    may be kept for a shorter time than successes (``negative_ttl``) so that
    an administrator who fixes an account does not wait long; ``good``
    tells a success from a refusal (default: a PAM result of
    :data:`PAM_SUCCESS`). At most ``max_entries`` users are remembered; the
    oldest answers go first. Not thread safe: callers hold their own lock.
    """

    def __init__(
        self,
        ttl: float = 60.0,
        negative_ttl: float | None = 10.0,
        max_entries: int = 10_000,
        good: Callable[[T], bool] | None = None,
    ) -> None:
        if ttl < 0 or (negative_ttl is not None and negative_ttl < 0) or max_entries < 1:
            raise ValueError("ttl and negative_ttl must be >= 0, max_entries >= 1")
        self.ttl = ttl
        self.negative_ttl = ttl if negative_ttl is None else negative_ttl
        self.max_entries = max_entries
        self._good: Callable[[T], bool] = good or _pam_success
        # user -> (expiry, result); insertion order == age order
        self._entries: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def get(self, user: str, now: float) -> T | None:
        """The cached answer for ``user`` if still fresh at ``now``, else None."""
        entry = self._entries.get(user)
        if entry is None:
            return None
        expiry, result = entry
        if now >= expiry:
            del self._entries[user]
            return None
        return result

    def expiry(self, user: str) -> float | None:
        """When the answer kept for ``user`` expires (the ``now`` clock), if one is kept."""
        entry = self._entries.get(user)
        return None if entry is None else entry[0]

    def put(self, user: str, now: float, result: T) -> None:
        """Remember ``result`` for ``user`` as of ``now``."""
        ttl = self.ttl if self._good(result) else min(self.ttl, self.negative_ttl)
        self._entries.pop(user, None)
        if ttl <= 0:
            return
        self._entries[user] = (now + ttl, result)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, user: str | None = None) -> None:
        """Forget one user's answer (or all of them, e.g. on SIGHUP)."""
        if user is None:
            self._entries.clear()
        else:
            self._entries.pop(user, None)

    def prune(self, now: float) -> None:
        """Drop every answer that has expired at ``now`` (call from a timer)."""
        stale = [user for user, (expiry, _) in self._entries.items() if now >= expiry]
        for user in stale:
            del self._entries[user]

    def __len__(self) -> int:
        return len(self._entries)

"""Linux capabilities: the sets sipd keeps, and the calls that give up the rest.

sipd stays uid 0 (it writes into every SIP user's home, and owns utmp and
wtmp), so what limits it are its capabilities. Three sets, each the least
its stage needs:

- :data:`STARTUP`, from the first line of the daemon to READY=1: binding
  port 5060, mounting ``/run/sr`` (and removing a stale mount with
  fusermount3), creating utmp/wtmp in group utmp, and giving up the rest.
- :data:`RUNNING`, while serving: acting as a user in their home, and
  PAM's audit records. Everything else is dropped from the effective,
  permitted and bounding sets of every thread.
- :data:`UNMOUNT`, the unmount helper's (:mod:`sipd.io.unmounter`): the
  one capability ``umount2`` needs.

Capability sets belong to each thread, not to the process: ``capset`` and
``PR_CAPBSET_DROP`` change the calling thread only, and a new thread copies
its creator's sets. :func:`limit_this_thread` is therefore called in every
thread (:mod:`sipd.io.privileges` does that for the worker threads), and
:func:`threads_above` reads ``/proc/self/task`` to prove that no thread
kept more.

Through ctypes on the C library's ``capset`` and ``prctl``: no package does
more than these few calls, and none reaches every thread either.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from dataclasses import dataclass

__all__ = [
    "NAMES",
    "RUNNING",
    "STARTUP",
    "UNMOUNT",
    "CapabilityError",
    "ThreadCaps",
    "limit_this_thread",
    "mask",
    "names",
    "read_status",
    "threads_above",
]

# From <linux/capability.h>.
CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
CAP_FOWNER = 3
CAP_SETGID = 6
CAP_SETUID = 7
CAP_SETPCAP = 8
CAP_NET_BIND_SERVICE = 10
CAP_SYS_ADMIN = 21
CAP_AUDIT_WRITE = 29

#: The names systemd and capabilities(7) use, for sipd(8), the unit and messages.
NAMES: dict[int, str] = {
    CAP_CHOWN: "CAP_CHOWN",
    CAP_DAC_OVERRIDE: "CAP_DAC_OVERRIDE",
    CAP_DAC_READ_SEARCH: "CAP_DAC_READ_SEARCH",
    CAP_FOWNER: "CAP_FOWNER",
    CAP_SETGID: "CAP_SETGID",
    CAP_SETUID: "CAP_SETUID",
    CAP_SETPCAP: "CAP_SETPCAP",
    CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE",
    CAP_SYS_ADMIN: "CAP_SYS_ADMIN",
    CAP_AUDIT_WRITE: "CAP_AUDIT_WRITE",
}

#: While serving. CAP_SETUID and CAP_SETGID: every file in a home is opened
#: with the thread's filesystem uid and gid set to the user's (setfsuid,
#: setfsgid; srfs.files.home), so the files sipd creates are the user's,
#: count against the user's quota, and reach nothing the user could not.
#: With them, and without CAP_DAC_OVERRIDE, CAP_FOWNER or CAP_CHOWN, no file
#: of a user is opened with root's rights. CAP_AUDIT_WRITE: libpam records
#: each account check in the kernel's audit log, as it does for sshd; without
#: it libpam leaves the record out without a word.
RUNNING: frozenset[int] = frozenset({CAP_SETUID, CAP_SETGID, CAP_AUDIT_WRITE})

#: Until READY=1: RUNNING, and CAP_NET_BIND_SERVICE (ports below 1024 are
#: bound before serving, never later), CAP_SYS_ADMIN (the FUSE mount, the
#: removal of a stale one, and the unmount helper's one capability), CAP_CHOWN
#: (a missing utmp or wtmp is created in group utmp, which root is not a
#: member of) and CAP_SETPCAP (to take the others out of the bounding set).
STARTUP: frozenset[int] = RUNNING | {CAP_NET_BIND_SERVICE, CAP_SYS_ADMIN, CAP_CHOWN, CAP_SETPCAP}

#: The unmount helper: umount2(2) needs CAP_SYS_ADMIN and nothing else.
UNMOUNT: frozenset[int] = frozenset({CAP_SYS_ADMIN})

_PR_CAPBSET_READ = 23
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_VERSION_3 = 0x20080522


class CapabilityError(OSError):
    """A capability call failed; the message says which and why, in one line."""


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_libc: ctypes.CDLL | None = None


def _c() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        lib.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                              ctypes.c_ulong]
        lib.prctl.restype = ctypes.c_int
        lib.capget.argtypes = [ctypes.POINTER(_Header), ctypes.POINTER(_Data)]
        lib.capget.restype = ctypes.c_int
        lib.capset.argtypes = [ctypes.POINTER(_Header), ctypes.POINTER(_Data)]
        lib.capset.restype = ctypes.c_int
        _libc = lib
    return _libc


def _failed(what: str) -> CapabilityError:
    code = ctypes.get_errno() or errno.EIO
    return CapabilityError(code, f"{what}: {os.strerror(code)}")


def mask(caps: frozenset[int] | set[int]) -> int:
    """The bit mask of a set of capabilities, as ``/proc/PID/status`` shows it."""
    out = 0
    for cap in caps:
        out |= 1 << cap
    return out


def names(bits: int) -> list[str]:
    """The capabilities in a mask, by name (``cap_N`` for ones without a name here)."""
    return [NAMES.get(cap, f"cap_{cap}") for cap in range(64) if bits >> cap & 1]


def last_cap() -> int:
    """The highest capability this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40  # CAP_CHECKPOINT_RESTORE, the last one of Linux 6.x


def _get() -> tuple[int, int]:
    """This thread's (effective, permitted) masks."""
    header = _Header(_VERSION_3, 0)
    data = (_Data * 2)()
    if _c().capget(ctypes.byref(header), data) != 0:
        raise _failed("capget")
    effective = data[0].effective | data[1].effective << 32
    permitted = data[0].permitted | data[1].permitted << 32
    return effective, permitted


def limit_this_thread(keep: frozenset[int]) -> None:
    """Reduce the calling thread to ``keep`` (or less, when it holds less).

    Drops every other capability from the bounding set (when this thread
    may: CAP_SETPCAP), clears the ambient and inheritable sets, makes
    permitted and effective ``keep``, and sets no_new_privs, so that no
    program this thread runs, set-user-ID or not, gets back what was
    dropped. Raises :class:`CapabilityError`.
    """
    libc = _c()
    effective, permitted = _get()
    if effective >> CAP_SETPCAP & 1:
        for cap in range(last_cap() + 1):
            if cap in keep or libc.prctl(_PR_CAPBSET_READ, cap, 0, 0, 0) != 1:
                continue
            if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise _failed(f"cannot drop {NAMES.get(cap, f'cap_{cap}')} from the bounding set")
    # Without CAP_SETPCAP (a service manager took it) the bounding set stays
    # as it was given; no_new_privs below keeps exec from using it.
    # EINVAL: a kernel older than ambient capabilities (4.3) has none to clear.
    if (libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0
            and ctypes.get_errno() != errno.EINVAL):
        raise _failed("cannot clear the ambient capabilities")
    kept = permitted & mask(keep)
    header = _Header(_VERSION_3, 0)
    data = (_Data * 2)()
    for i in (0, 1):
        part = kept >> (32 * i) & 0xFFFFFFFF
        data[i].effective = part
        data[i].permitted = part
        data[i].inheritable = 0
    if libc.capset(ctypes.byref(header), data) != 0:
        raise _failed("cannot reduce the capabilities")
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _failed("cannot set no_new_privs")


@dataclass(frozen=True, slots=True)
class ThreadCaps:
    """One thread's capability sets, from its ``/proc/.../status``."""

    tid: int
    effective: int
    permitted: int
    bounding: int
    inheritable: int
    ambient: int
    no_new_privs: bool

    def above(self, keep: frozenset[int]) -> int:
        """What this thread holds outside ``keep``, in any set that can be used."""
        return (self.effective | self.permitted | self.inheritable | self.ambient) & ~mask(keep)


def read_status(path: str, tid: int = 0) -> ThreadCaps:
    """The capability lines of a ``/proc/PID/status`` or ``/proc/PID/task/TID/status``."""
    fields: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return ThreadCaps(
        tid=tid,
        effective=int(fields["CapEff"], 16),
        permitted=int(fields["CapPrm"], 16),
        bounding=int(fields["CapBnd"], 16),
        inheritable=int(fields["CapInh"], 16),
        ambient=int(fields.get("CapAmb", "0"), 16),
        no_new_privs=fields.get("NoNewPrivs", "0") == "1",
    )


def threads_above(keep: frozenset[int]) -> list[ThreadCaps]:
    """This process's threads that hold a capability outside ``keep``."""
    out = []
    for name in os.listdir("/proc/self/task"):
        try:
            caps = read_status(f"/proc/self/task/{name}/status", int(name))
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        if caps.above(keep):
            out.append(caps)
    return out

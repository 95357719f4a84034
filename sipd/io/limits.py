"""File descriptors: the open-file limit, and how many of them TCP may take.

Every TCP connection is a descriptor, and so is every file a worker thread
opens: a home's ``~/.sr`` files, the passwd and group files NSS reads, the
modules and files of the PAM stack. A daemon that lets connections take
the last descriptor gets ``EMFILE`` in those threads, and a user database
that cannot be read must not become a refused login. So the connection cap
is kept below the limit by a reserve, and a listener that gets ``EMFILE``
anyway waits a moment (:func:`accept`) instead of spinning on it.
"""

from __future__ import annotations

import logging
import resource

import trio

from srfs.logtext import Tally

log = logging.getLogger("sipd")

#: Descriptors never given to TCP connections: homes, NSS, PAM, the state
#: filesystem, the log, the listening sockets and the worker threads' files.
FD_RESERVE = 256


def raise_open_file_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; the soft limit in force.

    Service managers commonly start daemons with a soft limit of 1024 and a
    much higher hard limit, which is theirs to take. Logs one line either way.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == hard:
        log.info("open-file limit is %s", _show(soft))
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("open-file limit is %d: cannot raise it to %d: %s", soft, hard, exc)
        return soft
    log.info("open-file limit raised from %d to %d", soft, hard)
    return hard


def _show(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


def reserve(limit: int) -> int:
    """Descriptors kept from TCP under ``limit``: :data:`FD_RESERVE`, or half a small limit."""
    return min(FD_RESERVE, limit // 2)


def connection_cap(configured: int, limit: int) -> int:
    """The effective ``tcp_max_connections`` under an open-file ``limit``."""
    if limit == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, limit - reserve(limit)))


def tcp_connection_cap(configured: int, limit: int | None = None) -> int:
    """``tcp_max_connections``, lowered to leave descriptors for everything else.

    At start (``limit`` None) the open-file limit is raised first; a reload
    takes the limit in force.
    """
    if limit is None:
        limit = raise_open_file_limit()
    cap = connection_cap(configured, limit)
    if cap < configured:
        log.warning("tcp_max_connections lowered from %d to %d: the open-file limit is %d and "
                    "%d descriptors are kept for homes, NSS and PAM",
                    configured, cap, limit, reserve(limit))
    return cap


async def accept(listener: trio.SocketListener, failures: Tally, what: str) -> trio.SocketStream:
    """The next connection on ``listener``; a failed accept is retried after 0.1 s.

    ``EMFILE`` and its kin leave the pending connection queued: retrying at
    once would spin. ``failures`` keeps the log to a line now and then,
    naming ``what`` listens.
    """
    while True:
        try:
            return await listener.accept()
        except OSError as exc:
            failed = failures.count(trio.current_time())
            if failed is not None:
                log.warning("%s accept failed %d time(s): %s", what, failed, exc)
            await trio.sleep(0.1)

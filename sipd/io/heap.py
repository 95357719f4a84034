"""Giving the C heap's free memory back once a burst of transactions is over.

A burst (every phone of a site registering again after a power cut) keeps
thousands of transactions alive for Timer J's 32 s. When they end, what
Python's small-object allocator freed stays in its arenas for the next
allocations; what glibc's malloc freed (datagrams, message texts, large
strings, dictionary tables) stays in holes of its heap, which glibc only
gives back from the top. ``malloc_trim(0)`` returns those holes' whole pages
to the system. It is called in a worker thread (ctypes lets the GIL go),
once per burst: when the transactions alive fell to a quarter of their
peak, and the peak was at least :data:`BURST` transactions.

This does not make the daemon allocate less (that is what the transaction
records, the parser and the location store are shaped for); it stops a
burst's high-water mark from staying in the daemon's RSS for good.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

log = logging.getLogger(__name__)

#: Transactions alive at once that count as a burst worth trimming after.
BURST = 1000
#: How often the transactions alive are looked at, seconds.
PERIOD = 5.0

__all__ = ["BURST", "PERIOD", "AfterBurst", "malloc_trim", "trim_after_bursts"]


@dataclass
class AfterBurst:
    """Decides when a burst is over: sans-IO, fed the transactions alive now."""

    burst: int = BURST
    peak: int = 0

    def observe(self, alive: int) -> bool:
        """True when the heap should be trimmed now (once per burst)."""
        self.peak = max(self.peak, alive)
        if self.peak >= self.burst and alive * 4 <= self.peak:
            self.peak = 0  # the next burst must climb to ``burst`` again
            return True
        return False


def _libc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl has no malloc_trim)
    return trim


_TRIM = _libc_trim()


def malloc_trim() -> bool:
    """glibc's ``malloc_trim(0)``; True if it gave memory back, False if not
    (or if this C library has no such call)."""
    return _TRIM is not None and bool(_TRIM(0))


async def trim_after_bursts(alive: Callable[[], int], period: float = PERIOD) -> None:
    """Trim the C heap after each burst of transactions; ``alive`` counts them."""
    if _TRIM is None:
        return
    watch = AfterBurst()
    while True:
        await trio.sleep(period)
        now_alive = alive()
        if watch.observe(now_alive):
            released = await trio.to_thread.run_sync(malloc_trim)
            log.debug("transactions back to %d after a burst: malloc_trim %s", now_alive,
                      "gave memory back" if released else "found nothing to give back")

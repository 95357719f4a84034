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

Python's cycle collector is kept off the SIP path too (:func:`tune_gc`):
reference counting frees nearly all the daemon allocates, and a full
collection walks every object alive, which under a call load is tens of
thousands of calls waiting out their 32 s timers: 150-600 ms with the
event loop stopped, every few seconds. The oldest generation is collected
on a schedule instead (:func:`collect_cycles`) and once a burst is over.
The young generation is collected on a clock too (:func:`collect_young`):
Python's trigger counts allocations less deallocations, and under a
steady load, where each registration's new binding and transaction take
the place of ones that end, that count hardly grows while the objects
born since the last young collection pile up: at 700 registrations a
second a young collection came every 3-4 s and walked them all, 30-60 ms
with the event loop stopped (the p99 of the registrations around it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

log = logging.getLogger(__name__)

#: Transactions alive at once that count as a burst worth trimming after.
BURST = 1000
#: How often the transactions alive are looked at, seconds.
PERIOD = 5.0
#: How often the oldest generation is collected, seconds: how long a cycle
#: that outlived two young collections can wait to be freed.
FULL_COLLECTION_PERIOD = 300.0
#: A second with at most this many SIP messages is quiet enough for a full
#: collection: the pause (about 90 ms with 10,000 users) then delays a few.
QUIET_MESSAGES = 20
#: How long a scheduled full collection waits for a quiet second, at most.
QUIET_WAIT = 60.0
#: How often the young generation is collected while messages come, seconds:
#: the objects born in that time are what one collection walks.
YOUNG_PERIOD = 0.05
#: Collections of a generation between those of the next, as far as
#: Python's own trigger goes: never, since :func:`collect_cycles` does it.
_NEVER = 2**31 - 1

__all__ = ["BURST", "FULL_COLLECTION_PERIOD", "PERIOD", "QUIET_MESSAGES", "QUIET_WAIT",
           "YOUNG_PERIOD", "AfterBurst", "collect_cycles", "collect_young", "full_collection",
           "malloc_trim", "quiet_moment", "trim_after_bursts", "tune_gc"]


def tune_gc() -> None:
    """Keep the cycle collector off the SIP path.

    Almost nothing the daemon allocates forms cycles, so reference counting
    frees it; yet with the default thresholds the collector runs every 700
    allocations, and its full passes walk every binding, user and call
    alive. What start-up loaded is frozen (never walked again), the young
    generation is collected every 10,000 allocations (and on a clock, by
    :func:`collect_young`), and the older two only
    by :func:`collect_cycles` and after a burst, where Python's own trigger
    (a quarter more objects than at the last full pass) fired every few
    seconds under a call load.

    What outlives a young collection is nearly always what waits out SIP's
    timers, freed by reference counting when they end: the middle
    generation's own collections (every ten young ones) walked each call's
    transactions a second time to find almost nothing, 27 ms each and a
    third of the collector's time under 300 calls a second.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, _NEVER, _NEVER)


def full_collection(why: str) -> None:
    started = time.perf_counter()
    found = gc.collect()
    log.debug("full garbage collection (%s): %d unreachable object(s), %.0f ms", why, found,
              (time.perf_counter() - started) * 1000)


def _no_count() -> int:
    return 0


async def quiet_moment(heard: Callable[[], int], limit: float | None = None,
                       second: float = 1.0) -> bool:
    """Wait for a ``second`` in which at most :data:`QUIET_MESSAGES` were heard.

    ``heard`` counts the messages received so far. Gives up after
    ``limit`` seconds (None: never) and says whether it found one.
    """
    deadline = None if limit is None else trio.current_time() + limit
    while True:
        before = heard()
        await trio.sleep(second)
        if heard() - before <= QUIET_MESSAGES:
            return True
        if deadline is not None and trio.current_time() >= deadline:
            return False


async def collect_cycles(period: float = FULL_COLLECTION_PERIOD,
                         heard: Callable[[], int] = _no_count) -> None:
    """Collect the oldest generation every ``period`` seconds, at a quiet moment
    if one comes within :data:`QUIET_WAIT` (cycles must not wait for ever)."""
    while True:
        await trio.sleep(period)
        await quiet_moment(heard, QUIET_WAIT)
        full_collection(f"every {period:g} s")


async def collect_young(period: float = YOUNG_PERIOD,
                        heard: Callable[[], int] = _no_count) -> None:
    """Collect the young generation every ``period`` seconds in which a
    message was heard (see the module's text); an idle daemon does nothing."""
    last = heard()
    while True:
        await trio.sleep(period)
        now = heard()
        if now != last:
            last = now
            gc.collect(0)


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


async def trim_after_bursts(alive: Callable[[], int], period: float = PERIOD,
                            heard: Callable[[], int] = _no_count) -> None:
    """Collect and trim the C heap after each burst of transactions; ``alive`` counts
    them, ``heard`` the messages received. The collection waits for a quiet second:
    under a steady load that follows a burst it would stop the event loop while
    requests wait, and the memory can wait for the load to ease."""
    watch = AfterBurst()
    while True:
        await trio.sleep(period)
        now_alive = alive()
        if watch.observe(now_alive):
            await quiet_moment(heard)
            # The burst's transactions are gone: the cheapest full pass there is.
            full_collection("after a burst")
            if _TRIM is None:
                continue
            released = await trio.to_thread.run_sync(malloc_trim)
            log.debug("transactions back to %d after a burst: malloc_trim %s", now_alive,
                      "gave memory back" if released else "found nothing to give back")

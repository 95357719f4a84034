"""Brute-force protection that never locks out an honest user.

Failures are counted per (user, source) and per source, each with a
back-off that grows with persistence; see :class:`Throttle`. Sans-IO:
time is passed in. The authenticator (:mod:`sipd.auth.authenticator`)
asks it before looking an account up, and tells it every failure and
success.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from srfs.addresses import source_key

__all__ = ["Throttle"]

_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(slots=True)
class _BackOff:
    failures: int = 0
    """Failures since the last block ended (or since the start)."""
    blocks: int = 0
    """Blocks so far: each one lasts twice the one before."""
    until: float = 0.0
    last: float = 0.0


class Throttle:
    """Failed authentications per (user, source) and per source, with growing back-off.

    - A user name that fails ``pair_limit`` times from one source is refused
      from that source for ``first_block`` seconds; after that one more
      failure is enough, and each block lasts twice the one before, up to
      ``max_block``. An honest phone with a stale password is answered
      again after a minute; a guesser gets fewer tries each hour. The
      user's own phones that authenticated from that address and port
      lately (``good_for``) are not refused: a guesser behind the same NAT
      has a port of its own.
    - A source whose failures (any user names) reach ``source_limit`` is
      refused the same way, but only for user names that have not
      succeeded from it lately (``good_for``): the other phones behind an
      attacker's NAT address keep working, a name sprayed from it does not.
    - A user name is never refused from everywhere: only the pair and the
      source count.
    - ``trusted(host)``: sources never throttled (trusted trunks, the
      ``trusted_networks`` of sipd.conf).
    - A quiet ``forget_after`` seconds forgets a key's history.

    Sources are counted by :func:`~srfs.addresses.source_key` (an IPv6 /64
    is one source). Memory is bounded: the least recently used keys are
    forgotten first.
    """

    def __init__(
        self,
        *,
        pair_limit: int = 5,
        source_limit: int = 30,
        first_block: float = 60.0,
        max_block: float = 3600.0,
        forget_after: float = 3600.0,
        good_for: float = 86400.0,
        trusted: Callable[[str], bool] = lambda host: False,
        max_entries: int = 100_000,
    ) -> None:
        self.pair_limit = pair_limit
        self.source_limit = source_limit
        self.first_block = first_block
        self.max_block = max_block
        self.forget_after = forget_after
        self.good_for = good_for
        self.trusted = trusted
        self.max_entries = max_entries
        self._pairs: OrderedDict[tuple[str, str], _BackOff] = OrderedDict()
        self._sources: OrderedDict[str, _BackOff] = OrderedDict()
        self._good: OrderedDict[tuple[str, str], float] = OrderedDict()
        # hash((user, host, port)) -> when: one entry per phone, so an int
        # key, not a tuple (and the port's int) for each. String hashes are
        # keyed per process: nobody can aim a guesser's address at a phone's
        # entry, and a chance match is 2**-64.
        self._good_endpoints: OrderedDict[int, float] = OrderedDict()

    def blocked(self, user: str, host: str, now: float, port: int = 0) -> bool:
        """Whether a request naming ``user`` from ``host:port`` is refused unheard."""
        if self.trusted(host):
            return False
        source = source_key(host)
        pair = self._pairs.get((user, source))
        if pair is not None and now < pair.until:
            known = self._good_endpoints.get(hash((user, host, port)))
            return known is None or now - known > self.good_for
        src = self._sources.get(source)
        if src is not None and now < src.until:
            good = self._good.get((user, source))
            return good is None or now - good > self.good_for
        return False

    def failure(self, user: str, host: str, now: float) -> bool:
        """Count a failure; True if it starts a block (of the pair or the source)."""
        if self.trusted(host):
            return False
        source = source_key(host)
        started = self._count(self._pairs, (user, source), self.pair_limit, now)
        return self._count(self._sources, source, self.source_limit, now) or started

    def success(self, user: str, host: str, now: float, port: int = 0) -> None:
        source = source_key(host)
        self._pairs.pop((user, source), None)
        self._good.pop((user, source), None)
        self._good[(user, source)] = now
        self._trim(self._good)
        endpoint = hash((user, host, port))
        self._good_endpoints.pop(endpoint, None)
        self._good_endpoints[endpoint] = now
        self._trim(self._good_endpoints)

    def _count(self, table: OrderedDict[_K, _BackOff], key: _K, limit: int, now: float) -> bool:
        state = table.pop(key, None)
        if state is None or now - state.last > self.forget_after:
            state = _BackOff()
        table[key] = state
        self._trim(table)
        state.last = now
        if now < state.until:
            return False  # already refused; counted by nobody
        state.failures += 1
        if state.failures < (limit if state.blocks == 0 else 1):
            return False
        state.failures = 0
        state.until = now + min(self.first_block * 2 ** state.blocks, self.max_block)
        state.blocks += 1
        return True

    def _trim(self, table: OrderedDict[_K, _V]) -> None:
        while len(table) > self.max_entries:
            table.popitem(last=False)

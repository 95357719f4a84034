"""Bounds on what one sender can make the proxy do, sans-IO with explicit time.

:class:`Destinations` keeps the proxy from becoming a reflector: a next hop
that does not answer gets at most ``max_unanswered`` requests in flight at
once, and one whose request timed out with no answer at all is left alone
for ``rest`` seconds (until it is heard from again), so a flood of INVITEs
for a contact that never answers sends a bounded number of datagrams there,
however fast the flood comes. A next hop that answered a request within the
last ``live_for`` seconds is alive, and a busy one (a PBX trunk, a gateway
taking calls in bursts) is not held to that bound: a low cap there refused
calls to a destination that was answering them all, whenever it fell a
fraction of a second behind. Only if it has ``max_unanswered_live``
requests in flight and has not answered any for ``stalled_after`` seconds
is it held back, and even then one request goes every ``stalled_after``
seconds, so that it can show it is back; ``max_unanswered_hard`` bounds
it whatever it does. A request it never answers makes it rest only if it
answered nothing else lately: after an overload, a live next hop that
lost a few answers is not left alone for a minute.

:class:`SourceBudget` is a token bucket per source address, for requests
that cost a look-up and reveal nothing when refused alike (unauthenticated
calls to users who are not there).

Both forget the least recently used entries first, so their memory is
bounded whatever the number of addresses.
"""

from __future__ import annotations

from collections import OrderedDict

Key = tuple[str, str, int]
"""(transport, host, port) of a next hop."""


class Destinations:
    def __init__(self, max_unanswered: int = 8, rest: float = 60.0,
                 max_entries: int = 10_000, *, max_unanswered_live: int = 128,
                 live_for: float = 32.0, stalled_after: float = 1.0,
                 max_unanswered_hard: int = 1024) -> None:
        self.max_unanswered = max_unanswered
        self.max_unanswered_live = max_unanswered_live
        self.max_unanswered_hard = max_unanswered_hard
        self.live_for = live_for
        #: Past Timer A's first two retransmissions: a next hop that is up
        #: has answered something by then.
        self.stalled_after = stalled_after
        self.rest = rest
        self.max_entries = max_entries
        self._unanswered: dict[Key, int] = {}
        #: When each next hop last answered a request (its first answer).
        self._answered: OrderedDict[Key, float] = OrderedDict()
        self._resting: OrderedDict[tuple[str, int], float] = OrderedDict()
        #: When a held-back next hop last got a request anyway (see refusal()).
        self._probed: dict[Key, float] = {}
        self.refused = 0

    def refusal(self, key: Key, now: float) -> str | None:
        """Why no request may be sent to ``key`` now, or None."""
        until = self._resting.get((key[1], key[2]))
        if until is not None:
            if now < until:
                self.refused += 1
                return "Destination not answering"
            del self._resting[(key[1], key[2])]
        in_flight = self._unanswered.get(key, 0)
        if in_flight < self.max_unanswered:
            return None
        answered = self._answered.get(key)
        quiet = None if answered is None else now - answered
        if quiet is not None and quiet < self.live_for and in_flight < self.max_unanswered_hard:
            # A live next hop: held back only when it stalled with many in flight.
            if in_flight < self.max_unanswered_live or quiet < self.stalled_after:
                return None
            # Held back, a next hop that lost answers (a full socket buffer)
            # could never show it is back: one request a second still goes.
            probed = self._probed.get(key)
            if probed is None or now - probed >= self.stalled_after:
                self._probed[key] = now
                return None
        self.refused += 1
        return "Too many unanswered requests to the destination"

    def sent(self, key: Key) -> None:
        self._unanswered[key] = self._unanswered.get(key, 0) + 1

    def settled(self, key: Key, *, timed_out: bool, now: float) -> None:
        """A request counted by :meth:`sent` got its first answer, or never will.

        ``timed_out``: it never got any answer; the destination rests,
        unless it answered another request in the last ``live_for / 2``
        seconds (it lost this one: it is not gone).
        """
        left = self._unanswered.get(key, 0) - 1
        if left > 0:
            self._unanswered[key] = left
        else:
            self._unanswered.pop(key, None)
            self._probed.pop(key, None)
        answered = self._answered.get(key)
        if not timed_out:
            self._answered.pop(key, None)
            self._answered[key] = now
            while len(self._answered) > self.max_entries:
                self._answered.popitem(last=False)
        elif answered is None or now - answered >= self.live_for / 2:
            where = (key[1], key[2])
            self._resting.pop(where, None)
            self._resting[where] = now + self.rest
            while len(self._resting) > self.max_entries:
                self._resting.popitem(last=False)

    def heard_from(self, host: str, port: int) -> None:
        """A message came from ``host:port``: it is alive after all."""
        if self._resting:
            self._resting.pop((host, port), None)

    def resting(self) -> int:
        return len(self._resting)


class SourceBudget:
    """``burst`` tokens per source, refilled at ``rate`` per second."""

    def __init__(self, rate: float = 1.0, burst: float = 30.0, max_entries: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_entries = max_entries
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self.exhausted = 0

    def _level(self, source: str, now: float) -> float:
        found = self._buckets.get(source)
        if found is None:
            return self.burst
        level, stamp = found
        return min(self.burst, level + (now - stamp) * self.rate)

    def available(self, source: str, now: float) -> bool:
        """Whether ``source`` has a token left (none is taken)."""
        if self._level(source, now) >= 1.0:
            return True
        self.exhausted += 1
        return False

    def spend(self, source: str, now: float) -> None:
        level = max(0.0, self._level(source, now) - 1.0)
        self._buckets.pop(source, None)
        self._buckets[source] = (level, now)
        while len(self._buckets) > self.max_entries:
            self._buckets.popitem(last=False)

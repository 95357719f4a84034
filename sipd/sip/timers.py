"""RFC 3261 §17 transaction timers (Table 4), with RFC 6026's L and M, as data.

Every duration derives from the three base values T1, T2 and T4 through
one table, :data:`TIMER_TABLE`, so a deployment that raises T1 for a slow
link gets consistent A..M values and the table can be printed as is (in
the man page, in ``/run/sr/status``).

Timer C (the proxy's > 3 min INVITE guard, §16.6 step 11) belongs to the
proxy, not to a transaction, so it is not in the table; it is armed in the
same :class:`Deadlines` as the transactions' timers.
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Generic, Literal, Protocol, TypeVar


class Timer(enum.StrEnum):
    """The transaction timers, named as in RFC 3261 Table 4 and RFC 6026."""

    A = "A"
    B = "B"
    D = "D"
    E = "E"
    F = "F"
    G = "G"
    H = "H"
    I = "I"  # noqa: E741 - the RFC's name
    J = "J"
    K = "K"
    L = "L"
    M = "M"


#: What a duration is a multiple of: one of the base timers, or plain seconds.
Base = Literal["T1", "T2", "T4", "s"]


class Growth(enum.Enum):
    """How a retransmission timer's interval changes after it fires."""

    #: A one-shot timer: it fires once and is not re-armed.
    ONCE = "once"
    #: Timer A: the interval doubles every time, without a cap (§17.1.1.2).
    DOUBLE = "double"
    #: Timers E and G: the interval doubles up to T2 (§17.1.2.2, §17.2.1).
    DOUBLE_TO_T2 = "double-to-T2"


@dataclass(frozen=True, slots=True)
class TimerRule:
    """One row of the timer table.

    ``unreliable`` and ``reliable`` are ``(factor, base)`` pairs; a
    ``reliable`` of None means the timer is not armed at all on a reliable
    transport (retransmissions are the transport's job there). ``minimum``
    is a floor in seconds: Timer D must outlast the server's retransmissions
    of the final response (Timer H, 64*T1) and the RFC also asks for at least
    32 s, so whichever is larger applies.
    """

    timer: Timer
    unreliable: tuple[float, Base]
    reliable: tuple[float, Base] | None
    growth: Growth
    minimum: float
    section: str
    purpose: str


_ONCE, _DOUBLE, _TO_T2 = Growth.ONCE, Growth.DOUBLE, Growth.DOUBLE_TO_T2

# fmt: off
_ROWS = (
    #         timer    unreliable   reliable    growth  floor  section         purpose
    TimerRule(Timer.A, (1, "T1"),   None,       _DOUBLE, 0.0, "17.1.1.2",     "INVITE request retransmit interval"),
    TimerRule(Timer.B, (64, "T1"),  (64, "T1"), _ONCE,   0.0, "17.1.1.2",     "INVITE transaction timeout"),
    TimerRule(Timer.D, (64, "T1"),  (0, "s"),   _ONCE,  32.0, "17.1.1.2",     "wait for response retransmissions"),
    TimerRule(Timer.E, (1, "T1"),   None,       _TO_T2,  0.0, "17.1.2.2",     "non-INVITE request retransmit interval"),
    TimerRule(Timer.F, (64, "T1"),  (64, "T1"), _ONCE,   0.0, "17.1.2.2",     "non-INVITE transaction timeout"),
    TimerRule(Timer.G, (1, "T1"),   None,       _TO_T2,  0.0, "17.2.1",       "INVITE response retransmit interval"),
    TimerRule(Timer.H, (64, "T1"),  (64, "T1"), _ONCE,   0.0, "17.2.1",       "wait for ACK receipt"),
    TimerRule(Timer.I, (1, "T4"),   (0, "s"),   _ONCE,   0.0, "17.2.1",       "wait for ACK retransmissions"),
    TimerRule(Timer.J, (64, "T1"),  (0, "s"),   _ONCE,   0.0, "17.2.2",       "wait for non-INVITE request retransmissions"),
    TimerRule(Timer.K, (1, "T4"),   (0, "s"),   _ONCE,   0.0, "17.1.2.2",     "wait for non-INVITE response retransmissions"),
    TimerRule(Timer.L, (64, "T1"),  (64, "T1"), _ONCE,   0.0, "RFC 6026 7.1", "wait for accepted INVITE request retransmissions"),
    TimerRule(Timer.M, (64, "T1"),  (64, "T1"), _ONCE,   0.0, "RFC 6026 7.2", "wait for 2xx retransmissions and other forks' 2xx"),
)
# fmt: on

#: The timer table, by timer name.
TIMER_TABLE: Final[Mapping[Timer, TimerRule]] = MappingProxyType({r.timer: r for r in _ROWS})


@dataclass(frozen=True, slots=True)
class Timers:
    """The base values (seconds) from which every transaction timer derives.

    Defaults are RFC 3261's: T1 is the round-trip estimate, T2 the longest
    retransmit interval for non-INVITE requests and INVITE responses, T4 the
    longest a message stays in the network.
    """

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    def __post_init__(self) -> None:
        # A zero T1 would make every retransmission timer fire in a loop.
        if not (self.t1 > 0 and self.t2 > 0 and self.t4 > 0):
            raise ValueError("T1, T2 and T4 must be positive")
        if self.t2 < self.t1:
            raise ValueError("T2 must not be smaller than T1")

    def _value(self, amount: tuple[float, Base]) -> float:
        factor, base = amount
        unit = {"T1": self.t1, "T2": self.t2, "T4": self.t4, "s": 1.0}[base]
        return factor * unit

    def duration(self, timer: Timer, reliable: bool) -> float | None:
        """The initial duration of ``timer``; None if it is not armed.

        A duration of 0 means "at once": the transaction leaves the state
        without waiting (Timers D, I, J, K on reliable transports).
        """
        rule = TIMER_TABLE[timer]
        amount = rule.reliable if reliable else rule.unreliable
        if amount is None:
            return None
        value = self._value(amount)
        return max(value, rule.minimum) if value > 0 else 0.0

    def next_interval(self, timer: Timer, interval: float) -> float:
        """The interval after a retransmission timer that ran ``interval`` fired."""
        growth = TIMER_TABLE[timer].growth
        if growth is Growth.DOUBLE:
            return 2 * interval
        if growth is Growth.DOUBLE_TO_T2:
            return min(2 * interval, self.t2)
        return interval

    def table(self, reliable: bool) -> dict[Timer, float | None]:
        """Every timer's initial duration for one kind of transport."""
        return {t: self.duration(t, reliable) for t in TIMER_TABLE}


class Timed(Protocol):
    """An owner of timers: ``_timers`` maps each armed kind to its heap entry."""

    _timers: dict[Any, int]


Owner = TypeVar("Owner", bound=Timed)


#: An entry: (deadline, sequence number, owner, kind). Typed as a tuple of
#: any length so that mypyc keeps it one Python object, which the heap and
#: a lane share, rather than a native tuple boxed anew for each of them.
_Entry = tuple[Any, ...]


class Deadlines(Generic[Owner]):
    """The deadlines of many owners: the core's one timer mechanism.

    An entry is data, ``(deadline, seq, owner, kind)``, never a stored
    closure: whoever pops a due entry dispatches it by its owner's type and
    kind (a transaction's Timer B, a proxy branch's Timer C). The owner
    records which entry of each kind is live in its ``_timers``, so
    re-arming or disarming is one dictionary write and dead entries are
    dropped lazily: skipped when they come up, and everything is rebuilt
    without them when they are more than half of what is held.

    Most timers of one kind have one duration (Timer J is 64*T1 for every
    transaction), so they are armed in the order they fall due. Each kind
    has a lane, a queue in deadline order, that takes an entry at its end
    in constant time when it falls due no earlier than the last one; the
    heap holds the first entry of each lane and the entries that came out
    of order (a retransmission timer doubled). Under load tens of
    thousands of entries wait, and a heap of all of them cost a push and
    a pop of many comparisons each for every timer.
    """

    #: Dead entries tolerated before everything is rebuilt without them.
    COMPACT_THRESHOLD: Final = 256

    def __init__(self) -> None:
        # The first entry of each lane that has one, and the out-of-order ones.
        self._heap: list[_Entry] = []
        self._lanes: dict[Any, deque[_Entry]] = {}
        self._seq = 0
        self._stale = 0
        # Entries held, live or dead (a lane's first counts once).
        self._held = 0

    def arm(self, owner: Owner, kind: Any, deadline: float) -> None:
        """Set ``owner``'s ``kind`` timer to ``deadline`` (replacing one already set)."""
        if kind in owner._timers:
            self._stale += 1
        self._seq += 1
        seq = self._seq
        owner._timers[kind] = seq
        entry: _Entry = (deadline, seq, owner, kind)
        self._held += 1
        lane = self._lanes.get(kind)
        if lane is None:
            lane = self._lanes[kind] = deque()
        if not lane:
            lane.append(entry)
            heapq.heappush(self._heap, entry)
        elif lane[-1][0] <= deadline:
            lane.append(entry)
        else:
            heapq.heappush(self._heap, entry)

    def disarm(self, owner: Owner, kind: Any) -> None:
        if owner._timers.pop(kind, None) is not None:
            self._stale += 1
            self._maybe_compact()

    def disarm_all(self, owner: Owner) -> None:
        self._stale += len(owner._timers)
        owner._timers.clear()
        self._maybe_compact()

    def next(self) -> float | None:
        """The earliest live deadline; None if nothing is armed."""
        heap = self._heap
        while heap and not self._live(heap[0]):
            self._pop()
            self._stale -= 1
        return heap[0][0] if heap else None

    def due(self, now: float) -> Iterator[tuple[Owner, Any]]:
        """Pop every live entry due at ``now``, in deadline order.

        Lazy: an entry armed by the handler of an earlier one, due by
        ``now`` too, comes up in the same pass.
        """
        heap = self._heap
        while heap and heap[0][0] <= now:
            entry = self._pop()
            if not self._live(entry):
                self._stale -= 1
                continue
            _, _, owner, kind = entry
            del owner._timers[kind]
            yield owner, kind

    def __len__(self) -> int:
        """Live entries."""
        return self._held - self._stale

    @property
    def held(self) -> int:
        """Entries held, live or dead: what the rebuild keeps near the live ones."""
        return self._held

    def _pop(self) -> _Entry:
        """Take the earliest entry; its lane's next one takes its place in the heap."""
        heap = self._heap
        entry = heapq.heappop(heap)
        lane = self._lanes.get(entry[3])
        # Matched by sequence number, which is unique, as in the rebuild:
        # identity would hold only while entries stay one object each.
        if lane and lane[0][1] == entry[1]:
            lane.popleft()
            if lane:
                heapq.heappush(heap, lane[0])
        self._held -= 1
        return entry

    @staticmethod
    def _live(entry: _Entry) -> bool:
        _, seq, owner, kind = entry
        return bool(owner._timers.get(kind) == seq)

    def _maybe_compact(self) -> None:
        # Without this, owners that end early (a call answered in a second,
        # a transaction over TCP) would stay referenced by dead entries for
        # as long as their longest timer.
        if self._stale > self.COMPACT_THRESHOLD and 2 * self._stale > self._held:
            live = self._live
            lanes = self._lanes
            out_of_order: list[_Entry] = []
            for e in self._heap:
                lane = lanes.get(e[3])
                if (not lane or lane[0][1] != e[1]) and live(e):
                    out_of_order.append(e)
            kept: dict[Any, deque[_Entry]] = {}
            for kind, entries in lanes.items():
                alive = deque(e for e in entries if live(e))
                if alive:
                    kept[kind] = alive
            self._lanes = kept
            # In place: due() may be iterating over this list.
            self._heap[:] = out_of_order + [lane[0] for lane in kept.values()]
            heapq.heapify(self._heap)
            self._held = len(out_of_order) + sum(len(lane) for lane in kept.values())
            self._stale = 0


__all__ = ["TIMER_TABLE", "Base", "Deadlines", "Growth", "Timed", "Timer", "TimerRule", "Timers"]

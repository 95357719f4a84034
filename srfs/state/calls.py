"""The calls in progress: the one owner of that state, and its ``calls`` lines.

A call is known by its Call-ID. Each local party of it holds one
:class:`Call` (a *leg* here): the caller a leg with direction ``out``, the
callee one with direction ``in``, so both see the call in
``/run/sr/<user>/calls``. A user calling themselves (one phone to another)
has both legs. Only the SIP side (``sipd.proxy.calltrack``) changes the table;
the state filesystem and the status figures read it and hear about
changes through :meth:`CallTable.subscribe`.

Calls can vanish without a BYE (a phone loses power, a BYE is routed
around the proxy), so each leg carries ``expires``, the wall-clock time
after which :meth:`CallTable.expire` drops it unless it was refreshed.

A ``calls`` line is the Call-ID, then ``key=value`` attributes quoted as
in ``contacts``::

    a84b4c76e66710@pc33 peer=sip:bob@example.com direction=out state=answered start=2026-12-04T17:45:02Z answered=2026-12-04T17:45:09Z duration=12

``duration`` is the talk time so far in whole seconds (0 while ringing).
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from enum import Enum
from typing import Literal

from srfs.lines import format_time, quote_value

__all__ = [
    "Call",
    "CallChange",
    "CallChangeKind",
    "CallState",
    "CallStatistics",
    "CallTable",
    "Direction",
    "format_call",
]

CallState = Literal["ringing", "answered"]


Direction = Literal["in", "out"]


@dataclass(frozen=True, slots=True)
class Call:
    """One local party's view of one call."""

    call_id: str
    user: str
    """The local UNIX user this leg belongs to."""
    peer: str
    """The other party: the To URI for an outgoing call, the From URI for an incoming one."""
    direction: Direction
    state: CallState
    start: float
    """Wall-clock time of the initial INVITE."""
    answered_at: float | None = None
    from_uri: str = ""
    to_uri: str = ""
    expires: float | None = None
    """Wall-clock time after which the call counts as vanished; None: never."""

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, call_id: str, user: str, peer: str, direction: Direction,
                 state: CallState, start: float, answered_at: float | None = None,
                 from_uri: str = "", to_uri: str = "", expires: float | None = None) -> None:
        object.__setattr__(self, "call_id", call_id)
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "peer", peer)
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "state", state)
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "answered_at", answered_at)
        object.__setattr__(self, "from_uri", from_uri)
        object.__setattr__(self, "to_uri", to_uri)
        object.__setattr__(self, "expires", expires)

    @property
    def key(self) -> tuple[str, str, Direction]:
        return (self.call_id, self.user, self.direction)

    def duration(self, now: float) -> int:
        """Whole seconds of talk so far: 0 while ringing.

        The difference of the whole-second times, so that it agrees with
        the times printed next to it.
        """
        if self.answered_at is None:
            return 0
        return max(0, int(now // 1) - int(self.answered_at // 1))


class CallChangeKind(Enum):
    ADDED = "added"
    ANSWERED = "answered"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class CallChange:
    kind: CallChangeKind
    call: Call
    """The leg after the change (as it was, for a removal)."""
    expired: bool = False
    """A removal by :meth:`CallTable.expire` rather than by the SIP side."""

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, kind: CallChangeKind, call: Call, expired: bool = False) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "call", call)
        object.__setattr__(self, "expired", expired)


Subscriber = Callable[[CallChange], None]


@dataclass
class CallStatistics:
    calls: int = 0
    """Calls in progress (by Call-ID, whatever their number of local legs)."""
    ringing: int = 0
    answered: int = 0
    started: int = 0
    expired: int = 0


class CallTable:
    """Every leg of every call in progress, by Call-ID and by user.

    Not thread safe: the trio thread owns it, like the location store.
    """

    def __init__(self) -> None:
        self._by_id: dict[str, dict[tuple[str, str, Direction], Call]] = {}
        self._by_user: dict[str, dict[tuple[str, str, Direction], Call]] = {}
        # (expires, call_id); stale entries stay until popped or compacted.
        self._heap: list[tuple[float, str]] = []
        # The heap's top entry last found current, until the table changes:
        # the daemon asks for the next expiry after every message it sends.
        self._top_checked: tuple[float, str] | None = None
        self._subscribers: list[Subscriber] = []
        self._started = 0
        self._expired = 0

    # ------------------------------------------------------------ reading

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._by_id

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Call]:
        for legs in self._by_id.values():
            yield from legs.values()

    def legs(self, call_id: str) -> list[Call]:
        """The local legs of a call, caller's first."""
        found = self._by_id.get(call_id)
        if not found:
            return []
        if len(found) == 1:
            return list(found.values())
        return sorted(found.values(), key=_leg_order)

    def of_user(self, user: str) -> list[Call]:
        """The user's legs, oldest first."""
        found = self._by_user.get(user)
        if not found:
            return []
        return sorted(found.values(), key=lambda c: (c.start, c.call_id, c.direction))

    def users(self) -> list[str]:
        return sorted(self._by_user)

    def lines(self, user: str, now: float) -> list[str]:
        """The ``/run/sr/<user>/calls`` lines, without newlines."""
        return [format_call(c, now) for c in self.of_user(user)]

    def statistics(self) -> CallStatistics:
        answered = sum(
            1 for legs in self._by_id.values() if any(c.state == "answered" for c in legs.values())
        )
        return CallStatistics(
            calls=len(self._by_id),
            ringing=len(self._by_id) - answered,
            answered=answered,
            started=self._started,
            expired=self._expired,
        )

    # ----------------------------------------------------------- changing

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def _notify(self, change: CallChange) -> None:
        for sub in self._subscribers:
            sub(change)

    def _put(self, call: Call) -> None:
        self._top_checked = None
        self._by_id.setdefault(call.call_id, {})[call.key] = call
        self._by_user.setdefault(call.user, {})[call.key] = call
        if call.expires is not None:
            heapq.heappush(self._heap, (call.expires, call.call_id))
            self._maybe_compact()

    def add(self, call: Call) -> bool:
        """Add a leg; False (and no change) when that leg is already there."""
        if call.key in self._by_id.get(call.call_id, {}):
            return False
        if call.call_id not in self._by_id:
            self._started += 1
        self._put(call)
        self._notify(CallChange(CallChangeKind.ADDED, call))
        return True

    def answer(self, call_id: str, when: float, expires: float | None) -> list[Call]:
        """Mark the call's ringing legs answered at ``when``; the legs that changed."""
        changed: list[Call] = []
        for leg in self.legs(call_id):
            if leg.state != "ringing":
                continue
            # Not dataclasses.replace: it looks the fields up at every call.
            new = Call(leg.call_id, leg.user, leg.peer, leg.direction, "answered", leg.start,
                       answered_at=when, from_uri=leg.from_uri, to_uri=leg.to_uri,
                       expires=expires)
            self._put(new)
            changed.append(new)
        for new in changed:
            self._notify(CallChange(CallChangeKind.ANSWERED, new))
        return changed

    def refresh(self, call_id: str, expires: float | None) -> list[Call]:
        """Move the expiry of every leg of the call (a sign of life); the legs."""
        out: list[Call] = []
        for leg in self.legs(call_id):
            new = replace(leg, expires=expires)
            self._put(new)
            out.append(new)
        return out

    def remove(self, call_id: str) -> list[Call]:
        """Drop the call with all its legs; the legs as they were."""
        return self._remove(call_id, lambda _c: True, expired=False)

    def remove_legs(self, call_id: str, which: Callable[[Call], bool]) -> list[Call]:
        """Drop the legs of the call for which ``which`` is true (a callee forwarded away)."""
        return self._remove(call_id, which, expired=False)

    def _remove(self, call_id: str, which: Callable[[Call], bool], *, expired: bool) -> list[Call]:
        found = self._by_id.get(call_id)
        if not found:
            return []
        gone = [c for c in self.legs(call_id) if which(c)]
        if gone:
            self._top_checked = None
        for call in gone:
            del found[call.key]
            mine = self._by_user[call.user]
            del mine[call.key]
            if not mine:
                del self._by_user[call.user]
        if not found:
            del self._by_id[call_id]
        for call in gone:
            self._notify(CallChange(CallChangeKind.REMOVED, call, expired=expired))
        return gone

    def expire(self, now: float) -> list[Call]:
        """Drop every leg whose ``expires`` is at or before ``now``; those legs."""
        out: list[Call] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, call_id = heapq.heappop(heap)
            # Entries of refreshed legs are stale: the legs themselves decide.
            out.extend(self._remove(
                call_id, lambda c: c.expires is not None and c.expires <= now, expired=True
            ))
        self._expired += len({c.call_id for c in out if c.call_id not in self._by_id})
        self._maybe_compact()
        return out

    def next_expiry(self) -> float | None:
        """When :meth:`expire` next has work, None when no leg can expire."""
        heap = self._heap
        if not heap:
            return None
        top = heap[0]
        if top is self._top_checked:
            return top[0]
        # Drop stale entries at the top so that the daemon does not wake up
        # for a deadline that a refresh or an answer has already moved.
        while heap and not self._is_current(heap[0]):
            heapq.heappop(heap)
        if not heap:
            return None
        self._top_checked = heap[0]
        return heap[0][0]

    def _is_current(self, entry: tuple[float, str]) -> bool:
        when, call_id = entry
        legs = self._by_id.get(call_id)
        if legs is None:
            return False
        for c in legs.values():
            if c.expires == when:
                return True
        return False

    def _maybe_compact(self) -> None:
        # Every refresh leaves an entry behind; keep the heap near the size
        # of the table however often long calls are refreshed.
        if len(self._heap) > 64 and len(self._heap) > 4 * max(1, len(self._by_id)):
            self._heap = sorted(
                {(c.expires, c.call_id) for c in self if c.expires is not None}
            )


def _leg_order(c: Call) -> tuple[bool, str]:
    return (c.direction != "out", c.user)


# Terminal control characters and Unicode line separators in a hostile
# Call-ID would otherwise reach whoever runs `cat calls`.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _shown(value: str) -> str:
    return quote_value(_CONTROL_RE.sub("?", value))


def format_call(c: Call, now: float) -> str:
    """One ``calls`` line (see the module text)."""
    parts = [
        _shown(c.call_id),
        f"peer={_shown(c.peer)}",
        f"direction={c.direction}",
        f"state={c.state}",
        f"start={format_time(c.start)}",
    ]
    if c.answered_at is not None:
        parts.append(f"answered={format_time(c.answered_at)}")
    parts.append(f"duration={c.duration(now)}")
    return " ".join(parts)

"""The in-memory location store: the one owner of registrations.

Bindings are grouped by address of record (the AOR's user part: every
local domain is the same namespace). The registrar, the state filesystem
and start-up reload change them only through :class:`LocationStore`; the
``~/.sr/usrloc`` persister, the wtmp writer and the filesystem's cache
invalidation hear about every change through :meth:`LocationStore.subscribe`
and are never called by the registrar directly.

Time is passed in (wall-clock seconds): expiry is absolute so that it
survives a restart.

Beside each binding the store keeps its :class:`Reachability`: whether the
phone answered sipd's last keep-alive probe, and how fast. It is measured
(by the keep-alive, its one writer), never registered, so it is not part of
a :class:`Binding`, changes no binding and wakes none of the change
subscribers; it lives and goes with its binding, and is not persisted.
"""

from __future__ import annotations

import heapq
import ipaddress
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from enum import Enum
from urllib.parse import unquote


@dataclass(frozen=True, slots=True)
class Binding:
    """One contact registered for an AOR.

    ``expires`` is the absolute wall-clock expiry, or None for a static
    binding (a trunk's fixed contact): static is a flag of its own, never a
    magic ``expires=0``.
    """

    aor: str
    user: str
    contact: str
    expires: float | None
    q: float = 1.0
    callid: str = ""
    cseq: int = 0
    instance: str | None = None
    reg_id: int | None = None
    path: tuple[str, ...] = ()
    received: str | None = None
    """Where the REGISTER came from, ``transport:host:port``: the way back
    to a phone behind NAT."""
    ua: str | None = None
    registered: float = 0.0
    """When the binding was first created (wall clock)."""
    _key: str = field(init=False, repr=False, compare=False)

    # Written out: mypyc compiles this one (see sipd.io.compiled), and a
    # registrar makes one per REGISTER.
    def __init__(self, aor: str, user: str, contact: str, expires: float | None,
                 q: float = 1.0, callid: str = "", cseq: int = 0,
                 instance: str | None = None, reg_id: int | None = None,
                 path: tuple[str, ...] = (), received: str | None = None,
                 ua: str | None = None, registered: float = 0.0) -> None:
        # A registrar holds one of these per phone: share the strings that
        # repeat across bindings (the AOR and user of a line, a phone
        # model's User-Agent), and work out the identity once, not on each
        # of the dozens of look-ups a REGISTER makes.
        object.__setattr__(self, "aor", sys.intern(aor))
        object.__setattr__(self, "user", sys.intern(user))
        object.__setattr__(self, "contact", contact)
        object.__setattr__(self, "expires", expires)
        object.__setattr__(self, "q", q)
        object.__setattr__(self, "callid", callid)
        object.__setattr__(self, "cseq", cseq)
        object.__setattr__(self, "instance", instance)
        object.__setattr__(self, "reg_id", reg_id)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "received", received)
        object.__setattr__(self, "ua", None if ua is None else sys.intern(ua))
        object.__setattr__(self, "registered", registered)
        if instance is not None:
            key = f"instance:{instance}:{reg_id if reg_id is not None else ''}"
        else:
            key = contact_key(contact)
            if not key.startswith(("sip:", "sips:")):
                # Other schemes must never look like an instance key.
                key = "uri:" + key
        object.__setattr__(self, "_key", key)

    def since(self, registered: float) -> Binding:
        """This binding, first registered at ``registered``: what a refresh
        keeps of the binding it refreshes (without the field-by-field
        walk of :func:`dataclasses.replace`)."""
        if registered == self.registered:
            return self
        return Binding(self.aor, self.user, self.contact, self.expires, self.q, self.callid,
                       self.cseq, self.instance, self.reg_id, self.path, self.received,
                       self.ua, registered)

    @property
    def contact_identity(self) -> str:
        """:func:`contact_key` of the contact, taken from :attr:`key` where that is
        it (no instance): an index by contact needs it on every refresh."""
        if self.instance is None:
            key = self._key
            return key[4:] if key.startswith("uri:") else key
        return contact_key(self.contact)

    @property
    def static(self) -> bool:
        return self.expires is None

    @property
    def key(self) -> str:
        """What makes two registrations the same binding.

        RFC 5626 §6: the instance ID and reg-id; RFC 5627: the instance ID
        alone; otherwise the contact URI compared as RFC 3261 §10.3 step 6
        asks (see :func:`contact_key`).
        """
        return self._key

    def remaining(self, now: float) -> int | None:
        """Whole seconds left (rounded up), None for a static binding."""
        if self.expires is None:
            return None
        left = self.expires - now
        return max(0, int(left) + (1 if left > int(left) else 0))


def contact_key(uri: str) -> str:
    """A normalised form of a contact URI for binding identity.

    Scheme and host are case-insensitive, an IPv6 reference is compared as
    an address, escapes in the user part are decoded (as octets: distinct
    escapes never collapse into one), the default port is spelled out, and
    only the URI parameters that RFC 3261 §19.1.4 makes significant
    (transport, user, maddr, ttl, method) count, in a fixed order.
    """
    scheme, _, rest = uri.partition(":")
    scheme = scheme.lower()
    if scheme not in ("sip", "sips"):
        return uri.strip()
    rest = rest.split("?", 1)[0]
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        userinfo, hostpart = "", rest
    hostport, *params = hostpart.split(";")
    significant = []
    for p in params:
        name, _, value = p.partition("=")
        if name.lower() in ("transport", "user", "maddr", "ttl", "method"):
            significant.append(f"{name.lower()}={value.lower()}")
    host, port = _split_hostport(hostport.lower())
    if not port:
        port = "5061" if scheme == "sips" else "5060"
    elif port.isascii() and port.isdigit():
        port = str(int(port))
    if host.startswith("[") and host.endswith("]"):
        try:
            host = f"[{ipaddress.IPv6Address(host[1:-1]).compressed}]"
        except ValueError:
            pass
    user = unquote(userinfo, errors="surrogateescape") if "%" in userinfo else userinfo
    key = f"{scheme}:{user}@{host}:{port};{';'.join(sorted(significant))}"
    # The same object when nothing changed: a binding then stores one string.
    return uri if key == uri else key


def _split_hostport(hostport: str) -> tuple[str, str]:
    """``host[:port]`` split; the host of an IPv6 reference keeps its brackets."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end >= 0 and hostport[end + 1 : end + 2] == ":":
            return hostport[: end + 1], hostport[end + 2 :]
        return hostport, ""
    host, colon, port = hostport.partition(":")
    return (host, port) if colon else (hostport, "")


class Reach(Enum):
    """What the last keep-alive probe of a binding found."""

    UNKNOWN = "unknown"
    """Not probed (yet), or probing is off for it."""
    YES = "yes"
    """The last probe was answered (any response counts)."""
    NO = "no"
    """The last probe went unanswered."""


@dataclass(frozen=True, slots=True)
class Reachability:
    """A binding's reachability and the round-trip time of its last answer.

    ``rtt`` (seconds) stays from the last answer while the binding is
    unreachable: it is what was last measured, not a guess.
    """

    state: Reach = Reach.UNKNOWN
    rtt: float | None = None


#: A binding nobody probed.
UNPROBED = Reachability()


class ChangeKind(Enum):
    ADDED = "added"
    UPDATED = "updated"
    REMOVED = "removed"


class RemoveReason(Enum):
    EXPIRED = "expired"
    UNREGISTERED = "unregistered"
    REPLACED = "replaced"
    """Pushed out by ``max_contacts`` with ``overflow = replace-oldest``."""
    ADMIN = "admin"
    """Removed through the state filesystem or by the administrator."""
    UNREACHABLE = "unreachable"
    """Dropped after going unanswered for ``keepalive_drop_after`` seconds."""


@dataclass(frozen=True, slots=True)
class Change:
    kind: ChangeKind
    binding: Binding
    """The binding after the change (before it, for a removal)."""
    previous: Binding | None = None
    reason: RemoveReason | None = None

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, kind: ChangeKind, binding: Binding, previous: Binding | None = None,
                 reason: RemoveReason | None = None) -> None:
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "binding", binding)
        object.__setattr__(self, "previous", previous)
        object.__setattr__(self, "reason", reason)


Subscriber = Callable[[Change], None]
#: Told of a binding whose :class:`Reachability` changed.
ReachSubscriber = Callable[[Binding], None]


@dataclass(frozen=True, slots=True)
class Remove:
    """A planned removal of the binding ``key`` of ``aor``."""

    aor: str
    key: str
    reason: RemoveReason


Op = Binding | Remove
"""One planned change: a binding to add or refresh, or a removal.

A REGISTER or a write to ``/run/sr`` is planned as a list of these first,
made durable, and only then applied (:meth:`LocationStore.apply`), so a
change that cannot reach the disk never reaches memory either.
"""


@dataclass
class LocationStatistics:
    aors: int = 0
    bindings: int = 0
    static_bindings: int = 0
    added: int = 0
    removed: int = 0
    expired: int = 0


class LocationStore:
    """Every binding of every AOR, with expiry and change subscriptions."""

    def __init__(self) -> None:
        self._aors: dict[str, dict[str, Binding]] = {}
        # A user's AORs: most users hold one, kept as the bare string (a set
        # per user would cost more than the binding itself).
        self._by_user: dict[str, str | set[str]] = {}
        self._heap: list[tuple[float, str, str]] = []
        self._subscribers: list[Subscriber] = []
        #: Only bindings that were probed have an entry: most have none.
        self._reach: dict[tuple[str, str], Reachability] = {}
        self._reach_subscribers: list[ReachSubscriber] = []
        self._stats = LocationStatistics()
        self._count = 0
        # Kept as bindings come and go: ``status`` must not walk every
        # binding (100,000 of them held the event loop for milliseconds).
        self._static = 0

    # ------------------------------------------------------------ reading

    def lookup(self, aor: str) -> list[Binding]:
        """The AOR's bindings, highest q first, then most recently registered."""
        found = self._aors.get(aor)
        if not found:
            return []
        return sorted(found.values(), key=lambda b: (-b.q, -b.registered))

    def get(self, aor: str, key: str) -> Binding | None:
        found = self._aors.get(aor)
        return found.get(key) if found else None

    def aors_of_user(self, user: str) -> list[str]:
        found = self._by_user.get(user)
        if found is None:
            return []
        return [found] if isinstance(found, str) else sorted(found)

    def bindings_of_user(self, user: str) -> list[Binding]:
        """The user's own bindings, by AOR, each AOR in :meth:`lookup` order."""
        out: list[Binding] = []
        for aor in self.aors_of_user(user):
            out.extend(b for b in self.lookup(aor) if b.user == user)
        return out

    def users(self) -> list[str]:
        return sorted(self._by_user)

    def user_count(self) -> int:
        """Users with at least one binding (``len(users())`` without the sort)."""
        return len(self._by_user)

    def __iter__(self) -> Iterator[Binding]:
        for bindings in self._aors.values():
            yield from bindings.values()

    def reachability(self, aor: str, key: str) -> Reachability:
        """What the keep-alive last found for the binding ``key`` of ``aor``."""
        return self._reach.get((aor, key), UNPROBED)

    def unreachable(self) -> int:
        """Bindings whose last probe went unanswered."""
        return sum(1 for r in self._reach.values() if r.state is Reach.NO)

    def statistics(self) -> LocationStatistics:
        s = self._stats
        s.aors = len(self._aors)
        s.bindings = self._count
        s.static_bindings = self._static
        return replace(s)

    # ----------------------------------------------------------- changing

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def subscribe_reachability(self, subscriber: ReachSubscriber) -> None:
        self._reach_subscribers.append(subscriber)

    def set_reachability(self, aor: str, key: str, reach: Reachability) -> None:
        """Record what a probe found; ignored for a binding that is gone."""
        binding = self.get(aor, key)
        if binding is None:
            return
        ident = (aor, key)
        if self._reach.get(ident, UNPROBED) == reach:
            return
        if reach == UNPROBED:
            self._reach.pop(ident, None)
        else:
            self._reach[ident] = reach
        for sub in self._reach_subscribers:
            sub(binding)

    def _notify(self, change: Change) -> None:
        for sub in self._subscribers:
            sub(change)

    def upsert(self, binding: Binding) -> Change:
        """Add a binding, or replace the one with the same key."""
        aor = self._aors.setdefault(binding.aor, {})
        held = self._by_user.get(binding.user)
        if held is None:
            self._by_user[binding.user] = binding.aor
        elif isinstance(held, str):
            if held != binding.aor:
                self._by_user[binding.user] = {held, binding.aor}
        else:
            held.add(binding.aor)
        key = binding.key
        old = aor.get(key)
        if old is not None and old.registered:
            binding = binding.since(old.registered)
        aor[key] = binding
        if old is not None and old.user != binding.user:
            # The AOR changed owner (an alias handed over): the old owner's
            # index keeps it only while they have another binding there.
            self._unindex(old.user, binding.aor)
        if binding.expires is not None:
            heapq.heappush(self._heap, (binding.expires, binding.aor, key))
            # Every refresh leaves a stale entry behind; without this a
            # binding refreshed often grows the heap until the next expire().
            self._maybe_compact()
        self._static += binding.static
        if old is None:
            self._count += 1
            self._stats.added += 1
            change = Change(ChangeKind.ADDED, binding)
        else:
            self._static -= old.static
            change = Change(ChangeKind.UPDATED, binding, previous=old)
        self._notify(change)
        return change

    def remove(self, aor: str, key: str, reason: RemoveReason) -> Change | None:
        found = self._aors.get(aor)
        if not found or key not in found:
            return None
        binding = found.pop(key)
        self._reach.pop((aor, key), None)
        self._count -= 1
        self._static -= binding.static
        if not found:
            del self._aors[aor]
        self._unindex(binding.user, aor)
        self._stats.removed += 1
        if reason is RemoveReason.EXPIRED:
            self._stats.expired += 1
        change = Change(ChangeKind.REMOVED, binding, reason=reason)
        self._notify(change)
        return change

    def _unindex(self, user: str, aor: str) -> None:
        """Drop ``aor`` from ``user``'s index unless they still have a binding there."""
        found = self._aors.get(aor)
        if found and any(b.user == user for b in found.values()):
            return
        held = self._by_user.get(user)
        if isinstance(held, str):
            if held == aor:
                del self._by_user[user]
        elif held is not None:
            held.discard(aor)
            if len(held) == 1:
                self._by_user[user] = next(iter(held))

    def apply(self, ops: Iterable[Op]) -> list[Change]:
        """Make planned changes; removals of bindings that are gone are skipped."""
        changes: list[Change] = []
        for op in ops:
            if isinstance(op, Remove):
                change = self.remove(op.aor, op.key, op.reason)
                if change is not None:
                    changes.append(change)
            else:
                changes.append(self.upsert(op))
        return changes

    def preview(self, user: str, ops: Iterable[Op]) -> list[Binding]:
        """What :meth:`bindings_of_user` would return after :meth:`apply` of ``ops``.

        Pure: the store is not changed. Like :meth:`upsert`, a refreshed
        binding keeps the time it was first registered.
        """
        held = {(b.aor, b.key): b for b in self.bindings_of_user(user)}
        for op in ops:
            if isinstance(op, Remove):
                held.pop((op.aor, op.key), None)
                continue
            ident = (op.aor, op.key)
            old = held.get(ident) or self.get(op.aor, op.key)
            if old is not None and old.registered:
                op = op.since(old.registered)
            if op.user == user:
                held[ident] = op
            else:
                held.pop(ident, None)
        return sorted(held.values(), key=lambda b: (b.aor, -b.q, -b.registered))

    def remove_aor(self, aor: str, reason: RemoveReason) -> list[Change]:
        keys = list(self._aors.get(aor, {}))
        return [c for k in keys if (c := self.remove(aor, k, reason)) is not None]

    def expire(self, now: float) -> list[Change]:
        """Remove every binding whose expiry is at or before ``now``."""
        out: list[Change] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, aor, key = heapq.heappop(heap)
            current = self.get(aor, key)
            # The heap keeps stale entries of refreshed bindings; only an
            # entry that still matches the binding's expiry counts.
            if current is not None and current.expires is not None and current.expires <= now:
                change = self.remove(aor, key, RemoveReason.EXPIRED)
                if change is not None:
                    out.append(change)
        self._maybe_compact()
        return out

    def _maybe_compact(self) -> None:
        if len(self._heap) > 64 and len(self._heap) > 4 * self._count:
            self._compact()

    def _compact(self) -> None:
        self._heap = [
            (b.expires, b.aor, b.key) for b in self if b.expires is not None
        ]
        heapq.heapify(self._heap)

    def next_expiry(self) -> float | None:
        """When :meth:`expire` next has work (may be early: stale entries)."""
        return self._heap[0][0] if self._heap else None

"""Which connections (TCP, TLS, ws, wss) carry a registration: the flows bindings were made over.

A binding keeps, in ``received``, the transport address its REGISTER came
from (``tcp:192.0.2.7:49152``). A connection that some binding names is a
phone's way in (RFC 5626 calls it a flow) and lives on its keep-alives; one
that no binding names is only a connection, and the transport closes it
when it stops sending SIP. The counts follow the location store's changes,
so the question costs one dictionary look-up however many bindings there are.
"""

from __future__ import annotations

from sipd.core.peer import Peer
from srfs.state.location import Binding, Change, ChangeKind, LocationStore

__all__ = ["RegisteredFlows"]


class RegisteredFlows:
    """Bindings per connection-oriented ``received`` address, kept current."""

    def __init__(self, store: LocationStore) -> None:
        self._count: dict[str, int] = {}
        for binding in store:
            self._add(binding)
        store.subscribe(self._changed)

    def carries_binding(self, peer: Peer) -> bool:
        """Whether a binding was registered over ``peer``'s connection and is still held."""
        return peer.reliable and str(peer) in self._count

    def __len__(self) -> int:
        return len(self._count)

    def _changed(self, change: Change) -> None:
        if change.previous is not None:
            self._remove(change.previous)
        if change.kind is ChangeKind.REMOVED:
            self._remove(change.binding)
        else:
            self._add(change.binding)

    @staticmethod
    def _key(binding: Binding) -> str | None:
        received = binding.received
        if not received or received.startswith("udp:"):
            return None
        return received

    def _add(self, binding: Binding) -> None:
        key = self._key(binding)
        if key is not None:
            self._count[key] = self._count.get(key, 0) + 1

    def _remove(self, binding: Binding) -> None:
        key = self._key(binding)
        if key is None:
            return
        left = self._count.get(key, 0) - 1
        if left > 0:
            self._count[key] = left
        else:
            self._count.pop(key, None)

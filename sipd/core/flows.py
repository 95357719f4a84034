"""The flows bindings were made over: connections (TCP, TLS, ws, wss), and our UDP socket.

A binding keeps, in ``received``, the transport address its REGISTER came
from (``tcp:192.0.2.7:49152``). A connection that some binding names is a
phone's way in (RFC 5626 calls it a flow) and lives on its keep-alives; one
that no binding names is only a connection, and the transport closes it
when it stops sending SIP. The counts follow the location store's changes,
so the question costs one dictionary look-up however many bindings there are.

Over UDP a flow is the phone's address and the socket of ours it sent to:
a NAT passes back only what comes from the address the phone sent to, so
requests for the binding leave from that socket (:meth:`udp_socket`) when
sipd listens on more than one. ``received`` names the phone's side only;
the socket is learnt from the REGISTER (:meth:`heard`) and kept while a
binding names that address, in memory only (after a restart, until the
phone's next REGISTER, any socket of the address family is used).
"""

from __future__ import annotations

from typing import ClassVar

from sipd.core.peer import Peer
from srfs.state.location import Binding, Change, ChangeKind, LocationStore

__all__ = ["RegisteredFlows"]


class RegisteredFlows:
    """Bindings per connection-oriented ``received`` address, kept current."""

    #: REGISTER sources remembered until their bindings are applied.
    RECENT: ClassVar[int] = 1024

    def __init__(self, store: LocationStore) -> None:
        self._count: dict[str, int] = {}
        #: UDP ``received`` addresses with bindings: how many, and our socket.
        self._udp_count: dict[str, int] = {}
        self._udp_socket: dict[str, int] = {}
        #: The socket each recent REGISTER came in on, by its source.
        self._recent: dict[str, int] = {}
        for binding in store:
            self._add(binding)
        store.subscribe(self._changed)

    def heard(self, peer: Peer) -> None:
        """A REGISTER came from ``peer``: its socket, for the bindings it makes."""
        if peer.reliable or not peer.conn:
            return
        key = str(peer)
        self._recent.pop(key, None)
        self._recent[key] = peer.conn
        if len(self._recent) > self.RECENT:
            del self._recent[next(iter(self._recent))]
        if key in self._udp_count:
            # A refresh from the same address: the same flow, perhaps a new socket.
            self._udp_socket[key] = peer.conn

    def udp_socket(self, received: str) -> int:
        """Our socket for the UDP flow ``received`` (``udp:host:port``); 0 when unknown."""
        return self._udp_socket.get(received, 0)

    def carries_binding(self, peer: Peer) -> bool:
        """Whether a binding was registered over ``peer``'s connection and is still held."""
        return peer.reliable and str(peer) in self._count

    def __len__(self) -> int:
        return len(self._count)

    def _changed(self, change: Change) -> None:
        previous = change.previous
        if previous is not None:
            if previous.received == change.binding.received:
                return  # a refresh over the same flow
            self._remove(previous)
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
            return
        received = binding.received
        if received and received.startswith("udp:"):
            self._udp_count[received] = self._udp_count.get(received, 0) + 1
            conn = self._recent.get(received)
            if conn is not None:
                self._udp_socket[received] = conn

    def _remove(self, binding: Binding) -> None:
        key = self._key(binding)
        if key is None:
            received = binding.received
            if received and received.startswith("udp:"):
                left = self._udp_count.get(received, 0) - 1
                if left > 0:
                    self._udp_count[received] = left
                else:
                    self._udp_count.pop(received, None)
                    self._udp_socket.pop(received, None)
            return
        left = self._count.get(key, 0) - 1
        if left > 0:
            self._count[key] = left
        else:
            self._count.pop(key, None)

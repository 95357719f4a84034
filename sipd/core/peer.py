"""Where a message came from and where bytes go: the transport-neutral address.

The sans-IO core names remote ends with :class:`Peer` values; the trio
transports map them back to sockets and connections.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Peer:
    """A remote transport address as seen through one local socket.

    ``conn`` identifies the local end: the UDP listener a datagram came in
    on (replies leave from the same socket, which NATs and ``sipp`` expect),
    or the TCP connection a request came on (RFC 3261 §18.2.2: responses go
    back on it).

    ``transport`` is ``udp`` or one of the connection kinds ``tcp``,
    ``tls``, ``ws`` and ``wss``. ``name`` is the host name a next hop was
    resolved from: a TLS connection sipd opens checks the server's
    certificate against it. It is not part of the address (equality and
    hashing leave it out).
    """

    transport: str
    host: str
    port: int
    conn: int
    name: str = field(default="", compare=False)

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, transport: str, host: str, port: int, conn: int, name: str = "") -> None:
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "conn", conn)
        object.__setattr__(self, "name", name)

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Outgoing:
    """Bytes for the transport to send to ``peer``."""

    data: bytes
    peer: Peer

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, data: bytes, peer: Peer) -> None:
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "peer", peer)

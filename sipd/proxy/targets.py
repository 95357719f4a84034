"""Where a request goes next: addresses, ports and transports, sans-IO.

A :class:`Target` is one destination of a proxied request: the
Request-URI it gets, the Route set pushed in front, and the next hop as a
:class:`~sipd.core.peer.Peer` (conn 0: the transport picks or opens the
socket), or the host name still to resolve.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from sipd.core.peer import Peer
from sipd.sip.errors import SipError
from sipd.sip.headers import parse_address
from sipd.sip.uri import SipURI, parse_uri
from srfs.addresses import parse_host
from srfs.state.location import Binding


@dataclass(frozen=True, slots=True)
class LocalAddresses:
    """The address this proxy puts in Via and Record-Route, per transport and family.

    Keys are ``(transport, 4 or 6)``; values ``(host, port)`` as reachable by
    peers (a wildcard listener is represented by one of the host's addresses).
    ``by_socket`` names the address of each UDP socket by its ``conn``: a
    request sent from a given socket says that socket's address, so the
    answers come back where a NAT lets them through (filled by the daemon
    once the sockets are served; empty, every socket of a kind is its first).
    """

    by_kind: dict[tuple[str, int], tuple[str, int]]
    by_socket: dict[int, tuple[str, int]] = field(default_factory=dict)

    def for_peer(self, peer: Peer) -> tuple[str, int]:
        if peer.conn and peer.transport == "udp":
            own = self.by_socket.get(peer.conn)
            if own is not None:
                return own
        family = 6 if ":" in peer.host else 4
        found = self.by_kind.get((peer.transport, family))
        if found is None:
            found = next((v for (t, f), v in self.by_kind.items() if f == family),
                         next(iter(self.by_kind.values())))
        return found

    def is_mine(self, host: str, port: int | None, default_port: int = 5060) -> bool:
        h = host.strip("[]").lower()
        p = port if port is not None else default_port
        return any(h == mh.lower() and p == mp for mh, mp in self.by_kind.values())


@dataclass(frozen=True, slots=True)
class Target:
    """One place to send a request: Request-URI, Route set to push, next hop."""

    uri: str
    dest: Peer | None
    routes: tuple[str, ...] = ()
    host: str = ""
    """The next hop's host when ``dest`` still needs resolving."""
    port: int = 5060
    transport: str = "udp"


def resolve(host: str, port: int) -> str:
    """Blocking: one address for ``host`` (IPv4 preferred)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    infos.sort(key=lambda i: 0 if i[0] == socket.AF_INET else 1)
    return str(infos[0][4][0])


def _address_text(host: str) -> str | None:
    """``host`` as the address the socket layer will use, or None for a name."""
    addr = parse_host(host)
    return None if addr is None else str(addr)


def uri_target(uri: SipURI, routes: tuple[str, ...] = (), uri_text: str | None = None) -> Target:
    """Where a request for ``uri`` goes: its maddr or host, port and transport."""
    if uri.secure:
        raise SipError(503, "No TLS transport")
    transport = (uri.transport or "udp").lower()
    if transport not in ("udp", "tcp"):
        raise SipError(502, f"Unsupported transport {transport}")
    host = (uri.param("maddr") or uri.host).strip("[]")
    port = uri.port or 5060
    address = _address_text(host)
    dest = Peer(transport, address, port, 0) if address is not None else None
    return Target(uri_text or str(uri), dest, routes, address or host, port, transport)


def binding_target(b: Binding, tcp_peer: Callable[[str, int], Peer | None] | None = None,
                   udp_socket: Callable[[str], int] | None = None) -> Target:
    """A request for a binding: to its Path, else back where its REGISTER came from.

    Over UDP the REGISTER's source is the way through a NAT, from the socket
    the REGISTER came in on (``udp_socket`` knows it; else 0, any socket).
    Over TCP it is the connection the phone opened, usable only while it
    lives (``tcp_peer`` finds it); without it the contact itself is tried.
    """
    if b.path:
        first = parse_address(b.path[0], "Path").uri
        if not isinstance(first, SipURI):
            raise SipError(500, "Bad Path in binding")
        hop = uri_target(first)
        return Target(b.contact, hop.dest, b.path, hop.host, hop.port, hop.transport)
    if b.received:
        transport, _, rest = b.received.partition(":")
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        live = tcp_peer(host, int(port)) if tcp_peer and transport == "tcp" and port.isdigit() else None
        if live is not None:
            return Target(b.contact, live, (), host, live.port, "tcp")
        address = _address_text(host)
        if transport == "udp" and port.isdigit() and address is not None:
            conn = udp_socket(b.received) if udp_socket is not None else 0
            return Target(b.contact, Peer(transport, address, int(port), conn), (), address,
                          int(port), transport)
    contact = parse_uri(b.contact)
    if not isinstance(contact, SipURI):
        raise SipError(500, "Bad contact in binding")
    return uri_target(contact, uri_text=b.contact)


def flow_target(uri: str, flow: Peer | None,
                tcp_peer: Callable[[str, int], Peer | None]) -> Target | None:
    """A request for ``uri`` sent over ``flow`` (a dialog's flow token).

    Over UDP the flow is the address and our socket as they were; over TCP
    only the connection itself will do, while it is open (a phone behind
    NAT cannot be connected to).
    """
    if flow is None:
        return None
    dest: Peer | None = flow
    if flow.reliable:
        dest = tcp_peer(flow.host, flow.port)
    if dest is None:
        return None
    return Target(uri, dest, (), dest.host, dest.port, dest.transport)

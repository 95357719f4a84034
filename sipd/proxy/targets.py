"""Where a request goes next: addresses, ports and transports, sans-IO.

A :class:`Target` is one destination of a proxied request: the
Request-URI it gets, the Route set pushed in front, and the next hop as a
:class:`~sipd.core.peer.Peer` (conn 0: the transport picks or opens the
socket), or the host name still to resolve.

Transports: ``udp``, ``tcp``, ``tls`` (a ``sips:`` URI, or
``transport=tls``), ``ws`` and ``wss``. A WebSocket phone is reachable
only over the connection it registered on (RFC 7118 §5): without it, a
request for it fails at once with 480 rather than going anywhere.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from sipd.core.peer import Peer
from sipd.media.relay import behind_nat
from sipd.sip.errors import ParseError, SipError
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
        return self.listener(peer)[1:]

    def listener(self, peer: Peer) -> tuple[str, str, int]:
        """(transport, host, port) of ours that ``peer`` reaches: its own
        transport and family, else another of the family (sipd opens TLS
        without listening on it)."""
        if peer.conn and peer.transport == "udp":
            own = self.by_socket.get(peer.conn)
            if own is not None:
                return ("udp", *own)
        family = 6 if ":" in peer.host else 4
        found = self.by_kind.get((peer.transport, family))
        if found is not None:
            return (peer.transport, *found)
        for (t, f), v in self.by_kind.items():
            if f == family:
                return (t, *v)
        (t, _), v = next(iter(self.by_kind.items()))
        return (t, *v)

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
    nat: bool = False
    """A registered phone behind a NAT: it registered from another address
    than its contact's (``media_relay = nat`` relays its calls)."""

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, uri: str, dest: Peer | None, routes: tuple[str, ...] = (), host: str = "",
                 port: int = 5060, transport: str = "udp", nat: bool = False) -> None:
        object.__setattr__(self, "uri", uri)
        object.__setattr__(self, "dest", dest)
        object.__setattr__(self, "routes", routes)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", port)
        object.__setattr__(self, "transport", transport)
        object.__setattr__(self, "nat", nat)


def resolve(host: str, port: int) -> str:
    """Blocking: one address for ``host`` (IPv4 preferred)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    infos.sort(key=lambda i: 0 if i[0] == socket.AF_INET else 1)
    return str(infos[0][4][0])


def _address_text(host: str) -> str | None:
    """``host`` as the address the socket layer will use, or None for a name."""
    addr = parse_host(host)
    return None if addr is None else str(addr)


#: Finds the live connection of a transport to an address (the endpoint's).
LivePeer = Callable[[str, str, int], Peer | None]
#: Connection kinds only the phone can open: nothing is sent there without one.
WS_TRANSPORTS = ("ws", "wss")


def uri_transport(uri: SipURI) -> str:
    """The transport a request for ``uri`` takes (RFC 3261 §19.1, RFC 5630, RFC 7118)."""
    t = (uri.transport or "").lower()
    if uri.secure:
        # sips: asks for TLS on this hop, whatever stream it names.
        if t in ("", "tcp", "tls"):
            return "tls"
        if t in WS_TRANSPORTS:
            return "wss"
        raise SipError(502, f"Unsupported transport {t} for sips")
    if t in ("", "udp"):
        return "udp"
    if t in ("tcp", "tls") or t in WS_TRANSPORTS:
        return t
    raise SipError(502, f"Unsupported transport {t}")


def uri_target(uri: SipURI, routes: tuple[str, ...] = (), uri_text: str | None = None) -> Target:
    """Where a request for ``uri`` goes: its maddr or host, port and transport."""
    transport = uri_transport(uri)
    if transport in WS_TRANSPORTS:
        # sipd opens no WebSocket connections: that phone is not connected.
        raise SipError(480, "Not connected over WebSocket")
    host = (uri.param("maddr") or uri.host).strip("[]")
    port = uri.port or (5061 if transport == "tls" else 5060)
    address = _address_text(host)
    dest = Peer(transport, address, port, 0) if address is not None else None
    return Target(uri_text or str(uri), dest, routes, address or host, port, transport)


def binding_target(b: Binding, live_peer: LivePeer | None = None,
                   udp_socket: Callable[[str], int] | None = None) -> Target:
    """A request for a binding: to its Path, else back where its REGISTER came from.

    Over UDP the REGISTER's source is the way through a NAT, from the socket
    the REGISTER came in on (``udp_socket`` knows it; else 0, any socket).
    Over TCP and TLS it is the connection the phone opened, usable only
    while it lives (``live_peer`` finds it); without it the contact itself
    is tried, as RFC 3261 has it. Over WebSocket there is no other way (RFC
    7118): with the connection gone, 480.
    """
    if b.path:
        first = parse_address(b.path[0], "Path").uri
        if not isinstance(first, SipURI):
            raise SipError(500, "Bad Path in binding")
        hop = uri_target(first)
        return Target(b.contact, hop.dest, b.path, hop.host, hop.port, hop.transport)
    try:
        contact: object = parse_uri(b.contact)
    except ParseError:
        contact = None  # the way back through the NAT may still work
    if b.received:
        transport, _, rest = b.received.partition(":")
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        nat = isinstance(contact, SipURI) and behind_nat(contact.host, host)
        live = None
        if live_peer is not None and transport != "udp" and port.isdigit():
            live = live_peer(transport, host, int(port))
        if live is not None:
            return Target(b.contact, live, (), host, live.port, transport, nat)
        if transport in WS_TRANSPORTS:
            raise SipError(480, "WebSocket connection closed")
        address = _address_text(host)
        if transport == "udp" and port.isdigit() and address is not None:
            conn = udp_socket(b.received) if udp_socket is not None else 0
            return Target(b.contact, Peer(transport, address, int(port), conn), (), address,
                          int(port), transport, nat)
    if not isinstance(contact, SipURI):
        raise SipError(500, "Bad contact in binding")
    return uri_target(contact, uri_text=b.contact)


def flow_target(uri: str, flow: Peer | None, live_peer: LivePeer) -> Target | None:
    """A request for ``uri`` sent over ``flow`` (a dialog's flow token).

    Over UDP the flow is the address and our socket as they were; over a
    connection only the connection itself will do, while it is open (a
    phone behind NAT cannot be connected to).
    """
    if flow is None:
        return None
    dest: Peer | None = flow
    if flow.reliable:
        dest = live_peer(flow.transport, flow.host, flow.port)
    if dest is None:
        return None
    return Target(uri, dest, (), dest.host, dest.port, dest.transport)

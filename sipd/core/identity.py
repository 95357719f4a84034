"""Who "this server" is: the names, addresses and ports a URI must match.

"Is this me" compares the host *and* the port: many phones share one
address, and a request for ``sip:192.0.2.1:5070`` is not for a server that
listens on 5060 of the same host.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from dataclasses import dataclass

from sipd.sip.uri import SipURI
from srfs.addresses import parse_host

_SIOCGIFADDR = 0x8915


@dataclass(frozen=True, slots=True)
class LocalIdentity:
    domains: frozenset[str]
    """Lower-case domain names and IP addresses (IPv6 without brackets)."""
    ports: frozenset[int]
    """Ports the server listens on (any transport)."""

    def is_local_host(self, host: str) -> bool:
        h = host.lower()
        if h.startswith("["):
            h = h[1:-1]
        if h in self.domains:
            return True
        # Compare addresses by value: "::0001" is "::1", "127.1" is 127.0.0.1.
        addr = parse_host(h)
        return addr is not None and str(addr) in self.domains

    def is_own_address(self, host: str, port: int | None, *, secure: bool = False) -> bool:
        """Would a message sent to ``host:port`` reach this server?

        One of our names or addresses with one of our ports, or any
        loopback or unspecified address with one of our ports (a wildcard
        listener answers on all of them). Used to refuse contacts and next
        hops that would loop back into the proxy.
        """
        if (port if port is not None else (5061 if secure else 5060)) not in self.ports:
            return False
        if self.is_local_host(host):
            return True
        addr = parse_host(host)
        return addr is not None and (addr.is_loopback or addr.is_unspecified)

    def is_local_domain(self, uri: SipURI) -> bool:
        """The URI's host is one of ours (any port): a local AOR."""
        return self.is_local_host(uri.host)

    def is_me(self, uri: SipURI) -> bool:
        """The URI names this server itself: our host and one of our ports."""
        port = uri.port if uri.port is not None else (5061 if uri.secure else 5060)
        return self.is_local_host(uri.host) and port in self.ports


def interface_addresses() -> set[str]:
    """The host's IPv4 and IPv6 addresses, found without a subprocess."""
    out = {"127.0.0.1", "::1"}
    for _, name in socket.if_nameindex():
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                packed = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            out.add(socket.inet_ntoa(packed[20:24]))
        except OSError:
            pass  # no IPv4 address on this interface
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                raw = line.split()[0]
                out.add(str(ipaddress.IPv6Address(bytes.fromhex(raw))))
    except OSError:
        pass  # no IPv6 on this host
    return out


def build_identity(
    realm: str, domains: tuple[str, ...], listen_hosts: list[str], ports: set[int]
) -> LocalIdentity:
    names: set[str] = {realm.lower(), "localhost"}
    names.update(d.lower().strip("[]") for d in domains)
    hostname = socket.gethostname()
    names.add(hostname.lower())
    names.add(socket.getfqdn().lower())
    wildcard = any(h in ("0.0.0.0", "::") for h in listen_hosts)
    if wildcard:
        names.update(interface_addresses())
    names.update(h for h in listen_hosts if h not in ("0.0.0.0", "::"))
    names.update({"127.0.0.1", "::1"})
    return LocalIdentity(frozenset(names), frozenset(ports))

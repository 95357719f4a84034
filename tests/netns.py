"""A real NAT on this machine: network namespaces, veth pairs and iptables MASQUERADE.

Three places: the phone's LAN (a namespace, 192.168.213.2 unless told
another /24), the NAT router (a namespace with a LAN side and a public
side, forwarding and masquerading what leaves by the public side, its
default route to this host), and this host, where sipd listens on the
public side's peer address. Nothing is sent anywhere but between these;
the iptables rules live inside the router's namespace, so the host's own
tables are never touched. Several NATs may be up at once (each its own
public /30, a LAN of its own by :func:`masquerade`'s ``lan``): through
their routers' default routes all their phones reach any one address of
this host, where one sipd and one rtpengine serve them all, the way two
homes reach one server. Everything is removed on exit, also when the test fails
(:func:`leftovers` tells what is still there). Needs root, ``ip``
(iproute2) and ``iptables``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Nat:
    lan: str
    """The namespace of the phone: run its commands with :meth:`in_lan`."""
    router: str
    host_address: str
    """This host's address on the public side: where sipd listens."""
    public_address: str
    """The NAT's public address: where the phone's packets seem to come from."""
    phone_address: str = "192.168.213.2"

    @property
    def tag(self) -> str:
        """What names this NAT's namespaces and host interface (see :func:`leftovers`)."""
        return self.lan.removeprefix("srlan-")

    def in_lan(self, *command: str) -> list[str]:
        """``command`` run inside the phone's LAN."""
        return ["ip", "netns", "exec", self.lan, *command]

    def count_arrivals(self, source: str, ports: range) -> None:
        """Count the UDP packets from ``source`` (a port in ``ports``) that reach the
        phone itself, past the NAT (:meth:`arrivals`), and the ones the phone refused
        for want of a socket on their port (:meth:`refusals`, its ICMP port
        unreachable back to ``source``): rules without a target in the LAN's INPUT
        and OUTPUT chains, which only count."""
        for rule in (["INPUT", "-p", "udp", "-s", source,
                      "--sport", f"{ports.start}:{ports.stop - 1}"],
                     ["OUTPUT", "-p", "icmp", "--icmp-type", "port-unreachable",
                      "-d", source]):
            subprocess.run(self.in_lan("iptables", "-A", *rule), check=True,
                           capture_output=True, timeout=10)

    def arrivals(self) -> int:
        """Packets that reached the phone, counted since :meth:`count_arrivals`."""
        return self._counted("INPUT")

    def refusals(self) -> int:
        """Of those, the ones no socket of the phone's took, since :meth:`count_arrivals`."""
        return self._counted("OUTPUT")

    def _counted(self, chain: str) -> int:
        out = subprocess.run(self.in_lan("iptables", "-L", chain, "-v", "-x", "-n"),
                             check=True, capture_output=True, text=True, timeout=10).stdout
        # Two header lines, then one line per rule: packets come first.
        return sum(int(line.split()[0]) for line in out.splitlines()[2:] if line.strip())


def missing() -> str | None:
    """Why a NAT cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root to make network namespaces"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"needs {tool} (run 'make setup')"
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def _free_subnet() -> int:
    """A third octet of 10.213.x.0/30 that no interface of this host uses."""
    used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                          timeout=10).stdout
    for _ in range(100):
        octet = secrets.randbelow(256)
        if f" 10.213.{octet}." not in used:
            return octet
    raise RuntimeError("no free 10.213.x.0/30 subnet")


#: What this module's namespaces and host interfaces are called: srlan-, srnat-, srw + a tag.
PREFIXES = ("srlan-", "srnat-", "srw")


def leftovers(tags: Iterable[str]) -> list[str]:
    """What is left of the NATs tagged ``tags``: namespaces (``ip netns list``), host
    interfaces (``ip link``) and rules of the host's nat table (``iptables -t nat -S``,
    which none of them ever touched) that name them."""
    found: list[str] = []
    for command in (["ip", "netns", "list"], ["ip", "-o", "link"],
                    ["iptables", "-t", "nat", "-S"]):
        out = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout
        found += [line for line in out.splitlines()
                  if any(f"{prefix}{tag}" in line for tag in tags for prefix in PREFIXES)]
    return found


@contextmanager
def masquerade(udp_timeout: int = 30, lan: int = 213) -> Iterator[Nat]:
    """A NAT whose UDP mappings expire after ``udp_timeout`` idle seconds, its LAN
    192.168.``lan``.0/24: give NATs that are up at once LANs of their own, so that
    no phone's private address is another's."""
    tag = secrets.token_hex(3)
    lan_ns, router, veth = f"srlan-{tag}", f"srnat-{tag}", f"srw{tag}"
    octet = _free_subnet()
    nat = Nat(lan_ns, router, f"10.213.{octet}.1", f"10.213.{octet}.2",
              f"192.168.{lan}.2")
    try:
        _ip("netns", "add", lan_ns)
        _ip("netns", "add", router)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "wan", "netns", router)
        _ip("addr", "add", f"{nat.host_address}/30", "dev", veth)
        _ip("link", "set", veth, "up")
        _ip("-n", router, "addr", "add", f"{nat.public_address}/30", "dev", "wan")
        _ip("-n", router, "link", "set", "wan", "up")
        # Upstream, like a home router's: any address of this host, not just its peer's.
        _ip("-n", router, "route", "add", "default", "via", nat.host_address)
        _ip("-n", router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
            "netns", lan_ns)
        _ip("-n", router, "addr", "add", f"192.168.{lan}.1/24", "dev", "lan")
        _ip("-n", router, "link", "set", "lan", "up")
        _ip("-n", lan_ns, "addr", "add", f"{nat.phone_address}/24", "dev", "eth0")
        _ip("-n", lan_ns, "link", "set", "eth0", "up")
        _ip("-n", lan_ns, "link", "set", "lo", "up")
        _ip("-n", lan_ns, "route", "add", "default", "via", f"192.168.{lan}.1")
        in_router = ["ip", "netns", "exec", router]
        # The rule first: it brings connection tracking, whose timeouts follow.
        subprocess.run([*in_router, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", "wan",
                        "-j", "MASQUERADE"], check=True, capture_output=True, timeout=10)
        subprocess.run([*in_router, "sysctl", "-qw", "net.ipv4.ip_forward=1",
                        f"net.netfilter.nf_conntrack_udp_timeout={udp_timeout}",
                        f"net.netfilter.nf_conntrack_udp_timeout_stream={udp_timeout}"],
                       check=True, capture_output=True, timeout=10)
        yield nat
    finally:
        # Deleting a namespace takes its interfaces, and a veth pair goes with
        # either end; the host's end is deleted too in case the pair is half made.
        for args in (("netns", "del", lan_ns), ("netns", "del", router),
                     ("link", "del", veth)):
            subprocess.run(["ip", *args], capture_output=True, timeout=10)

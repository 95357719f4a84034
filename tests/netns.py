"""A real NAT on this machine: network namespaces, veth pairs and iptables MASQUERADE.

Three places: the phone's LAN (a namespace, 192.168.213.2), the NAT
router (a namespace with a LAN side and a public side, forwarding and
masquerading what leaves by the public side), and this host, where sipd
listens on the public side's peer address. Nothing is sent anywhere but
between these; the iptables rules live inside the router's namespace, so
the host's own tables are never touched. Everything is removed on exit,
also when the test fails. Needs root, ``ip`` (iproute2) and ``iptables``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Nat:
    lan: str
    """The namespace of the phone: run its commands with :meth:`run_in_lan`."""
    router: str
    host_address: str
    """This host's address on the public side: where sipd listens."""
    public_address: str
    """The NAT's public address: where the phone's packets seem to come from."""
    phone_address: str = "192.168.213.2"

    def in_lan(self, *command: str) -> list[str]:
        """``command`` run inside the phone's LAN."""
        return ["ip", "netns", "exec", self.lan, *command]


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


@contextmanager
def masquerade(udp_timeout: int = 30) -> Iterator[Nat]:
    """A NAT whose UDP mappings expire after ``udp_timeout`` idle seconds."""
    tag = secrets.token_hex(3)
    lan, router, veth = f"srlan-{tag}", f"srnat-{tag}", f"srw{tag}"
    octet = _free_subnet()
    nat = Nat(lan, router, f"10.213.{octet}.1", f"10.213.{octet}.2")
    try:
        _ip("netns", "add", lan)
        _ip("netns", "add", router)
        _ip("link", "add", veth, "type", "veth", "peer", "name", "wan", "netns", router)
        _ip("addr", "add", f"{nat.host_address}/30", "dev", veth)
        _ip("link", "set", veth, "up")
        _ip("-n", router, "addr", "add", f"{nat.public_address}/30", "dev", "wan")
        _ip("-n", router, "link", "set", "wan", "up")
        _ip("-n", router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
            "netns", lan)
        _ip("-n", router, "addr", "add", "192.168.213.1/24", "dev", "lan")
        _ip("-n", router, "link", "set", "lan", "up")
        _ip("-n", lan, "addr", "add", f"{nat.phone_address}/24", "dev", "eth0")
        _ip("-n", lan, "link", "set", "eth0", "up")
        _ip("-n", lan, "link", "set", "lo", "up")
        _ip("-n", lan, "route", "add", "default", "via", "192.168.213.1")
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
        for args in (("netns", "del", lan), ("netns", "del", router), ("link", "del", veth)):
            subprocess.run(["ip", *args], capture_output=True, timeout=10)

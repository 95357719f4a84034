"""Trusted trunks: PBXs at fixed addresses that call as their user without digest.

``/etc/sipd/trunks`` is written by the admin::

    # user: address[/prefix] [, address[/prefix] ...]
    acme: 198.51.100.7/32
    globex: 203.0.113.16/29, 2001:db8:5::/64

A request whose source address falls in a user's networks is taken as that
user's without a challenge; everything else from the same address is treated
as usual. No phone may register a contact pointing into any of these
networks, so nobody can take a trunk's calls. A network listed for two users
is a conflict: the later line is refused, so the earlier owner keeps it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field

from srfs.addresses import parse_host
from srfs.files.aliases import AliasProblem
from srfs.lines import content_lines
from srfs.user import valid_name

__all__ = ["Network", "TrunkMap", "parse_trunks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TrunkMap:
    """Immutable: the trusted networks and the user each belongs to."""

    networks: tuple[tuple[Network, str], ...] = ()
    _by_user: Mapping[str, tuple[Network, ...]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, networks: list[tuple[Network, str]]) -> TrunkMap:
        # Longest prefix first, so a /32 inside a customer's /24 wins.
        ordered = tuple(sorted(networks, key=lambda n: -n[0].prefixlen))
        by_user: dict[str, list[Network]] = {}
        for net, user in networks:
            by_user.setdefault(user, []).append(net)
        return cls(ordered, {u: tuple(ns) for u, ns in by_user.items()})

    def user_at(self, host: str) -> str | None:
        """The user whose trunk ``host`` (an IP literal, any spelling) belongs to, if any."""
        if not self.networks:
            return None  # every request asks: no address parsing without trunks
        addr = parse_host(host)
        if addr is None:
            return None
        for net, user in self.networks:
            if addr.version == net.version and addr in net:
                return user
        return None

    def networks_of(self, user: str) -> tuple[Network, ...]:
        return self._by_user.get(user, ())

    def render(self) -> str:
        return "".join(
            f"{user}: {', '.join(str(n) for n in nets)}\n" for user, nets in sorted(self._by_user.items())
        )

    def __len__(self) -> int:
        return len(self.networks)


def parse_trunks(text: str) -> tuple[TrunkMap, list[AliasProblem]]:
    problems: list[AliasProblem] = []
    networks: list[tuple[Network, str]] = []
    seen: dict[Network, tuple[str, int]] = {}
    for number, line in content_lines(text):
        user, sep, rest = line.partition(":")
        user, rest = user.strip(), rest.strip()
        if not sep or not user or not rest:
            problems.append(AliasProblem(number, line, "expected 'user: address[/prefix], ...'"))
            continue
        if not valid_name(user) or any(c in user for c in " \t,#"):
            problems.append(AliasProblem(number, line, f"{user!r} is not a valid user name"))
            continue
        for item in (i.strip() for i in rest.split(",")):
            try:
                net = ipaddress.ip_network(item, strict=True)
            except ValueError as exc:
                problems.append(AliasProblem(number, line, f"{item!r}: {exc}"))
                continue
            if net.prefixlen == 0:
                problems.append(AliasProblem(number, line, f"{item!r} would trust every address"))
                continue
            if net in seen and seen[net][0] != user:
                owner, first = seen[net]
                problems.append(AliasProblem(
                    number, line, f"{net} is already {owner!r}'s trunk (line {first}); refused",
                ))
                continue
            overlap = next((n for n, u in networks if u != user and n.overlaps(net)), None)
            if overlap is not None:
                problems.append(AliasProblem(
                    number, line, f"{net} overlaps {overlap} of {seen[overlap][0]!r}; refused",
                ))
                continue
            if net not in seen:
                seen[net] = (user, number)
                networks.append((net, user))
    return TrunkMap.of(networks), problems

"""Trusted trunks: PBXs at fixed addresses that call as their user without digest.

``/etc/sipd/trunks`` is written by the admin::

    # user: address[/prefix] [, address[/prefix] ...] [present=PATTERN ...]
    acme: 198.51.100.7/32 present=any
    globex: 203.0.113.16/29, 2001:db8:5::/64 present=+4930* present=+4989*

A request whose source address falls in a user's networks is taken as that
user's without a challenge; everything else from the same address is treated
as usual. ``present=`` options say which From numbers the PBX may present
that are not the user's own (calls it forwards keep the caller's number):
``any`` (or ``*``) for every From, else shell-style patterns matched
against the From user (as sent, and normalised by the number plan); the
options of all of a user's lines add up. No phone may register a contact pointing into any of these
networks, so nobody can take a trunk's calls. A network listed for two users
is a conflict: the later line is refused, so the earlier owner keeps it.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from collections.abc import Iterable, Mapping
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
    #: Per user, the From patterns their trunk may present (see the module text).
    presentation: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def of(cls, networks: list[tuple[Network, str]],
           presentation: Mapping[str, Iterable[str]] | None = None) -> TrunkMap:
        # Longest prefix first, so a /32 inside a customer's /24 wins.
        ordered = tuple(sorted(networks, key=lambda n: -n[0].prefixlen))
        by_user: dict[str, list[Network]] = {}
        for net, user in networks:
            by_user.setdefault(user, []).append(net)
        present = {u: tuple(dict.fromkeys(ps)) for u, ps in (presentation or {}).items()
                   if u in by_user and ps}
        return cls(ordered, {u: tuple(ns) for u, ns in by_user.items()}, present)

    def presents(self, user: str, *spellings: str | None) -> bool:
        """May ``user``'s trunk present a From user spelled any of ``spellings``?"""
        patterns = self.presentation.get(user, ())
        return any(fnmatch.fnmatchcase(s, p) for p in patterns for s in spellings if s)

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
            f"{user}: {', '.join(str(n) for n in nets)}"
            + "".join(f" present={p}" for p in self.presentation.get(user, ())) + "\n"
            for user, nets in sorted(self._by_user.items())
        )

    def __len__(self) -> int:
        return len(self.networks)


def parse_trunks(text: str) -> tuple[TrunkMap, list[AliasProblem]]:
    problems: list[AliasProblem] = []
    networks: list[tuple[Network, str]] = []
    presentation: dict[str, list[str]] = {}
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
        items: list[str] = []
        options: list[str] = []
        for word in rest.replace(",", " ").split():
            (options if "=" in word else items).append(word)
        present: list[str] = []
        bad_option = next((o for o in options if not _option(o, present)), None)
        if bad_option is not None:
            problems.append(AliasProblem(
                number, line, f"{bad_option!r}: expected present=any or present=PATTERN"))
            continue
        presentation.setdefault(user, []).extend(present)
        if not items:
            problems.append(AliasProblem(number, line, "expected 'user: address[/prefix], ...'"))
            continue
        for item in items:
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
    return TrunkMap.of(networks, presentation), problems


#: What a presentation pattern may hold: a From user part's characters and
#: fnmatch's "*", "?" and "[...]".
_PATTERN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                           "+-_.!~*'()&$?/[]")


def _option(word: str, present: list[str]) -> bool:
    """Add a ``present=`` option to ``present``; False when it is not one."""
    key, _, value = word.partition("=")
    if key.lower() != "present" or not value or not set(value) <= _PATTERN_CHARS:
        return False
    present.append("*" if value.lower() == "any" else value)
    return True

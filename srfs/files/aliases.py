"""The alias map: which UNIX user owns each extra AOR and DID.

``/etc/sipd/aliases`` is written by the admin, in the spirit of
``/etc/aliases``::

    # name: owner
    1003: jan
    01727221221: jan
    +441727238471: acme

A name is both an address the owner may register with their own Auth-ID and
a number whose inbound calls reach the owner. Every user owns the AOR named
after them without a line. Only root grants names: nothing a user writes in
``~/.sr`` adds one.

A bad line is skipped with a reason and the rest of the map is used. A name
given to two owners is a conflict: neither new line wins, and the owner the
name had before the edit (if any) keeps it, so a typo never moves a DID to
the wrong customer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from srfs.lines import content_lines
from srfs.user import valid_name

__all__ = ["AliasMap", "AliasProblem", "parse_aliases", "valid_alias"]

# RFC 3261 user part characters, without escapes and without the ones that
# would be ambiguous in our own line formats (":" "," ";" and spaces).
_ALIAS_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$?/]{1,128}")


def valid_alias(name: str) -> bool:
    return _ALIAS_RE.fullmatch(name) is not None


@dataclass(frozen=True, slots=True)
class AliasProblem:
    line: int
    text: str
    reason: str
    #: False for what changes nothing (the same line twice): a write is not refused for it.
    fatal: bool = True

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}: {self.text[:80]!r}"


@dataclass(frozen=True)
class AliasMap:
    """An immutable alias map: ``owners`` maps each name to its UNIX user."""

    owners: Mapping[str, str] = field(default_factory=dict)
    _by_owner: Mapping[str, tuple[str, ...]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, owners: Mapping[str, str]) -> AliasMap:
        by_owner: dict[str, list[str]] = {}
        for name, owner in owners.items():
            by_owner.setdefault(owner, []).append(name)
        return cls(dict(owners), {o: tuple(sorted(ns)) for o, ns in by_owner.items()})

    def owner_of(self, name: str) -> str | None:
        return self.owners.get(name)

    def names_of(self, user: str) -> tuple[str, ...]:
        """The names granted to ``user`` (not counting their own user name)."""
        return self._by_owner.get(user, ())

    def owns(self, user: str, aor: str) -> bool:
        """May ``user`` register ``aor`` and receive its calls?"""
        return aor == user or self.owners.get(aor) == user

    def render(self) -> str:
        """The map as ``name: owner`` lines, sorted by owner then name."""
        return "".join(
            f"{name}: {owner}\n"
            for owner in sorted(self._by_owner)
            for name in self._by_owner[owner]
        )

    def __len__(self) -> int:
        return len(self.owners)


def parse_aliases(
    text: str,
    previous: AliasMap | None = None,
    *,
    is_user: Callable[[str], bool] | None = None,
) -> tuple[AliasMap, list[AliasProblem]]:
    """The map in ``text`` and the problems found in it.

    ``previous`` is the map in force: a name that two lines give to
    different owners keeps its previous owner (or stays unmapped).
    ``is_user(name)`` says whether a name is some user's login: such a
    name already belongs to that user and cannot be given away.
    """
    problems: list[AliasProblem] = []
    found: dict[str, tuple[str, int]] = {}
    conflicted: set[str] = set()
    for number, line in content_lines(text):
        name, sep, owner = line.partition(":")
        name, owner = name.strip(), owner.strip()
        if not sep or not name or not owner:
            problems.append(AliasProblem(number, line, "expected 'name: owner'"))
            continue
        if not valid_alias(name):
            problems.append(AliasProblem(number, line, f"{name!r} is not a valid SIP user part"))
            continue
        if not valid_name(owner) or any(c in owner for c in " \t,#"):
            problems.append(AliasProblem(number, line, f"{owner!r} is not a valid user name"))
            continue
        if name == owner:
            problems.append(AliasProblem(number, line, "a user owns their own name already"))
            continue
        if is_user is not None and is_user(name):
            problems.append(AliasProblem(number, line, f"{name!r} is a user's own address"))
            continue
        if name in found:
            first_owner, first_line = found[name]
            if first_owner == owner:
                problems.append(AliasProblem(number, line, f"repeats line {first_line}", fatal=False))
            else:
                conflicted.add(name)
                problems.append(AliasProblem(
                    number, line,
                    f"{name!r} is also given to {first_owner!r} on line {first_line}; "
                    "neither line is used",
                ))
            continue
        found[name] = (owner, number)
    owners = {name: owner for name, (owner, _) in found.items() if name not in conflicted}
    if previous is not None:
        for name in conflicted:
            old = previous.owner_of(name)
            if old is not None:
                owners[name] = old
    return AliasMap.of(owners), problems

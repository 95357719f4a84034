"""Who owns which address: the admin's alias map and trusted trunks in force.

The files are read in a worker thread (:meth:`Ownership.load`) and the new
maps are put in force on the trio thread (:meth:`Ownership.apply`), which is
the only thread that reads them. A file that cannot be trusted or read
keeps the maps in force; a bad line is skipped. The problems of a file are
logged once per change of the file, the first few one by one and the rest
as a count: a file of a million bad lines is a few log lines.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sipd.core.numbers import NumberPlan
from srfs.accounts import users
from srfs.addresses import parse_host
from srfs.files.adminfile import (
    AdminFileError,
    WatchedAdminFile,
    read_admin_file,
    replace_admin_file,
)
from srfs.files.aliases import AliasMap, parse_aliases
from srfs.files.trunks import TrunkMap, parse_trunks
from srfs.logtext import log_problems

log = logging.getLogger("sipd.ownership")

__all__ = ["Loaded", "Ownership"]


def _host_key(host: str) -> str:
    addr = parse_host(host)
    return str(addr) if addr is not None else host.strip("[]").lower().rstrip(".")


def _is_user(name: str) -> bool:
    return users.lookup(name) is not None


@dataclass
class Loaded:
    """What one :meth:`Ownership.load` found: new maps (None: unchanged).

    ``problems`` holds, per file (or per file not used), what is wrong with it.
    """

    aliases: AliasMap | None = None
    trunks: TrunkMap | None = None
    problems: dict[str, list[object]] = field(default_factory=dict)


class Ownership:
    def __init__(
        self,
        aliases_path: str | None,
        trunks_path: str | None,
        *,
        owner: int = 0,
        is_user: Callable[[str], bool] = _is_user,
        gateways: Iterable[str] = (),
    ) -> None:
        self.aliases = AliasMap()
        self.trunks = TrunkMap()
        self._alias_file = WatchedAdminFile(aliases_path, owner=owner) if aliases_path else None
        self._trunk_file = WatchedAdminFile(trunks_path, owner=owner) if trunks_path else None
        self._is_user = is_user
        self._gateways = frozenset(_host_key(g) for g in gateways if g)
        self._plan = NumberPlan()
        #: The alias map's numbers by their normalised form, for ``_indexed``.
        self._numbers: dict[str, str] = {}
        self._indexed: AliasMap | None = None

    @property
    def plan(self) -> NumberPlan:
        return self._plan

    @plan.setter
    def plan(self, plan: NumberPlan) -> None:
        self._plan = plan
        self._indexed = None

    # ------------------------------------------------------------ queries

    def owns(self, user: str, aor: str) -> bool:
        """May ``user`` register ``aor`` and receive the calls for it?"""
        return aor == user or self.aliases.owner_of(aor) == user

    def owner_of(self, aor: str) -> str | None:
        """The user an AOR belongs to through the alias map (not a user's own name)."""
        return self.aliases.owner_of(aor)

    def names_of(self, user: str) -> tuple[str, ...]:
        return self.aliases.names_of(user)

    def number(self, name: str, *, phone: bool = False,
               phone_context: str | None = None) -> str:
        """The AOR a dialled ``name`` stands for (see :mod:`sipd.core.numbers`).

        A name of the alias map as written is itself. Otherwise, when it
        is a number, the name of the alias map whose number is the same
        once both are normalised (``tel:+491727221221`` reaches the DID
        written ``01727221221``); failing that, for a ``tel:`` or
        ``user=phone`` number (``phone``), the normalised number. Anything
        else is left as it is.
        """
        if name in self.aliases.owners:
            return name
        normal = self._plan.normalise(name, phone_context)
        if normal is None:
            return name
        found = self._number_index().get(normal)
        if found is not None:
            return found
        return normal if phone else name

    def _number_index(self) -> dict[str, str]:
        if self._indexed is not self.aliases:
            index: dict[str, str] = {}
            for alias in self.aliases.owners:
                normal = self._plan.normalise(alias)
                if normal is not None:
                    # Two spellings of one number: the first in the map wins.
                    index.setdefault(normal, alias)
            self._numbers, self._indexed = index, self.aliases
        return self._numbers

    def trunk_user_at(self, host: str) -> str | None:
        return self.trunks.user_at(host)

    def is_gateway(self, host: str) -> bool:
        """Is ``host`` the outbound proxy's? Addresses compare by value, names
        case-insensitively."""
        return bool(self._gateways) and _host_key(host) in self._gateways

    # ------------------------------------------------------------ loading

    def load(self, *, force: bool = False) -> Loaded:
        """Re-read the files that changed. Blocking (NSS, file I/O)."""
        out = Loaded()
        if self._alias_file is not None:
            data = self._alias_file.poll(force=force)
            if self._alias_file.problem:
                out.problems[f"not using {self._alias_file.path}"] = [self._alias_file.problem]
            elif data is not None:
                amap, problems = parse_aliases(
                    data.decode("utf-8", "replace"), self.aliases, is_user=self._is_user
                )
                out.aliases = amap
                out.problems[self._alias_file.path] = list(problems)
        if self._trunk_file is not None:
            data = self._trunk_file.poll(force=force)
            if self._trunk_file.problem:
                out.problems[f"not using {self._trunk_file.path}"] = [self._trunk_file.problem]
            elif data is not None:
                tmap, problems = parse_trunks(data.decode("utf-8", "replace"))
                out.trunks = tmap
                out.problems[self._trunk_file.path] = list(problems)
        return out

    def write_aliases(self, data: bytes, *, append: bool) -> Loaded:
        """Root's write to /run/sr/aliases: merge it into the file, or refuse it.

        Appended lines go after the file's own (comments kept); a replacing
        write becomes the file. The result must parse without a problem,
        else :class:`OSError` EINVAL names the first one and the file stays
        as it was. Blocking; the map is put in force with :meth:`apply`.
        """
        watched = self._alias_file
        if watched is None:
            raise OSError(errno.EOPNOTSUPP, "no alias map is configured")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise OSError(errno.EINVAL, "the alias map must be UTF-8") from None
        if append:
            try:
                got = read_admin_file(watched.path, owner=watched.owner)
            except AdminFileError as exc:
                raise OSError(exc.errno, exc.reason) from None
            current = got[0].decode("utf-8", "replace") if got is not None else ""
            if current and not current.endswith("\n"):
                current += "\n"
            text = current + text
        amap, problems = parse_aliases(text, self.aliases, is_user=self._is_user)
        refused = [p for p in problems if p.fatal]
        if refused:
            raise OSError(errno.EINVAL, f"{watched.path}: {refused[0]}")
        try:
            replace_admin_file(watched.path, text.encode(), owner=watched.owner)
        except AdminFileError as exc:
            raise OSError(exc.errno, exc.reason) from None
        log.info("alias map written through the tree: %d name(s)", len(amap))
        return Loaded(aliases=amap)

    def apply(self, loaded: Loaded) -> bool:
        """Put what :meth:`load` found in force; True if a map changed."""
        for what, problems in loaded.problems.items():
            log_problems(log, what, problems)
        changed = False
        if loaded.aliases is not None and loaded.aliases.owners != self.aliases.owners:
            self.aliases = loaded.aliases
            log.info("alias map: %d name(s)", len(self.aliases))
            changed = True
        if loaded.trunks is not None and (loaded.trunks.networks != self.trunks.networks or
                                          loaded.trunks.presentation != self.trunks.presentation):
            self.trunks = loaded.trunks
            log.info("trusted trunks: %d network(s)", len(self.trunks))
            changed = True
        return changed

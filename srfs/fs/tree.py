"""The ``/run/sr`` tree as a pure model: render on read, apply on write.

No I/O and no clock of its own: every call that needs the time takes
``now`` (wall-clock seconds), and the only time source the tree keeps is the
``clock`` callable it is given, used to stamp changes that reach it through
a :class:`~srfs.state.location.LocationStore` subscription (those carry no time).
The FUSE adapter (:mod:`srfs.fs.fuse`) maps inodes to the paths used here and
:class:`TreeError` to ``FUSEError``; the daemon writes the files this
returns. The layout, as srfs(5) documents it for users::

    /                      0755 root
      status               0444 root   key: value lines
      metrics              0444 root   Prometheus text format
      aliases              0644 root   rw: the alias map
      events               0400 root   every event, a line each, as it happens
      control              0600 root   w: commands to the daemon ("flush accounts")
      <user>/              0700 user   one per member of the SIP group
        contacts           0600 user   rw: the user's bindings, one line each
        config/            0700 user   one file per *set* key
          <key>            0600 user   rw: the value and a newline
        aliases            0400 user   the AORs/DIDs the user owns
        calls              0400 user   the user's calls in progress
        events             0400 user   the user's own events, as they happen

Permissions are the kernel's job (``default_permissions``): the modes and
owners here are what it checks. The tree still refuses writes to read-only
nodes because root passes every permission check.

Write semantics (srfs(5), WRITING, for users):

- ``contacts``, append (``>>``): each line adds or refreshes one binding,
  static unless it gives ``expires=``; ``expires=0`` (or an ``expires_at``
  in the past) removes that binding.
- ``contacts``, replace (``>``): the user's bindings become exactly the
  lines given; no lines (``: > contacts``) removes them all.
- Blank lines and ``#`` comment lines are skipped, so a copy of the file
  edited elsewhere can be written back.
- Validation first: any bad line (EINVAL), a line for an AOR the user
  does not own (EACCES) or more contacts for an AOR than ``max_contacts``
  (EDQUOT) refuses the whole write and nothing of it is applied.
- A line that matches the current binding in every field (expiry within a
  second, since the file shows whole seconds) is not re-applied: writing
  back what ``cat`` showed changes nothing and wakes no subscriber.
- ``config/<key>``: the data, less one trailing newline, is the new value,
  validated and normalised. Empty data (``: > config/dnd``) removes the
  key, like ``rm config/dnd``: "no value" is "not set". ``>>`` on a key
  sets the value too: a single-value file has no other sensible append.

Why one module of this size: the layout, its modes and the way a write
becomes a change are one contract (srfs(5)); split, the rules for who may
read or write a node would live apart from the nodes.
"""

from __future__ import annotations

import errno
import math
import re
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any, Literal

from srfs.errors import ReasonedError
from srfs.files import userconfig
from srfs.files.aliases import parse_aliases
from srfs.files.userconfig import ConfigValueError, UserConfig, UserConfigs
from srfs.files.usrloc import LineError, check_binding, format_line, parse_line
from srfs.lines import content_lines
from srfs.state.events import Events
from srfs.state.location import Binding, Change, LocationStore, Op, Remove, RemoveReason
from srfs.user import User, valid_name

__all__ = [
    "MAX_WRITE",
    "STREAMS",
    "Attributes",
    "ConfigChange",
    "ContactsWrite",
    "Kind",
    "Node",
    "Stat",
    "StatKind",
    "Tree",
    "TreeError",
    "WriteResult",
    "location_statistics",
    "render_metrics",
    "render_status",
]

#: Largest write the tree accepts for one node (what ~/.sr/usrloc may hold).
MAX_WRITE = 1 << 20
#: Largest config value write; the longest valid value is far shorter.
_MAX_CONFIG_WRITE = 4096


class TreeError(ReasonedError):
    """A refused tree operation: the errno the caller should see and why."""


class Kind(Enum):
    ROOT = "root"
    STATUS = "status"
    METRICS = "metrics"
    ALIAS_MAP = "alias_map"
    """``/aliases``: the whole alias map."""
    USER = "user"
    CONTACTS = "contacts"
    CONFIG = "config"
    SETTING = "setting"
    """``/<user>/config/<key>``."""
    USER_ALIASES = "user_aliases"
    CALLS = "calls"
    EVENTS = "events"
    """``/events``: a stream (:mod:`srfs.state.events`), not a rendered file."""
    USER_EVENTS = "user_events"
    CONTROL = "control"
    """``/control``: root's commands to the daemon, one a line; reads empty."""


# (mode, is_dir, owned by the user) per kind; the names are the two tables below.
_LAYOUT: dict[Kind, tuple[int, bool, bool]] = {
    Kind.ROOT: (0o755, True, False),
    Kind.STATUS: (0o444, False, False),
    Kind.METRICS: (0o444, False, False),
    Kind.ALIAS_MAP: (0o644, False, False),
    Kind.USER: (0o700, True, True),
    Kind.CONTACTS: (0o600, False, True),
    Kind.CONFIG: (0o700, True, True),
    Kind.SETTING: (0o600, False, True),
    Kind.USER_ALIASES: (0o400, False, True),
    Kind.CALLS: (0o400, False, True),
    Kind.EVENTS: (0o400, False, False),
    Kind.USER_EVENTS: (0o400, False, True),
    Kind.CONTROL: (0o600, False, False),
}
#: Streams: read through a cursor, never rendered.
STREAMS = frozenset({Kind.EVENTS, Kind.USER_EVENTS})
_ROOT_ENTRIES: dict[str, Kind] = {
    "aliases": Kind.ALIAS_MAP,
    "control": Kind.CONTROL,
    "events": Kind.EVENTS,
    "metrics": Kind.METRICS,
    "status": Kind.STATUS,
}
_USER_ENTRIES: dict[str, Kind] = {
    "aliases": Kind.USER_ALIASES,
    "calls": Kind.CALLS,
    "config": Kind.CONFIG,
    "contacts": Kind.CONTACTS,
    "events": Kind.USER_EVENTS,
}
_WRITABLE = frozenset({Kind.CONTACTS, Kind.SETTING, Kind.ALIAS_MAP, Kind.CONTROL})

#: What root may write to ``/control``, a command a line (srfs(5)).
CONTROL_COMMANDS: dict[str, str] = {
    "flush accounts": "forget every cached account answer, as SIGHUP does",
}


@dataclass(frozen=True, slots=True)
class Node:
    """One node of the tree as the kernel should see it."""

    path: str
    kind: Kind
    mode: int
    """Permission bits only; :attr:`st_mode` adds the file type."""
    uid: int
    gid: int
    is_dir: bool
    user: str | None = None
    """The user whose directory this is in (None at the top level)."""
    key: str | None = None
    """The setting of a :attr:`Kind.SETTING` node."""

    @property
    def st_mode(self) -> int:
        return (stat.S_IFDIR if self.is_dir else stat.S_IFREG) | self.mode

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1] or "/"

    @property
    def writable(self) -> bool:
        """Whether the tree takes writes here (the mode still decides who may)."""
        return self.kind in _WRITABLE


@dataclass(frozen=True, slots=True)
class Attributes:
    node: Node
    size: int
    """Length of :meth:`Tree.render` now (0 for a directory)."""
    mtime: float
    """When the content (or a directory's list of entries) last changed."""
    nlink: int


@dataclass(frozen=True, slots=True)
class ConfigChange:
    """A config edit made through the tree, for the daemon to write to ``~/.sr/config``."""

    user: User
    key: str
    value: str | None
    """The normalised new value; None when the key was removed."""
    text: str
    """The whole new file (comments and unknown lines kept)."""
    changed: bool
    """False when the file would stay as it was: nothing to write."""

    @property
    def data(self) -> bytes:
        return userconfig.encode(self.text)


@dataclass(frozen=True, slots=True)
class AliasMapWrite:
    """Root's write to ``/aliases``, for the daemon to merge into the alias file.

    The lines are checked one by one here; the daemon checks them against
    the rest of the map (a name given to two owners) and refuses the whole
    write with EINVAL if they clash.
    """

    data: bytes
    append: bool


@dataclass(frozen=True, slots=True)
class ContactsWrite:
    """A validated write to a user's ``contacts``, not applied yet."""

    user: str
    data: bytes
    mode: Literal["append", "replace"]


@dataclass(frozen=True, slots=True)
class WriteResult:
    """A write through the tree: validated by :meth:`Tree.prepare`, applied by :meth:`Tree.apply`.

    Before it is applied it names what to make durable (a contacts write,
    a config edit, an alias map write); :meth:`Tree.apply` fills
    ``changes`` with what the location store did.
    """

    changes: tuple[Change, ...] = ()
    config: ConfigChange | None = None
    aliases: AliasMapWrite | None = None
    contacts: ContactsWrite | None = None
    commands: tuple[str, ...] = ()
    """Commands written to ``/control``, in order, for the daemon to carry out."""

    @property
    def changes_something(self) -> bool:
        return (
            bool(self.changes)
            or self.contacts is not None
            or (self.config is not None and self.config.changed)
            or self.aliases is not None
            or bool(self.commands)
        )


# --- statistics: the status and metrics files ----------------------------------


class StatKind(Enum):
    COUNTER = "counter"
    """Only ever grows (Prometheus name gets ``_total``)."""
    GAUGE = "gauge"
    INFO = "info"
    """A text value (version, listen addresses): a ``_info`` metric with value 1."""


_STAT_NAME_RE = re.compile(r"[a-z][a-z0-9_]*", re.ASCII)
_LABEL_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)
_RESERVED_SUFFIXES = ("_total", "_count", "_sum", "_bucket", "_created")


# Not frozen: every open of ``status`` and ``metrics`` makes a hundred of
# them and throws them away, and a frozen dataclass's __init__ took five
# times as long (1.7 against 0.3 us), most of a read's cost.
@dataclass(slots=True)
class Stat:
    """One figure for ``status`` and ``metrics``.

    ``name`` is the status key and, prefixed with ``sipd_``, the metric
    name: in base units, with the unit last (``start_time_seconds``,
    ``received_bytes``); a counter's ``_total`` is added. A COUNTER or
    GAUGE holds a number; an INFO holds a string or a tuple of strings (one
    sample each). ``status=False`` keeps a figure out of the short
    ``status`` file ("metrics: the same and more"); ``metrics=False`` keeps
    one that is for people only (the uptime, which Prometheus computes from
    the start time) out of ``metrics``.
    """

    name: str
    value: int | float | str | tuple[str, ...]
    help: str
    kind: StatKind = StatKind.GAUGE
    labels: tuple[tuple[str, str], ...] = ()
    status: bool = True
    metrics: bool = True

    def __post_init__(self) -> None:
        numeric = isinstance(self.value, int | float)
        if (self.kind is StatKind.INFO) == numeric:
            raise ValueError(f"{self.name}: INFO takes text, COUNTER and GAUGE take numbers")
        shape = (self.name, self.labels)
        if _CHECKED_SHAPES.get(shape) is self.kind:
            return
        if not _STAT_NAME_RE.fullmatch(self.name):
            raise ValueError(f"bad statistic name {self.name!r}")
        if self.kind is not StatKind.COUNTER and self.name.endswith(_RESERVED_SUFFIXES):
            # A gauge called *_total would read as a counter, *_count or
            # *_sum as part of a summary.
            suffix = "_" + self.name.rsplit("_", 1)[1]
            raise ValueError(f"{self.name}: a {self.kind.value} may not be named *{suffix}")
        for label, _ in self.labels:
            if not _LABEL_RE.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"bad label name {label!r}")
        _remember(_CHECKED_SHAPES, shape, self.kind)


#: Names, kinds and labels that passed :meth:`Stat.__post_init__`'s checks:
#: the same hundred figures are made at every open of ``status`` and
#: ``metrics``, and need not be matched against the patterns each time.
#: (Keyed by name and labels, the kind as the value: an Enum's hash is a
#: Python call.)
_CHECKED_SHAPES: dict[tuple[str, tuple[tuple[str, str], ...]], StatKind] = {}
#: The figures' names and labels come from the daemon's code, a few hundred
#: at most; past this many something makes them up, and the memory is dropped.
_SHAPES_MAX = 4096


def _remember(memory: dict[Any, Any], key: Any, value: Any) -> None:
    if len(memory) >= _SHAPES_MAX:
        memory.clear()
    memory[key] = value


StatisticsProvider = Callable[[], Iterable[Stat]]


def _status_number(value: float) -> str:
    if isinstance(value, int):
        return str(int(value))
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return str(round(value, 3))


def _status_line_value(value: int | float | str | tuple[str, ...]) -> str:
    if isinstance(value, tuple):
        text = " ".join(value)
    elif isinstance(value, str):
        text = value
    else:
        return _status_number(value)
    # One key, one line: a line break would forge another key.
    return re.sub(r"[\r\n]", " ", text)


def _label_text(labels: Iterable[tuple[str, str]]) -> str:
    parts = [f'{k}="{_escape_label(v)}"' for k, v in labels]
    return "{" + ",".join(parts) + "}" if parts else ""


def render_status(stats: Iterable[Stat]) -> str:
    """``key: value`` lines; labelled figures as ``key{label="v"}: value``."""
    lines = []
    for s in stats:
        if s.status:
            lines.append(f"{s.name}{_label_text(s.labels)}: {_status_line_value(s.value)}")
    return "".join(line + "\n" for line in lines)


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _metric_number(value: float) -> str:
    if isinstance(value, int):
        return str(int(value))  # bool -> 1/0
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _metric_name(s: Stat) -> str:
    name = "sipd_" + s.name
    if s.kind is StatKind.COUNTER and not name.endswith("_total"):
        name += "_total"
    elif s.kind is StatKind.INFO and not name.endswith("_info"):
        name += "_info"
    return name


#: Per figure shape: its metric name and the series (name and labels) of
#: its sample; see :data:`_CHECKED_SHAPES` for why they are kept.
_SERIES: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[StatKind, str, str]] = {}
#: Per metric name and help text: its kind and its HELP and TYPE lines.
_HEADERS: dict[tuple[str, str], tuple[StatKind, str]] = {}


def _series(s: Stat) -> tuple[str, str]:
    shape = (s.name, s.labels)
    found = _SERIES.get(shape)
    if found is None or found[0] is not s.kind:
        name = _metric_name(s)
        found = (s.kind, name, f"{name}{_label_text(s.labels)}")
        _remember(_SERIES, shape, found)
    return found[1], found[2]


def _header(name: str, s: Stat) -> str:
    key = (name, s.help)
    found = _HEADERS.get(key)
    if found is None or found[0] is not s.kind:
        kind = "gauge" if s.kind is StatKind.INFO else s.kind.value
        found = (s.kind, f"# HELP {name} {_escape_help(s.help)}\n# TYPE {name} {kind}\n")
        _remember(_HEADERS, key, found)
    return found[1]


def render_metrics(stats: Iterable[Stat]) -> str:
    """Prometheus text exposition format (0.0.4), one HELP/TYPE block per metric.

    Samples of one metric are grouped under its block even when the
    figures come in apart: Prometheus rejects a metric split in two. A
    sample whose name and labels came before is left out rather than sent
    twice, which Prometheus would reject as a whole.
    """
    blocks: dict[str, tuple[Stat, list[str]]] = {}
    seen: set[str] = set()
    for s in stats:
        if not s.metrics:
            continue
        name, series = _series(s)
        block = blocks.get(name)
        if block is None:
            block = blocks[name] = (s, [])
        elif block[0].kind is not s.kind:
            continue  # one name, one type
        samples = block[1]
        if s.kind is StatKind.INFO:
            values = s.value if isinstance(s.value, tuple) else (s.value,)
            label = s.name[:-5] if s.name.endswith("_info") else s.name
            for v in values:
                assert isinstance(v, str)
                info = f"{name}{_label_text([*s.labels, (label, v)])}"
                if info not in seen:
                    seen.add(info)
                    samples.append(f"{info} 1\n")
        elif series not in seen:
            assert isinstance(s.value, int | float)
            seen.add(series)
            samples.append(f"{series} {_metric_number(s.value)}\n")
    return "".join(_header(name, first) + "".join(samples)
                   for name, (first, samples) in blocks.items())


def location_statistics(store: LocationStore, members: int | None) -> list[Stat]:
    """The figures of the registrations, and of the SIP group when ``members`` is known.

    The tree adds them to the daemon's for ``status`` and ``metrics``; a
    caller without a tree, and so without its list of the group's members,
    passes None and gets the same figures but ``users``.
    """
    loc = store.statistics()
    out = [] if members is None else [Stat("users", members, "Members of the SIP group.")]
    out += [
        Stat("registered_users", store.user_count(), "Users with at least one contact."),
        Stat("aors", loc.aors, "Addresses of record with at least one contact."),
        Stat("contacts", loc.bindings, "Registered contacts (bindings)."),
        Stat("static_contacts", loc.static_bindings, "Contacts that never expire."),
        Stat("contacts_added", loc.added, "Contacts added since start.",
             StatKind.COUNTER, status=False),
        Stat("contacts_removed", loc.removed, "Contacts removed since start (any reason).",
             StatKind.COUNTER, status=False),
        Stat("contacts_expired", loc.expired, "Contacts that expired since start.",
             StatKind.COUNTER, status=False),
    ]
    return out


# --- the tree --------------------------------------------------------------------


def _default_owns(user: str, aor: str) -> bool:
    # Until the alias map lands a user owns exactly the AOR named after them.
    return aor == user


def _nothing(_user: str) -> Sequence[str]:
    return ()


def _default_refusal(user: str, b: Binding) -> tuple[int, str] | None:
    problem = check_binding(b)
    return None if problem is None else (errno.EINVAL, problem)


# Surrogates that surrogateescape did not make (it uses U+DC80..U+DCFF for
# undecodable bytes): they cannot be encoded at all.
_LONE_SURROGATE_RE = re.compile("[\ud800-\udc7f\udd00-\udfff]")


def _encode(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        # Show such a character as U+FFFD rather than make the whole file
        # unreadable; escaped bytes still come out as the bytes they were.
        return _LONE_SURROGATE_RE.sub("\ufffd", text).encode("utf-8", "surrogateescape")


def _decode_write(data: bytes) -> str:
    """The text of one write to a line-oriented node (EFBIG, EINVAL otherwise)."""
    if len(data) > MAX_WRITE:
        raise TreeError(errno.EFBIG, f"more than {MAX_WRITE} bytes in one write")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TreeError(errno.EINVAL, f"not UTF-8 (byte {e.start})") from None


def _components(path: str) -> list[str] | None:
    """The names along ``path``; None when it cannot name a node ("." or "..")."""
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        return None
    return parts


ContactsMode = Literal["append", "replace"]


class Tree:
    """The ``/run/sr`` tree over a location store, the SIP group and user configs.

    ``members`` returns the current members of the SIP group; it is called
    on every lookup, so it must be cheap: the daemon refreshes a cached
    tuple from NSS in a worker thread and returns it (the same tuple
    object is indexed once; anything else is re-indexed on every call).
    ``owns(user, aor)`` says whether ``user`` may hold bindings for
    ``aor``. ``max_contacts`` (the registrar's limit per AOR, None for
    none) refuses a contacts write that would grow an AOR beyond it.
    ``statistics`` supplies the daemon's figures (version, uptime, listen
    addresses, transactions, calls, messages); the tree adds the location
    figures. ``alias_map``, ``aliases_of`` and ``calls_of`` fill the
    ``aliases`` and ``calls`` files (empty until the daemon has them).
    ``refusal(user, binding)`` is the daemon's one check of every binding
    (``(errno, reason)`` or None): a contact at this server, a trunk or the
    gateway, a line that could not be reloaded; the default checks only
    the line. ``events`` holds the event streams (one is made when none is
    given): their files' sizes and times come from it.
    ``clock`` stamps changes heard through the store subscription; without
    it the caller must feed :meth:`note_change` itself. Not thread safe:
    the trio thread owns it, like the store.
    """

    def __init__(
        self,
        store: LocationStore,
        members: Callable[[], Iterable[User]],
        *,
        clock: Callable[[], float] | None = None,
        owns: Callable[[str, str], bool] = _default_owns,
        max_contacts: int | None = None,
        statistics: StatisticsProvider | None = None,
        alias_map: Callable[[], str] | None = None,
        aliases_of: Callable[[str], Sequence[str]] = _nothing,
        calls_of: Callable[[str], Sequence[str]] = _nothing,
        refusal: Callable[[str, Binding], tuple[int, str] | None] = _default_refusal,
        root_uid: int = 0,
        root_gid: int = 0,
        started: float | None = None,
        events: Events | None = None,
    ) -> None:
        self.store = store
        self.configs = UserConfigs()
        self._members = members
        self._owns = owns
        self.max_contacts = max_contacts
        self._statistics = statistics
        self._alias_map = alias_map
        self._aliases_of = aliases_of
        self._calls_of = calls_of
        self._refusal = refusal
        self._root_uid = root_uid
        self._root_gid = root_gid
        self._clock = clock
        if started is None:
            started = clock() if clock is not None else 0.0
        self.started = started
        self.events = events if events is not None else Events(started)
        self._mtimes: dict[str, float] = {}
        self._listeners: list[Callable[[str], None]] = []
        # Memo of the last member tuple, keyed on the object the provider
        # returned: a daemon that hands back the same tuple until its next
        # NSS refresh costs one identity check per lookup.
        self._members_src: object = None
        self._members_by_name: dict[str, User] = {}
        self._known_members: frozenset[str] | None = None
        self._applying = False
        if clock is not None:
            store.subscribe(self._on_store_change)
            store.subscribe_reachability(self._on_reach_change)

    # ------------------------------------------------------------ members

    def members(self) -> Mapping[str, User]:
        """The users who have a directory now, by name (do not modify)."""
        found = self._members()
        # Only a tuple is memoised: a list could change in place behind us.
        if found is not self._members_src or not isinstance(found, tuple):
            by_name: dict[str, User] = {}
            for user in found:
                # A user named like a top-level file would shadow it (or be
                # shadowed); such a user gets no directory rather than a
                # surprising one.
                if valid_name(user.name) and user.name not in _ROOT_ENTRIES:
                    by_name[user.name] = user
            self._members_src = found
            self._members_by_name = by_name
        return self._members_by_name

    def member(self, name: str) -> User | None:
        return self.members().get(name)

    def _require_member(self, name: str) -> User:
        user = self.member(name)
        if user is None:
            raise TreeError(errno.ENOENT, f"no SIP user {name[:64]!r}")
        return user

    def sync_members(self, now: float) -> tuple[list[str], list[str]]:
        """Compare the group with the last call: ``(added, removed)`` user names.

        Call after refreshing the member list; a change stamps the root
        directory's mtime, notifies listeners of ``/`` and forgets the
        per-node times of users who left.
        """
        names = frozenset(self.members())
        before = self._known_members
        self._known_members = names
        if before is None:
            return sorted(names), []
        added, removed = sorted(names - before), sorted(before - names)
        for name in removed:
            prefix = f"/{name}/"
            for path in [p for p in self._mtimes if p.startswith(prefix)]:
                del self._mtimes[path]
        if added or removed:
            self.touch("/", now)
        return added, removed

    # ---------------------------------------------------------- structure

    def _node(self, kind: Kind, path: str, user: User | None = None, key: str | None = None) -> Node:
        mode, is_dir, owned = _LAYOUT[kind]
        if owned:
            assert user is not None
            uid, gid = user.uid, user.gid
        else:
            uid, gid = self._root_uid, self._root_gid
        return Node(path, kind, mode, uid, gid, is_dir, user.name if user else None, key)

    def resolve(self, path: str) -> Node:
        """The node at ``path``; :class:`TreeError` ENOENT, or ENOTDIR below a file."""
        parts = _components(path)
        if parts is None:
            raise TreeError(errno.ENOENT, f"no such node {path[:200]!r}")
        node = self._node(Kind.ROOT, "/")
        for i, name in enumerate(parts):
            if not node.is_dir:
                raise TreeError(errno.ENOTDIR, f"{node.path} is not a directory")
            child = self._child(node, name)
            if child is None:
                raise TreeError(errno.ENOENT, f"no such node {'/' + '/'.join(parts[: i + 1])!r}")
            node = child
        return node

    def lookup(self, path: str) -> Node | None:
        """The node at ``path``, or None if there is none."""
        try:
            return self.resolve(path)
        except TreeError:
            return None

    def _child(self, parent: Node, name: str) -> Node | None:
        base = "" if parent.path == "/" else parent.path
        path = f"{base}/{name}"
        if parent.kind is Kind.ROOT:
            kind = _ROOT_ENTRIES.get(name)
            if kind is not None:
                return self._node(kind, path)
            user = self.member(name)
            return None if user is None else self._node(Kind.USER, path, user)
        assert parent.user is not None
        user = self.member(parent.user)
        if user is None:
            return None
        if parent.kind is Kind.USER:
            kind = _USER_ENTRIES.get(name)
            return None if kind is None else self._node(kind, path, user)
        if parent.kind is Kind.CONFIG:
            if self.configs.get(user.name).get(name) is None:
                return None
            return self._node(Kind.SETTING, path, user, name)
        return None

    def listdir(self, path: str) -> list[str]:
        """The names in a directory, in a stable order."""
        node = self.resolve(path)
        if not node.is_dir:
            raise TreeError(errno.ENOTDIR, f"{node.path} is not a directory")
        if node.kind is Kind.ROOT:
            return [*_ROOT_ENTRIES, *sorted(self.members())]
        if node.kind is Kind.USER:
            return list(_USER_ENTRIES)
        assert node.user is not None
        return sorted(self.configs.get(node.user).values)

    # ------------------------------------------------------------ reading

    def render(self, path: str, now: float) -> bytes:
        """The content of the file at ``path`` as of ``now``."""
        return self._render(self.resolve(path), now)

    def _render(self, node: Node, now: float) -> bytes:
        if node.is_dir:
            raise TreeError(errno.EISDIR, f"{node.path} is a directory")
        kind = node.kind
        if kind in STREAMS:
            # A stream's content is read through a cursor; this is for a
            # caller that wants "the file": what an open would begin with.
            log = self.events.log_of(node.user)
            return b"" if log is None else log.read(log.oldest, log.end - log.oldest)
        if kind is Kind.STATUS:
            return _encode(render_status(self.statistics()))
        if kind is Kind.METRICS:
            return _encode(render_metrics(self.statistics()))
        if kind is Kind.ALIAS_MAP:
            return _encode(self._alias_map() if self._alias_map is not None else "")
        if kind is Kind.CONTROL:
            return b""
        assert node.user is not None
        if kind is Kind.CONTACTS:
            return _encode(self.render_contacts(node.user, now))
        if kind is Kind.SETTING:
            assert node.key is not None
            value = self.configs.get(node.user).get(node.key)
            return _encode("" if value is None else value + "\n")
        if kind is Kind.USER_ALIASES:
            return _encode("".join(a + "\n" for a in self._aliases_of(node.user)))
        return _encode("".join(c + "\n" for c in self._calls_of(node.user)))

    def contacts_of(self, user: str) -> list[Binding]:
        """The user's bindings in file order.

        By AOR, then oldest registration first, then binding key: a new
        binding shows up at the end of its AOR's lines (where ``>>`` put
        it) and a refresh does not move a line.
        """
        return sorted(
            self.store.bindings_of_user(user), key=lambda b: (b.aor, b.registered, b.key)
        )

    def render_contacts(self, user: str, now: float) -> str:
        # A binding past its expiry that the store's timer has not removed
        # yet is already gone for SIP; showing it as "expires=0" would also
        # make a write-back of the file read as a removal request.
        reach = self.store.reachability
        return "".join(
            format_line(b, now, reach=reach(b.aor, b.key)) + "\n"
            for b in self.contacts_of(user)
            if b.expires is None or b.expires > now
        )

    def attributes(self, path: str, now: float) -> Attributes:
        node = self.resolve(path)
        if node.is_dir:
            size = 0
            if node.kind is Kind.ROOT:
                nlink = 2 + len(self.members())
            else:
                nlink = 3 if node.kind is Kind.USER else 2
        elif node.kind in STREAMS:
            size, changed = self.events.size(node.user)
            return Attributes(node, size, changed, 1)
        else:
            size = len(self._render(node, now))
            nlink = 1
        return Attributes(node, size, self.mtime(node, now), nlink)

    def mtime(self, node: Node, now: float) -> float:
        """When ``node`` last changed; live figures (status, metrics) change all the time."""
        if node.kind in (Kind.STATUS, Kind.METRICS, Kind.CALLS):
            return now
        return self._mtimes.get(node.path, self.started)

    def statistics(self) -> list[Stat]:
        """The provider's figures, then the tree's own (unless the provider gave them)."""
        given = list(self._statistics()) if self._statistics is not None else []
        names = {s.name for s in given}
        own = location_statistics(self.store, len(self.members()))
        return given + [s for s in own if s.name not in names]

    # -------------------------------------------------------- change times

    def listen(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(path)`` whenever a node's content or a directory's entries change.

        Paths: ``/`` (members), ``/<user>/contacts``, ``/<user>/config``
        (a key set or removed), ``/<user>/config/<key>``, or whatever
        :meth:`touch` is given. For the FUSE adapter's cache invalidation.
        """
        self._listeners.append(listener)

    def touch(self, path: str, now: float) -> None:
        """Record that ``path`` changed at ``now`` and tell the listeners."""
        self._mtimes[path] = now
        for listener in self._listeners:
            listener(path)

    def note_change(self, change: Change, now: float) -> None:
        """Stamp the contacts of the user(s) a store change touched."""
        users = {change.binding.user}
        if change.previous is not None:
            users.add(change.previous.user)
        for user in sorted(users):
            self.touch(f"/{user}/contacts", now)

    def _on_store_change(self, change: Change) -> None:
        # Changes made by apply_contacts are stamped with its own ``now``.
        if self._applying or self._clock is None:
            return
        self.note_change(change, self._clock())

    def _on_reach_change(self, binding: Binding) -> None:
        # What a probe found shows in the contacts file: its time changes too.
        assert self._clock is not None
        self.touch(f"/{binding.user}/contacts", self._clock())

    # ------------------------------------------------------------ writing

    def check_open(self, path: str, *, write: bool) -> Node:
        """The node, if it may be opened this way (EISDIR, EACCES otherwise)."""
        node = self.resolve(path)
        if write:
            self._writable(node)
        return node

    def _writable(self, node: Node) -> None:
        if node.is_dir:
            raise TreeError(errno.EISDIR, f"{node.path} is a directory")
        if node.kind is Kind.ALIAS_MAP and self._alias_map is None:
            raise TreeError(errno.EOPNOTSUPP, "this daemon has no alias map")
        if not node.writable:
            raise TreeError(errno.EACCES, f"{node.path} is read-only")

    def check_write(
        self, path: str, data: bytes, now: float, *, complete: bool, append: bool = False
    ) -> None:
        """Validate a write in progress without applying it.

        With ``complete=False`` only the finished lines are checked (the
        FUSE ``write`` handler, so the shell sees EINVAL); with
        ``complete=True`` everything is (what :meth:`commit` would refuse).
        """
        node = self._write_target(path)
        if node.kind in (Kind.ALIAS_MAP, Kind.CONTROL):
            if not complete:
                data = data[: data.rfind(b"\n") + 1]
            if node.kind is Kind.CONTROL:
                parse_control(data)
            else:
                self.parse_alias_lines(data, append=append)
            return
        assert node.user is not None
        if node.kind is Kind.CONTACTS:
            if not complete:
                data = data[: data.rfind(b"\n") + 1]
            self.parse_contacts(node.user, data, now)
            return
        assert node.key is not None
        if not complete:
            end = data.find(b"\n")
            if end < 0:
                return
            if data[end + 1 :]:
                raise TreeError(errno.EINVAL, f"{node.key}: a setting is one line")
        value = self._config_value(node.key, data)
        if value is not None:
            self._validate_setting(node.user, node.key, value)

    def commit(self, path: str, data: bytes, *, append: bool, now: float) -> WriteResult:
        """Validate and apply a finished write to the node at ``path`` at once."""
        return self.apply(self.prepare(path, data, append=append, now=now), now)

    def prepare(self, path: str, data: bytes, *, append: bool, now: float) -> WriteResult:
        """Validate a finished write to ``path`` without applying it.

        Raises :class:`TreeError` for a refused write. The daemon makes the
        result durable first and then applies it (:meth:`apply`), so a
        write that cannot reach the disk is refused with that error and
        leaves memory as it was.
        """
        node = self._write_target(path)
        if node.kind is Kind.ALIAS_MAP:
            self.parse_alias_lines(data, append=append)
            return WriteResult(aliases=AliasMapWrite(data, append))
        if node.kind is Kind.CONTROL:
            return WriteResult(commands=parse_control(data))
        assert node.user is not None
        if node.kind is Kind.CONTACTS:
            mode: ContactsMode = "append" if append else "replace"
            self.plan_contacts(node.user, data, mode, now)
            return WriteResult(contacts=ContactsWrite(node.user, data, mode))
        assert node.key is not None
        return WriteResult(config=self._config_write(node.user, node.key, data))

    def _config_write(self, user: str, key: str, data: bytes) -> ConfigChange:
        self._require_member(user)
        if key not in userconfig.KEYS:
            raise TreeError(errno.ENOENT, f"no such setting {key[:40]!r}")
        value = self._config_value(key, data)
        if value is not None:
            value = self._validate_setting(user, key, value)
        return self.config_change(user, key, value)

    def apply(self, result: WriteResult, now: float) -> WriteResult:
        """Put a prepared write in force in memory; the store changes it made."""
        if result.contacts is not None:
            w = result.contacts
            return replace(result, changes=tuple(self.apply_contacts(w.user, w.data, w.mode, now)))
        if result.config is not None:
            self.apply_config_change(result.config, now)
        return result

    def _write_target(self, path: str) -> Node:
        """The node a write goes to: an existing writable one, or a config key being created."""
        try:
            node = self.resolve(path)
        except TreeError as e:
            if e.errno != errno.ENOENT:
                raise
            parts = _components(path)
            parent = self.lookup("/" + "/".join(parts[:-1])) if parts else None
            if parent is None or parent.kind is not Kind.CONFIG:
                raise
            node = self.check_create(path)
        self._writable(node)
        return node

    def check_create(self, path: str) -> Node:
        """The node a ``create`` of ``path`` would make: only a known key in ``config/``.

        The node is not there until a write to it is committed.
        """
        parts = _components(path)
        if not parts:
            raise TreeError(errno.EEXIST, "the root exists")
        parent = self.resolve("/" + "/".join(parts[:-1]))
        name = parts[-1]
        if not parent.is_dir:
            raise TreeError(errno.ENOTDIR, f"{parent.path} is not a directory")
        if parent.kind is not Kind.CONFIG:
            raise TreeError(errno.EPERM, f"cannot create files in {parent.path}")
        assert parent.user is not None
        if name not in userconfig.KEYS:
            known = ", ".join(userconfig.KEYS)
            raise TreeError(errno.EPERM, f"unknown setting {name[:40]!r}; known: {known}")
        user = self._require_member(parent.user)
        return self._node(Kind.SETTING, f"{parent.path}/{name}", user, name)

    def unlink(self, path: str, now: float) -> ConfigChange:
        """``rm``: only a config key can go. Applied at once."""
        change = self.prepare_unlink(path)
        self.apply_config_change(change, now)
        return change

    def prepare_unlink(self, path: str) -> ConfigChange:
        """The config edit ``rm path`` makes, not applied yet (ENOENT when not set)."""
        node = self.resolve(path)
        if node.is_dir:
            raise TreeError(errno.EISDIR, f"{node.path} is a directory")
        if node.kind is not Kind.SETTING:
            raise TreeError(errno.EPERM, f"{node.path} cannot be removed")
        assert node.user is not None and node.key is not None
        self._require_member(node.user)
        if self.configs.get(node.user).get(node.key) is None:
            raise TreeError(errno.ENOENT, f"{node.key[:40]!r} is not set")
        return self.config_change(node.user, node.key, None)

    # ----------------------------------------------------------- contacts

    def parse_alias_lines(self, data: bytes, *, append: bool = False) -> None:
        """Check a write to ``/aliases``; EINVAL names the first bad line.

        An appending write is checked against the map in force too, so a
        name given to a second owner is refused while the writer can still
        hear it (an error at close is lost on ``echo >>``).
        """
        text = _decode_write(data)
        members = self.members()
        if append and self._alias_map is not None:
            current = self._alias_map()
            text = current + ("\n" if current and not current.endswith("\n") else "") + text
        _, problems = parse_aliases(text, is_user=lambda name: name in members)
        refused = [p for p in problems if p.fatal]
        if refused:
            raise TreeError(errno.EINVAL, str(refused[0]))

    def parse_contacts(self, user: str, data: bytes, now: float) -> list[Binding]:
        """The bindings a write to ``user``'s contacts names; TreeError on any bad line.

        EINVAL for a line that does not parse (the reason names it), EACCES
        for an AOR the user does not own, EFBIG beyond :data:`MAX_WRITE`.
        """
        text = _decode_write(data)
        out: list[Binding] = []
        for number, line in content_lines(text):
            try:
                b = parse_line(line, user=user, default_aor=user, now=now)
            except LineError as e:
                raise TreeError(errno.EINVAL, f"line {number}: {e}") from None
            if not self._owns(user, b.aor):
                raise TreeError(errno.EACCES, f"line {number}: {user} does not own AOR {b.aor!r}")
            if not _is_removal(b, now):
                refused = self._refusal(user, b)
                if refused is not None:
                    raise TreeError(refused[0], f"line {number}: {refused[1]}")
            out.append(b)
        return out

    def plan_contacts(
        self, user: str, data: bytes, mode: ContactsMode, now: float
    ) -> list[Op]:
        """What a write to ``user``'s contacts would change in the store; TreeError if refused.

        Pure: everything is validated against the store as it is now and
        nothing is changed. Removals carry :attr:`RemoveReason.ADMIN`.
        """
        self._require_member(user)
        if mode not in ("append", "replace"):
            raise ValueError(f"mode must be 'append' or 'replace', not {mode!r}")
        wanted = self.parse_contacts(user, data, now)
        target: dict[tuple[str, str], Binding] = {}
        if mode == "replace":
            for b in wanted:
                ident = (b.aor, b.key)
                # A later line for the same binding wins, as it would line
                # by line; a removal line leaves it out of the set.
                target.pop(ident, None)
                if not _is_removal(b, now):
                    target[ident] = b
        self._check_limit(user, wanted, target, mode, now)
        ops: list[Op] = []
        if mode == "append":
            # Line by line: a later line sees what the earlier ones did.
            seen: dict[tuple[str, str], Binding | None] = {}
            for b in wanted:
                ident = (b.aor, b.key)
                old = seen[ident] if ident in seen else self.store.get(b.aor, b.key)
                if _is_removal(b, now):
                    if old is not None:
                        ops.append(Remove(b.aor, b.key, RemoveReason.ADMIN))
                    seen[ident] = None
                elif old is None or not _same(old, b):
                    ops.append(b)
                    seen[ident] = b
        else:
            for old in self.store.bindings_of_user(user):
                if (old.aor, old.key) not in target:
                    ops.append(Remove(old.aor, old.key, RemoveReason.ADMIN))
            for b in target.values():
                old = self.store.get(b.aor, b.key)
                if old is None or not _same(old, b):
                    ops.append(b)
        return ops

    def apply_contacts(
        self, user: str, data: bytes, mode: ContactsMode, now: float
    ) -> list[Change]:
        """Apply a write to ``user``'s contacts through the store; the changes made.

        Everything is validated before anything is changed. Removals are
        made with :attr:`RemoveReason.ADMIN`, so the subscribers (usrloc
        persister, wtmp) hear of them like of any other change.
        """
        return self.apply_ops(self.plan_contacts(user, data, mode, now), now)

    def apply_ops(self, ops: Iterable[Op], now: float) -> list[Change]:
        """Make planned contact changes, stamping the contacts files they touch."""
        self._applying = True
        try:
            changes = self.store.apply(ops)
        finally:
            self._applying = False
        touched = {c.binding.user for c in changes}
        touched.update(c.previous.user for c in changes if c.previous is not None)
        for name in sorted(touched):
            self.touch(f"/{name}/contacts", now)
        return changes

    def _check_limit(
        self,
        user: str,
        wanted: list[Binding],
        target: dict[tuple[str, str], Binding],
        mode: ContactsMode,
        now: float,
    ) -> None:
        """EDQUOT if the write would grow an AOR beyond ``max_contacts``.

        An AOR already over the limit (the limit was lowered) may keep its
        contacts and have them refreshed; it only may not grow.
        """
        limit = self.max_contacts
        if limit is None:
            return
        for aor in sorted({b.aor for b in wanted}):
            current = {b.key: b.user for b in self.store.lookup(aor)}
            if mode == "append":
                after = set(current)
                for b in wanted:
                    if b.aor == aor:
                        if _is_removal(b, now):
                            after.discard(b.key)
                        else:
                            after.add(b.key)
            else:
                after = {k for k, owner in current.items() if owner != user}
                after |= {k for (a, k) in target if a == aor}
            if len(after) > limit and len(after) > len(current):
                raise TreeError(
                    errno.EDQUOT,
                    f"AOR {aor!r} would have {len(after)} contacts; max_contacts is {limit}",
                )

    # ------------------------------------------------------------- config

    def config(self, user: str) -> UserConfig:
        return self.configs.get(user)

    def load_config(self, user: str, data: str | bytes | UserConfig | None,
                    now: float) -> UserConfig:
        """Take the user's ``~/.sr/config`` as read from disk (None: no file),
        as its text or already parsed.

        Keys whose value changed get ``now`` as their mtime; the problems
        of the returned config are for the daemon's log.
        """
        before = self.configs.get(user)
        after = self.configs.load(user, data)
        self._stamp_config(user, before, after, now)
        return after

    def forget_config(self, user: str) -> None:
        self.configs.forget(user)

    def _stamp_config(self, user: str, before: UserConfig, after: UserConfig, now: float) -> None:
        old, new = before.values, after.values
        changed = [k for k in set(old) | set(new) if old.get(k) != new.get(k)]
        if set(old) != set(new):
            self.touch(f"/{user}/config", now)
        for key in sorted(changed):
            path = f"/{user}/config/{key}"
            if key in new:
                self.touch(path, now)
            else:
                self._mtimes.pop(path, None)
                for listener in self._listeners:
                    listener(path)

    @staticmethod
    def _config_value(key: str, data: bytes) -> str | None:
        """The value a write to a config node carries; None for empty data."""
        if len(data) > _MAX_CONFIG_WRITE:
            raise TreeError(errno.EINVAL, f"{key}: value too long")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise TreeError(errno.EINVAL, f"{key}: not UTF-8") from None
        if text.endswith("\n"):
            text = text[:-1]
            if text.endswith("\r"):
                text = text[:-1]
        if "\n" in text:
            raise TreeError(errno.EINVAL, f"{key}: a setting is one line")
        return text if text.strip() else None

    def _validate_setting(self, user: str, key: str, value: str) -> str:
        try:
            value = userconfig.validate(key, value)
        except ConfigValueError as e:
            raise TreeError(errno.EINVAL, f"{key}: {e.reason}") from None
        if key == "caller_id" and not self._owns(user, value):
            raise TreeError(errno.EINVAL, f"caller_id: {user} does not own {value!r}")
        return value

    def apply_config(self, user: str, key: str, data: bytes, now: float) -> ConfigChange:
        """Set ``key`` from the data written to ``config/<key>``; empty data removes it.

        Returns the new file text for the daemon to write with
        :func:`srfs.files.home.write_file`; the in-memory config already holds it.
        """
        change = self._config_write(user, key, data)
        self.apply_config_change(change, now)
        return change

    def remove_config(self, user: str, key: str, now: float) -> ConfigChange:
        """``rm config/<key>``: ENOENT when the key is not set."""
        self._require_member(user)
        if self.configs.get(user).get(key) is None:
            raise TreeError(errno.ENOENT, f"{key[:40]!r} is not set")
        change = self.config_change(user, key, None)
        self.apply_config_change(change, now)
        return change

    def config_change(self, user: str, key: str, value: str | None) -> ConfigChange:
        """The edit that sets ``key`` to ``value`` (None: removes it) in the config as it is now.

        The value must be validated already. Computed again just before a
        write reaches the disk, so two edits of one user never undo each
        other.
        """
        member = self._require_member(user)
        before = self.configs.get(user)
        if before.get(key) == value:
            return ConfigChange(member, key, value, before.text, changed=False)
        if value is None:
            text = userconfig.remove_key(before.text, key)
        else:
            text = userconfig.set_value(before.text, key, value)
        return ConfigChange(member, key, value, text, changed=True)

    def apply_config_change(self, change: ConfigChange, now: float) -> None:
        """Put a config edit in force in memory (after the daemon wrote it)."""
        if not change.changed:
            return
        user = change.user.name
        before = self.configs.get(user)
        after = userconfig.parse(change.text)
        self.configs.put(user, after)
        self._stamp_config(user, before, after, now)


def parse_control(data: bytes) -> tuple[str, ...]:
    """The commands of a write to ``/control``: a known one a line, blank lines skipped.

    Words may be separated by any run of blanks. Anything else refuses the
    whole write with EINVAL, naming the line.
    """
    text = _decode_write(data)
    commands = []
    for number, line in enumerate(text.splitlines(), 1):
        command = " ".join(line.split())
        if not command:
            continue
        if command not in CONTROL_COMMANDS:
            known = ", ".join(CONTROL_COMMANDS)
            raise TreeError(errno.EINVAL,
                            f"line {number}: unknown command {command[:60]!r}; known: {known}")
        commands.append(command)
    return tuple(commands)


def _is_removal(b: Binding, now: float) -> bool:
    return b.expires is not None and b.expires <= now


def _same(old: Binding, new: Binding) -> bool:
    """Whether ``new`` says nothing ``old`` does not (the file shows whole seconds)."""
    if (old.expires is None) != (new.expires is None):
        return False
    if old.expires is not None and new.expires is not None and abs(old.expires - new.expires) >= 1:
        return False
    return replace(new, expires=old.expires, registered=old.registered) == old


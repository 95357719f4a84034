"""The ``~/.sr/config`` format: a user's own settings.

One setting per line, ``#`` starts a comment line, blank lines are kept::

    # forward everything to my mobile while I'm away
    forward = tel:+441727238471
    dnd = no
    display_name = Jan Jansen

Rules, chosen so that both a hand-edited file and the daemon's rewrites
behave predictably:

- A line is ``key = value``; spaces around both are ignored. Keys are
  compared without regard to case and stored in lower case.
- ``#`` starts a comment only at the start of a line (after blanks): a
  display name may contain ``#``, and an inline comment would make that
  ambiguous.
- A value may be wrapped in one pair of double quotes, which are removed;
  nothing inside them is special. That is the only way to keep a value
  that itself starts and ends with a quote.
- The **last** valid line for a key wins, as in shell-style and systemd
  files: ``echo 'dnd = yes' >> ~/.sr/config`` then does what it says. A
  line with a bad value is ignored (reported as a problem), so an earlier
  valid line for that key stays in force.
- Unknown keys and unparsable lines are kept verbatim by every rewrite and
  reported as problems; sipd ignores them. A newer sipd may know them.
- Rewrites (:func:`set_value`, :func:`remove_key`) keep every other line
  exactly as it was, in order. Setting a key replaces the line in force
  and drops other lines for the same key, so no stale duplicate is left
  to take over after a later edit; a new key is appended.

The keys, their validators and their documentation live in one table,
:data:`KEYS`; nothing else in srfs lists them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from srfs.lines import Problem

__all__ = [
    "EMPTY",
    "KEYS",
    "MAX_PROBLEMS",
    "ConfigValueError",
    "Key",
    "UserConfig",
    "UserConfigs",
    "decode",
    "encode",
    "parse",
    "remove_key",
    "set_value",
    "validate",
]


class ConfigValueError(ValueError):
    """A value (or key) that cannot be used; ``reason`` says why, for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


# --- validators ----------------------------------------------------------------

_DISPLAY_NAME_MAX = 64
# Besides C0/C1 controls and line separators, the bidirectional overrides and
# isolates: a caller's name shown on a phone must not be able to reverse the
# text around it.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _display_name(value: str) -> str:
    value = value.strip()
    if not value:
        raise ConfigValueError("empty display name")
    if len(value) > _DISPLAY_NAME_MAX:
        raise ConfigValueError(f"longer than {_DISPLAY_NAME_MAX} characters")
    for c in value:
        if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in _BIDI_CONTROLS:
            raise ConfigValueError(f"control character U+{ord(c):04X} not allowed")
    return value


_YES = frozenset({"yes", "true", "on", "1"})
_NO = frozenset({"no", "false", "off", "0"})


def _yes_no(value: str) -> str:
    word = value.strip().lower()
    if word in _YES:
        return "yes"
    if word in _NO:
        return "no"
    raise ConfigValueError(f"expected yes or no, not {value.strip()[:20]!r}")


_URI_MAX = 256
# Deliberately small, like the contact URI check in srfs.files.usrloc: srfs does
# not parse SIP. What matters is that the value is plainly a URI and holds
# nothing that could break out of a header (spaces, quotes, angle brackets,
# control characters). URI headers ("?subject=...") are refused: a forward
# target has no use for them.
_PARAMS = r"(?:;[A-Za-z0-9\-_.!~*'()%&+$\[\]/:=]+)*"
_SIP_URI_RE = re.compile(
    r"sips?:"
    r"(?:[A-Za-z0-9\-_.!~*'()%&=+$,;?/]+(?::[A-Za-z0-9\-_.!~*'()%&=+$,]*)?@)?"
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9\-.]*[A-Za-z0-9])?)"
    r"(?::(?P<port>[0-9]{1,5}))?" + _PARAMS,
    re.IGNORECASE | re.ASCII,
)
# RFC 3966: a global number ("+" and digits with visual separators) or a
# local one (digits, A-F, * and #), then parameters such as phone-context.
_TEL_URI_RE = re.compile(
    r"tel:(?:\+[0-9().\-]*[0-9][0-9().\-]*|[0-9A-Fa-f*#().\-]*[0-9A-Fa-f*#][0-9A-Fa-f*#().\-]*)"
    + _PARAMS,
    re.IGNORECASE | re.ASCII,
)


def _uri(value: str) -> str:
    value = value.strip()
    if not value:
        raise ConfigValueError("empty URI")
    if len(value) > _URI_MAX:
        raise ConfigValueError(f"URI longer than {_URI_MAX} characters")
    scheme, colon, rest = value.partition(":")
    scheme = scheme.lower()
    value = scheme + colon + rest
    if scheme in ("sip", "sips"):
        m = _SIP_URI_RE.fullmatch(value)
        if m and (m.group("port") is None or 0 < int(m.group("port")) < 65536):
            return value
        raise ConfigValueError(f"not a valid {scheme}: URI: {value[:60]!r}")
    if scheme == "tel":
        if _TEL_URI_RE.fullmatch(value):
            return value
        raise ConfigValueError(f"not a valid tel: URI: {value[:60]!r}")
    raise ConfigValueError(f"expected a sip:, sips: or tel: URI, not {value[:60]!r}")


_RING_TIMEOUT_MIN = 1
_RING_TIMEOUT_MAX = 300
_SMALL_INT_RE = re.compile(r"[0-9]{1,6}", re.ASCII)


def _ring_timeout(value: str) -> str:
    value = value.strip()
    # Not int(): it takes "+5", " 5", "5_0" and digits of other scripts.
    if not _SMALL_INT_RE.fullmatch(value):
        raise ConfigValueError(f"expected whole seconds, not {value[:20]!r}")
    seconds = int(value)
    if not _RING_TIMEOUT_MIN <= seconds <= _RING_TIMEOUT_MAX:
        raise ConfigValueError(
            f"must lie between {_RING_TIMEOUT_MIN} and {_RING_TIMEOUT_MAX} seconds"
        )
    return str(seconds)


# A user name or a number: "jan", "jan.smith", "1003", "+441727238471".
# Whether the user owns it is checked where the aliases are known.
_CALLER_ID_RE = re.compile(r"\+?[A-Za-z0-9][A-Za-z0-9._\-]{0,63}", re.ASCII)


def _caller_id(value: str) -> str:
    value = value.strip()
    if not _CALLER_ID_RE.fullmatch(value):
        raise ConfigValueError(f"expected one of your AORs or numbers, not {value[:40]!r}")
    return value


@dataclass(frozen=True, slots=True)
class Key:
    """One user setting: its validator (returns the normalised value) and its doc."""

    name: str
    validate: Callable[[str], str]
    doc: str
    example: str


def _table(*keys: Key) -> Mapping[str, Key]:
    return MappingProxyType({k.name: k for k in keys})


#: Every user-level setting, in the order the documentation lists them.
KEYS: Mapping[str, Key] = _table(
    Key("display_name", _display_name,
        "The name shown to the people you call (up to 64 characters).", "Jan Jansen"),
    Key("dnd", _yes_no,
        "Do not disturb: yes rejects incoming calls as busy "
        "(also accepted: true/false, on/off, 1/0).", "no"),
    Key("forward", _uri,
        "Forward every incoming call to this sip:, sips: or tel: URI.", "tel:+441727238471"),
    Key("forward_noanswer", _uri,
        "Forward a call to this URI when nobody answers within ring_timeout.",
        "sip:voicemail@example.org"),
    Key("ring_timeout", _ring_timeout,
        "Seconds to ring your phones before giving up or forwarding (1-300).", "30"),
    Key("caller_id", _caller_id,
        "The identity your outgoing calls show: one of your own AORs or numbers.", "1003"),
)


def validate(key: str, value: str) -> str:
    """The normalised form of ``value`` for ``key``; :class:`ConfigValueError` if unusable."""
    spec = KEYS.get(key.lower())
    if spec is None:
        raise ConfigValueError(f"unknown setting {key[:40]!r}")
    return spec.validate(value)


# --- the file -------------------------------------------------------------------


def decode(data: bytes) -> str:
    """File bytes to text; bytes that are not UTF-8 survive :func:`encode`."""
    return data.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


_KEY_RE = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}", re.ASCII)


def _split_lines(text: str) -> list[str]:
    # Only "\n" ends a line: str.splitlines() would also cut at form feeds
    # and Unicode separators, and so change lines a rewrite only passes on.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def _split(line: str) -> tuple[str, str] | str | None:
    """``(key, raw value)``, None for a comment or blank, or why the line is bad."""
    body = line.strip()
    if not body or body.startswith("#"):
        return None
    key, eq, value = body.partition("=")
    key = key.strip()
    if not eq:
        return "expected key = value"
    if not _KEY_RE.fullmatch(key):
        return f"bad key {key[:40]!r}"
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return key.lower(), value


def _render(key: str, value: str) -> str:
    # Quote only when the quotes would otherwise be taken off on reading.
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = f'"{value}"'
    return f"{key} = {value}"


#: Problems a parsed config keeps; the rest are only counted. A file of a
#: million bad lines must not become a million objects held for its user.
MAX_PROBLEMS = 10


@dataclass(frozen=True, slots=True)
class UserConfig:
    """A parsed config file: the values in force, the problems, and the text itself.

    ``values`` holds only known keys with valid values, normalised. ``text``
    is what was parsed, so edits can keep the user's comments and lines.
    ``problems`` holds the first :data:`MAX_PROBLEMS` problems, in line
    order, and ``problem_count`` counts them all.
    """

    text: str = ""
    values: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    problems: tuple[Problem, ...] = ()
    problem_count: int = 0

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def flag(self, key: str) -> bool:
        """A yes/no setting as a bool (unset is no)."""
        return self.values.get(key) == "yes"

    def integer(self, key: str) -> int | None:
        value = self.values.get(key)
        return None if value is None else int(value)

    def set(self, key: str, value: str) -> UserConfig:
        """This config with ``key`` set (see :func:`set_value`)."""
        return parse(set_value(self.text, key, value))

    def remove(self, key: str) -> UserConfig:
        return parse(remove_key(self.text, key))


#: The config of a user without a file.
EMPTY = UserConfig()


def parse(data: str | bytes) -> UserConfig:
    """Parse a config file; nothing is fatal, every unused line is a problem."""
    text = decode(data) if isinstance(data, bytes) else data
    values: dict[str, str] = {}
    where: dict[str, int] = {}
    problems: list[Problem] = []
    count = 0

    def problem(lineno: int, reason: str) -> None:
        nonlocal count
        count += 1
        if len(problems) < MAX_PROBLEMS:
            problems.append(Problem(lineno, reason))

    for lineno, raw in enumerate(_split_lines(text), start=1):
        parsed = _split(raw)
        if parsed is None:
            continue
        if isinstance(parsed, str):
            problem(lineno, parsed)
            continue
        key, raw_value = parsed
        spec = KEYS.get(key)
        if spec is None:
            problem(lineno, f"unknown key {key!r} (ignored)")
            continue
        try:
            value = spec.validate(raw_value)
        except ConfigValueError as e:
            problem(lineno, f"{key}: {e.reason} (line ignored)")
            continue
        if key in where:
            problem(lineno, f"{key} set again; line {where[key]} is overridden")
        values[key] = value
        where[key] = lineno
    return UserConfig(text, MappingProxyType(values), tuple(problems), count)


def _key_of(line: str) -> str | None:
    parsed = _split(line)
    return parsed[0] if isinstance(parsed, tuple) else None


def _join(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


def set_value(text: str, key: str, value: str) -> str:
    """``text`` with ``key`` set to the validated ``value``.

    The last line for the key (the one in force) is replaced where it is
    and other lines for the key are dropped; without one the line is
    appended. Every other line is kept byte for byte. Raises
    :class:`ConfigValueError` for an unknown key or a bad value.
    """
    key = key.lower()
    value = validate(key, value)
    new_line = _render(key, value)
    lines = _split_lines(text)
    positions = [i for i, line in enumerate(lines) if _key_of(line) == key]
    if not positions:
        return _join([*lines, new_line])
    keep = positions[-1]
    drop = set(positions[:-1])
    out = [new_line if i == keep else line for i, line in enumerate(lines) if i not in drop]
    return _join(out)


def remove_key(text: str, key: str) -> str:
    """``text`` without any line for ``key`` (known or not); other lines as they were."""
    key = key.lower()
    lines = _split_lines(text)
    if not any(_key_of(line) == key for line in lines):
        # Unchanged, byte for byte (a missing final newline included).
        return text
    return _join([line for line in lines if _key_of(line) != key])


class UserConfigs:
    """The parsed config of every user, in memory; the daemon loads it, the tree reads it.

    Pure bookkeeping, no I/O: the daemon reads ``~/.sr/config`` (through
    :class:`srfs.files.home.FileCache`, so hand edits are seen) and calls
    :meth:`load`; edits made through ``/run/sr`` come back as new text for
    the daemon to write. Not thread safe: keep it in the trio thread.
    """

    def __init__(self) -> None:
        self._configs: dict[str, UserConfig] = {}

    def get(self, user: str) -> UserConfig:
        """The user's config; :data:`EMPTY` when none was loaded."""
        return self._configs.get(user, EMPTY)

    def load(self, user: str, data: str | bytes | UserConfig | None) -> UserConfig:
        """Parse and keep the user's file (None: the user has no file)."""
        if data is None:
            config = EMPTY
        elif isinstance(data, UserConfig):
            config = data
        else:
            config = parse(data)
        self._configs[user] = config
        return config

    def put(self, user: str, config: UserConfig) -> None:
        self._configs[user] = config

    def forget(self, user: str) -> None:
        self._configs.pop(user, None)

    def __contains__(self, user: object) -> bool:
        return user in self._configs

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._configs))

    def __len__(self) -> int:
        return len(self._configs)

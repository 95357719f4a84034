"""The ``~/.sr/passwd`` format: digest credentials, compatible with htdigest(1).

One entry per line::

    user:realm:MD5-HA1
    user:realm:MD5-HA1:sha256=SHA256-HA1
    user:realm::sha256=SHA256-HA1

MD5-HA1 is hex MD5(user:realm:password), exactly what ``htdigest`` writes;
SHA256-HA1 is hex SHA-256(user:realm:password) for RFC 7616/8760 clients.
Blank lines and lines starting with ``#`` are comments. Further fields of
the form ``key=value`` are ignored, for later algorithms.

Why the SHA-256 value is an extra field on the same line rather than a line
of its own:

- Apache's digest file reader takes the third field up to the next ``:``, so
  it still finds the MD5 value and ignores the rest; such a file still works
  with Apache and anything else that reads htdigest files.
- ``htdigest`` changing a password rewrites the first ``user:realm:`` line
  as a plain MD5 line and keeps every other line. On one line, the old
  SHA-256 value disappears together with the old MD5 value. On a separate
  line, the SHA-256 value of the *old* password would survive and keep
  working for SHA-256 clients: a password change that does not revoke the
  old password.
- An empty MD5 field gives a SHA-256-only entry for sites that refuse MD5;
  htdigest readers then see an entry that matches no password.

The first entry for a (user, realm) wins, as in Apache; later ones are
reported as problems. User and realm are compared exactly (case matters).
The text is decoded as UTF-8; bytes that are not UTF-8 are kept as they are
when the file is rewritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from srfs.accounts.digestcalc import base_algorithm, ha1
from srfs.lines import Problem

__all__ = [
    "Entry",
    "PasswdFile",
    "check_realm",
    "check_user",
    "decode",
    "encode",
    "parse",
]

_MD5_RE = re.compile(r"[0-9a-fA-F]{32}")
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
_KEY_RE = re.compile(r"[a-z0-9][a-z0-9-]*")


def decode(data: bytes) -> str:
    """File bytes to text; invalid UTF-8 survives a round trip through :func:`encode`."""
    return data.decode("utf-8", "surrogateescape")


def encode(text: str) -> bytes:
    """Text to file bytes (the inverse of :func:`decode`)."""
    return text.encode("utf-8", "surrogateescape")


def _bad_chars(value: str) -> bool:
    return ":" in value or any(not c.isprintable() for c in value)


def check_user(user: str) -> str | None:
    """Why ``user`` cannot be written into the file, or None if it can."""
    if not user:
        return "empty user name"
    if _bad_chars(user) or user != user.strip():
        return f"user name {user!r} has a colon, a control character or surrounding spaces"
    if user.startswith("#"):
        return f"user name {user!r} starts with '#'"
    return None


def check_realm(realm: str) -> str | None:
    """Why ``realm`` cannot be written into the file, or None if it can."""
    if not realm:
        return "empty realm"
    if _bad_chars(realm):
        return f"realm {realm!r} has a colon or a control character"
    return None


@dataclass(frozen=True, slots=True)
class Entry:
    """One credential line: HA1 values in lower-case hex, None when absent."""

    user: str
    realm: str
    md5: str | None
    sha256: str | None

    @classmethod
    def from_password(cls, user: str, realm: str, password: str) -> Entry:
        """The entry for a clear-text password, with both MD5 and SHA-256 HA1."""
        for problem in (check_user(user), check_realm(realm)):
            if problem:
                raise ValueError(problem)
        return cls(
            user=user,
            realm=realm,
            md5=ha1(user, realm, password, "MD5"),
            sha256=ha1(user, realm, password, "SHA-256"),
        )

    def ha1(self, algorithm: str = "MD5") -> str | None:
        """The stored HA1 for ``algorithm`` ('MD5', 'SHA-256', or their -sess forms)."""
        return self.md5 if base_algorithm(algorithm) == "MD5" else self.sha256

    def render(self) -> str:
        """The line for this entry, without a line break."""
        line = f"{self.user}:{self.realm}:{self.md5 or ''}"
        if self.sha256:
            line += f":sha256={self.sha256}"
        return line


def _parse_line(line: str) -> Entry | str:
    """An entry, or the reason the line is not one."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8"
    fields = line.split(":")
    if len(fields) < 3:
        return "expected user:realm:HA1"
    user, realm, md5, *extras = fields
    problem = check_user(user) or check_realm(realm)
    if problem:
        return problem
    if md5 and not _MD5_RE.fullmatch(md5):
        return "the MD5 HA1 is not 32 hex digits"
    sha256: str | None = None
    for extra in extras:
        key, sep, value = extra.partition("=")
        if not sep or not _KEY_RE.fullmatch(key):
            return f"bad field {extra!r} (expected key=value)"
        if key == "sha256":
            if not _SHA256_RE.fullmatch(value):
                return "the sha256 HA1 is not 64 hex digits"
            if sha256 is None:
                sha256 = value.lower()
        # Other keys: left for later algorithms, ignored here.
    if not md5 and sha256 is None:
        return "no HA1 at all"
    return Entry(user, realm, md5.lower() or None, sha256)


@dataclass(frozen=True, slots=True)
class _Line:
    text: str
    entry: Entry | None  # None for comments and unusable lines


class PasswdFile:
    """A parsed passwd file that can produce edited versions of its text.

    Edits keep every other line, comments and unusable lines included,
    exactly as they were.
    """

    def __init__(self, lines: list[_Line], problems: list[Problem]) -> None:
        # Use parse(); this takes what it produced.
        self._lines = tuple(lines)
        self.problems: tuple[Problem, ...] = tuple(problems)
        index: dict[tuple[str, str], Entry] = {}
        for line in self._lines:
            if line.entry is not None:
                index.setdefault((line.entry.user, line.entry.realm), line.entry)
        self._index = index

    @property
    def entries(self) -> tuple[Entry, ...]:
        """The entries in use, in file order (first one per user and realm)."""
        return tuple(self._index.values())

    def find(self, user: str, realm: str) -> Entry | None:
        return self._index.get((user, realm))

    def lookup(self, user: str, realm: str, algorithm: str = "MD5") -> str | None:
        """The HA1 for ``user`` in ``realm`` under ``algorithm``, or None.

        ``algorithm`` is the token from the digest exchange ('MD5',
        'SHA-256', their -sess forms; any case); ValueError for others.
        """
        entry = self._index.get((user, realm))
        return None if entry is None else entry.ha1(algorithm)

    def text(self) -> str:
        """The whole file, each line ending in a newline."""
        return "".join(line.text + "\n" for line in self._lines)

    def set_entry(self, entry: Entry) -> str:
        """The file's text with ``entry`` in place of the user's line for that realm.

        The first line for (user, realm) is replaced where it is, further
        ones are dropped so no stale credential survives; a new entry goes
        at the end.
        """
        key = (entry.user, entry.realm)
        out: list[str] = []
        placed = False
        for line in self._lines:
            if line.entry is not None and (line.entry.user, line.entry.realm) == key:
                if not placed:
                    out.append(entry.render())
                    placed = True
                continue
            out.append(line.text)
        if not placed:
            out.append(entry.render())
        return "".join(text + "\n" for text in out)

    def set(self, user: str, realm: str, password: str) -> str:
        """The text with a new password for ``user`` in ``realm`` (MD5 and SHA-256 HA1)."""
        return self.set_entry(Entry.from_password(user, realm, password))

    def delete(self, user: str, realm: str | None = None) -> str:
        """The text without ``user``'s entries for ``realm`` (every realm if None)."""
        out = [
            line.text
            for line in self._lines
            if line.entry is None
            or line.entry.user != user
            or (realm is not None and line.entry.realm != realm)
        ]
        return "".join(text + "\n" for text in out)


def index(data: bytes | str) -> dict[tuple[str, str], Entry]:
    """The entries in use by (user, realm), as :func:`parse` finds them, without
    the file's text: what a reader that never edits the file keeps (sipd
    keeps one per user it has seen)."""
    return parse(data)._index


def parse(data: bytes | str) -> PasswdFile:
    """Parse a passwd file; unusable lines are kept and listed in ``problems``."""
    text = decode(data) if isinstance(data, bytes) else data
    lines: list[_Line] = []
    problems: list[Problem] = []
    seen: dict[tuple[str, str], int] = {}
    # Only "\n" ends a line: str.splitlines() would also split on form
    # feeds and Unicode separators and so change lines it only passes on.
    raw_lines = text.split("\n")
    if raw_lines[-1] == "":
        raw_lines.pop()
    for lineno, raw in enumerate(raw_lines, start=1):
        stripped = raw.rstrip("\r")
        body = stripped.strip()
        if not body or body.startswith("#"):
            lines.append(_Line(stripped, None))
            continue
        result = _parse_line(stripped)
        if isinstance(result, str):
            problems.append(Problem(lineno, result))
            lines.append(_Line(stripped, None))
            continue
        key = (result.user, result.realm)
        if key in seen:
            problems.append(
                Problem(
                    lineno,
                    f"another entry for {result.user} in realm {result.realm} "
                    f"(line {seen[key]} is used)",
                )
            )
        else:
            seen[key] = lineno
        lines.append(_Line(stripped, result))
    return PasswdFile(lines, problems)

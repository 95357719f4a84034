"""Text shared by the line-based files and nodes: lines, quoted values, times.

``~/.sr/usrloc``, ``/run/sr/<user>/contacts`` and ``calls`` lines are
space-separated ``key=value`` fields; a value with spaces or quotes is
double-quoted with backslash escapes. Times are written as UTC
``YYYY-MM-DDTHH:MM:SSZ`` (``~/.sr/acc``, ``calls``). A line a reader
cannot use is a :class:`Problem`.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Problem", "content_lines", "format_time", "quote_value"]

_BARE_RE = re.compile(r'[^\s"\\]+')
_LINE_BREAK_RE = re.compile(r"[\r\n]")


def quote_value(value: str) -> str:
    if value and _BARE_RE.fullmatch(value):
        return value
    # One binding, one line: a line break in a value would split it.
    value = _LINE_BREAK_RE.sub(" ", value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_time(when: float) -> str:
    """``when`` (Unix time) as ``YYYY-MM-DDTHH:MM:SSZ``, seconds truncated."""
    return _format_second(int(when // 1))


# A call's events, records and lines stamp the same few seconds again and
# again; strftime is most of what a stamp costs.
@functools.lru_cache(maxsize=64)
def _format_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


def content_lines(text: str) -> Iterator[tuple[int, str]]:
    """Each line that is neither blank nor a ``#`` comment: (number from 1, stripped text).

    Lines end at ``"\\n"`` only: :meth:`str.splitlines` also cuts at U+0085,
    U+2028, ``\\x1c``..``\\x1e``, ``\\v`` and ``\\f``, which a quoted value (a
    User-Agent) may hold, and its line numbers would not be an editor's.
    """
    for number, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if line and not line.startswith("#"):
            yield number, line


@dataclass(frozen=True, slots=True)
class Problem:
    """A line that is not (fully) used, and why; line numbers start at 1."""

    lineno: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.lineno}: {self.reason}"

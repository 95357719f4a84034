"""Text shared by the line-based files and nodes: quoted values, times.

``~/.sr/usrloc``, ``/run/sr/<user>/contacts`` and ``calls`` lines are
space-separated ``key=value`` fields; a value with spaces or quotes is
double-quoted with backslash escapes. Times are written as UTC
``YYYY-MM-DDTHH:MM:SSZ`` (``~/.sr/acc``, ``calls``).
"""

from __future__ import annotations

import re
import time

__all__ = ["format_time", "quote_value"]

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
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(when // 1)))

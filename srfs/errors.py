"""Refusals that reach a system call's caller: an errno for it and a reason for humans.

The shape of the errors of homes (:class:`~srfs.files.home.HomeError`), the
admin files and the ``/run/sr`` tree; errors that never become an errno
(a bad line, a bad configuration, a failing user database) have their own.
"""

from __future__ import annotations

__all__ = ["ReasonedError"]


class ReasonedError(Exception):
    """``errno`` is what a system call would report; ``reason`` is a log line."""

    def __init__(self, errno_: int, reason: str) -> None:
        super().__init__(errno_, reason)
        self.errno = errno_
        self.reason = reason

    def __str__(self) -> str:
        return self.reason

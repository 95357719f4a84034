"""The one shape of srfs's errors: an errno for the caller and a reason for humans."""

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

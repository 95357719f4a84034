"""When a TCP connection is due to close: sans-IO, time passed in.

Three rules, each a deadline:

- An unfinished message must be complete ``message_timeout`` seconds after
  its first byte. The deadline is absolute: bytes trickling in do not move
  it, or one header line every few seconds would hold a slot for ever.
- A connection with no bytes at all for ``idle_timeout`` closes. RFC 5626
  keep-alives are bytes: a phone's flow lives on them.
- An accepted connection over which no registration is held closes once no
  SIP message came for ``unregistered_timeout``, keep-alives or not: else
  anyone could hold slots with double CRLFs alone. Whether a registration
  is held is asked only when this deadline passes (and at each later
  keep-alive), since the answer changes as bindings come and go.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Close", "Liveness"]


class Close(enum.Enum):
    """Why a connection is closed."""

    UNFINISHED = "an unfinished message"
    IDLE = "no traffic"
    UNREGISTERED = "no registration over it and no SIP message"


@dataclass
class Liveness:
    """The deadlines of one connection. ``unregistered_timeout`` None: that rule is off."""

    idle_timeout: float
    message_timeout: float
    unregistered_timeout: float | None
    last_traffic: float
    last_message: float
    #: When the first byte of the message not yet complete arrived.
    message_started: float | None = None
    #: A registration was held over the connection when last asked.
    vouched: bool = False

    @classmethod
    def opened(cls, now: float, *, idle_timeout: float, message_timeout: float,
               unregistered_timeout: float | None) -> Liveness:
        return cls(idle_timeout, message_timeout, unregistered_timeout, now, now)

    def received(self, now: float, *, frames: int, messages: int, pending: bool) -> None:
        """Bytes arrived at ``now``: they completed ``frames`` frames (``messages``
        SIP messages, the rest keep-alives) and left part of a message if ``pending``."""
        self.last_traffic = now
        if messages:
            self.last_message = now
            self.vouched = False
        if not pending:
            self.message_started = None
        elif self.message_started is None or frames:
            # A frame completed in the same bytes: what is pending is a new message.
            self.message_started = now

    def deadline(self) -> float:
        """When :meth:`check` may next find a reason to close."""
        if self.message_started is not None:
            return self.message_started + self.message_timeout
        due = self.last_traffic + self.idle_timeout
        if self.unregistered_timeout is not None and not self.vouched:
            due = min(due, self.last_message + self.unregistered_timeout)
        return due

    def check(self, now: float, has_binding: Callable[[], bool]) -> tuple[Close, float] | None:
        """Why the connection must close at ``now`` and after how long, or None."""
        if self.message_started is not None:
            if now >= self.message_started + self.message_timeout:
                return Close.UNFINISHED, self.message_timeout
            return None
        if now >= self.last_traffic + self.idle_timeout:
            return Close.IDLE, self.idle_timeout
        limit = self.unregistered_timeout
        if limit is not None and now >= self.last_message + limit:
            self.vouched = has_binding()
            if not self.vouched:
                return Close.UNREGISTERED, limit
        return None

"""The ng socket to rtpengine: one UDP socket, one task, the questions of the media relay.

The core hands :class:`~sipd.core.work.Ask` values to the transports,
which pass them to :meth:`NgSocket.ask`; the sans-IO
:class:`~sipd.media.ng.NgClient` numbers them, says what to send again and
when a question has run out of time. This module only moves datagrams and
keeps the clock: each reply, error or time-out goes to the ask's
continuation, and what that answers goes back to the transports.

The socket is connected to rtpengine's address, so the kernel delivers
datagrams from that address only, and a reply that matches no question in
flight (late, or repeated) is dropped.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Callable

import trio

from sipd.core.work import Action, Ask, Outcome
from sipd.media.ng import NgClient, Reply

log = logging.getLogger("sipd.media")

_RECV_SIZE = 65536


class NgSocket:
    """The socket to one rtpengine and the questions in flight on it."""

    def __init__(self, host: str, port: int, deliver: Callable[[list[Action]], None],
                 client: NgClient[Ask[list[Action]]] | None = None) -> None:
        self.address = (host, port)
        self.deliver = deliver
        self.client: NgClient[Ask[list[Action]]] = client or NgClient()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        raw = socket.socket(family, socket.SOCK_DGRAM)
        try:
            # A UDP connect sends nothing: it fixes the peer, so nobody else's
            # datagram is taken for a reply.
            raw.connect(self.address)
        except OSError:
            raw.close()
            raise
        raw.setblocking(False)
        self.sock = raw
        self._wake = trio.Event()

    def ask(self, ask: Ask[list[Action]]) -> None:
        """Send ``ask`` now; its continuation runs when the reply, or the time-out, comes."""
        self._send(self.client.request(ask.message, ask, trio.current_time()))
        self._wake.set()

    def _send(self, data: bytes) -> None:
        try:
            self.sock.send(data)
        except OSError as exc:
            # ECONNREFUSED from an earlier datagram (nobody listens), a full
            # buffer: the next try, or the time-out, settles it.
            log.debug("ng send to %s:%d failed: %s", *self.address, exc)

    def _answer(self, found: list[tuple[Ask[list[Action]], Outcome[Reply]]]) -> None:
        for ask, outcome in found:
            self.deliver(ask.then(outcome, trio.current_time()))

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receive)
                nursery.start_soon(self._timer)
                task_status.started()
        finally:
            # Stopping: the questions still open go with the daemon; their
            # continuations would send into transports that are closing.
            dropped = self.client.abandon()
            if dropped:
                log.debug("%d ng request(s) to %s:%d left unanswered at the stop",
                          len(dropped), *self.address)
            self.sock.close()

    async def _receive(self) -> None:
        while True:
            await trio.lowlevel.wait_readable(self.sock)
            try:
                data = self.sock.recv(_RECV_SIZE)
            except BlockingIOError:
                continue
            except OSError as exc:
                # ICMP "port unreachable" of an earlier send: nobody listens
                # there (yet); the tries and the time-out go on.
                log.debug("ng receive from %s:%d: %s", *self.address, exc)
                continue
            found = self.client.receive(data)
            if found is not None:
                self._answer([found])

    async def _timer(self) -> None:
        while True:
            deadline = self.client.next_deadline()
            with trio.move_on_at(math.inf if deadline is None else deadline):
                await self._wake.wait()
            self._wake = trio.Event()
            again, expired = self.client.due(trio.current_time())
            for data in again:
                self._send(data)
            self._answer(expired)


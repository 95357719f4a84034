"""A bug met by one UDP datagram costs that datagram, not the daemon."""

from __future__ import annotations

import logging
import socket

import pytest
import trio

from sipd.config import ListenAddress
from sipd.core.peer import Outgoing, Peer
from sipd.core.work import Action
from sipd.io.transport import Transports
from tests.unit.sipd.io.test_timer_loop import Timers


class Echo(Timers):
    """An endpoint without timers that answers each datagram with itself, and
    has a bug for ``bug``."""

    def __init__(self) -> None:
        super().__init__([])

    def receive(self, data: bytes, peer: Peer, now: float) -> list[Action]:
        if data == b"bug":
            raise KeyError("a bug")
        return [Outgoing(data, peer)]


def test_a_datagram_that_meets_a_bug_is_dropped_and_logged_and_the_next_is_served(
        caplog: pytest.LogCaptureFixture) -> None:
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    answers: list[bytes] = []
    errors_counted: list[int] = []

    async def main() -> None:
        sock = trio.socket.from_stdlib_socket(client)
        transports = Transports(Echo(), max_message_size=65535, tcp_max_connections=1,
                                tcp_idle_timeout=60.0, tcp_message_timeout=10.0)
        async with trio.open_nursery() as nursery:
            await nursery.start(transports.serve, [(ListenAddress("udp", "127.0.0.1", port),
                                                    server)])
            with trio.fail_after(10):
                for data in (b"bug", b"ping", b"bug", b"pong"):
                    await sock.sendto(data, ("127.0.0.1", port))
                    if data != b"bug":
                        answers.append(await sock.recv(100))
            errors_counted.append(transports.stats.udp_internal_errors)
            nursery.cancel_scope.cancel()

    with caplog.at_level(logging.ERROR, logger="sipd.transport"), client:
        trio.run(main)
    server.close()
    assert answers == [b"ping", b"pong"]
    assert errors_counted == [2]
    errors = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert len(errors) == 2
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is KeyError

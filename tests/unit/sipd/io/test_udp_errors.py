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
    """An endpoint without timers that answers each message with itself, and
    has a bug for those that start with ``bug``."""

    def __init__(self) -> None:
        super().__init__([])

    def receive(self, data: bytes, peer: Peer, now: float) -> list[Action]:
        if data.startswith(b"bug"):
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
    logged: list[int] = []

    def error_lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "unexpected error" in r.getMessage()]

    async def main() -> None:
        sock = trio.socket.from_stdlib_socket(client)
        transports = Transports(Echo(), max_message_size=65535, tcp_max_connections=1,
                                tcp_idle_timeout=60.0, tcp_message_timeout=10.0)

        async def exchange(*datagrams: bytes) -> None:
            with trio.fail_after(10):
                for data in datagrams:
                    await sock.sendto(data, ("127.0.0.1", port))
                    if data != b"bug":
                        answers.append(await sock.recv(100))

        async with trio.open_nursery() as nursery:
            await nursery.start(transports.serve, [(ListenAddress("udp", "127.0.0.1", port),
                                                    server)])
            await exchange(b"bug", b"ping", b"bug", b"bug", b"pong")
            errors_counted.append(transports.stats.udp_internal_errors)
            logged.append(len(error_lines()))
            # A minute later (the log's interval, shortened here) the next
            # one is logged, saying how many were not.
            transports._udp_errors.interval = 0.0
            await exchange(b"bug", b"again")
            nursery.cancel_scope.cancel()

    with caplog.at_level(logging.ERROR, logger="sipd.transport"), client:
        trio.run(main)
    server.close()
    assert answers == [b"ping", b"pong", b"again"]
    # Each counted; one traceback a minute, whatever a peer keeps sending.
    assert errors_counted == [3] and logged == [1]
    first, last = error_lines()
    assert first.exc_info is not None and first.exc_info[0] is KeyError
    assert "(2 more since the last such line)" in last.getMessage()

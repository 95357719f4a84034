"""A bug met by one stream connection's input costs that connection, not the daemon."""

from __future__ import annotations

import logging
import socket

import pytest
import trio

from sipd.config import ListenAddress
from sipd.io.transport import Transports
from tests.unit.sipd.io.test_udp_errors import Echo

BUG = b"bug sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n"
PING = b"PING sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n"


def test_a_connection_that_meets_a_bug_is_closed_and_the_others_are_served(
        caplog: pytest.LogCaptureFixture) -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    closed: list[bytes] = []
    answers: list[bytes] = []
    counted: list[int] = []

    async def main() -> None:
        transports = Transports(Echo(), max_message_size=65535, tcp_max_connections=8,
                                tcp_idle_timeout=60.0, tcp_message_timeout=10.0)

        async def exchange(message: bytes) -> bytes:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(message)
                got = b""
                while len(got) < len(message):
                    chunk = await stream.receive_some(1000)
                    if not chunk:
                        break  # closed by sipd
                    got += chunk
                return got

        async with trio.open_nursery() as nursery:
            await nursery.start(transports.serve, [(ListenAddress("tcp", "127.0.0.1", port),
                                                    listener)])
            with trio.fail_after(10):
                for _ in range(3):
                    closed.append(await exchange(BUG))
                answers.append(await exchange(PING))
                # Its reader's cleanup runs in the connection's own task.
                while transports.stats.tcp_open:
                    await trio.sleep(0.01)
            counted.append(transports.stats.tcp_internal_errors)
            nursery.cancel_scope.cancel()

    with caplog.at_level(logging.ERROR, logger="sipd.transport"):
        trio.run(main)
    listener.close()
    assert closed == [b"", b"", b""] and answers == [PING]
    # Each counted; one traceback a minute, however many connections meet it.
    assert counted == [3]
    errors = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert len(errors) == 1 and errors[0].exc_info is not None
    # Raised inside the connection's nursery: the bug is in the group.
    error = errors[0].exc_info[1]
    assert isinstance(error, KeyError) or (
        isinstance(error, BaseExceptionGroup) and error.subgroup(KeyError) is not None)

"""A real sipd on real sockets: UDP and TCP on 127.0.0.1 and ::1."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import TESTS
from tests.sipclient import (
    Daemon,
    TcpClient,
    UdpClient,
    options,
    reason_of,
    running_sipd,
    status_of,
    tcp_refused,
    wait_for,
)
from tests.unixusers import FakeUnix

HOSTS = ["127.0.0.1", "::1"]


@pytest.fixture(scope="module")
def sipd(tmp_path_factory: pytest.TempPathFactory, unix: FakeUnix) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("sipd")
    with running_sipd(tmp, "-c", str(_config(tmp)), "-v", unix=unix) as daemon:
        yield daemon
        assert daemon.alive(), daemon.log


def _config(tmp: Path) -> Path:
    path = tmp / "sipd.toml"
    path.write_text(
        "tcp_idle_timeout = 3\ntcp_message_timeout = 1\ntcp_max_connections = 8\n"
        "max_message_size = 16384\n"
    )
    return path


def uri_for(host: str) -> str:
    return f"sip:[{host}]" if ":" in host else f"sip:{host}"


@pytest.mark.parametrize("host", HOSTS)
def test_udp_options(sipd: Daemon, host: str) -> None:
    c = UdpClient(host, sipd.port)
    try:
        resp = c.request(options(uri_for(host), via_host=host, via_port=c.port))
        assert status_of(resp) == 200
        assert b"\r\nAllow: " in resp and b"\r\nAccept: " in resp and b"\r\nSupported:" in resp
        # rport was honoured: the reply reached our ephemeral port, and says so.
        assert f"rport={c.port}".encode() in resp
    finally:
        c.close()


@pytest.mark.parametrize("host", HOSTS)
def test_tcp_options_pipelined_and_split(sipd: Daemon, host: str) -> None:
    c = TcpClient(host, sipd.port)
    try:
        msgs = [options(uri_for(host), via_host=host, via_port=c.port, transport="TCP",
                        cseq=i + 1) for i in range(3)]
        c.send(b"".join(msgs))  # pipelined in one segment
        for i in range(3):
            resp = c.recv_message()
            assert status_of(resp) == 200
            assert f"CSeq: {i + 1} OPTIONS".encode() in resp
        one = options(uri_for(host), via_host=host, via_port=c.port, transport="TCP", cseq=9)
        for k in range(0, len(one), 7):  # split across many reads
            c.send(one[k : k + 7])
            time.sleep(0.002)  # the point: each piece reaches sipd on its own
        assert status_of(c.recv_message()) == 200
    finally:
        c.close()


def test_tcp_crlf_keepalive_gets_pong(sipd: Daemon) -> None:
    c = TcpClient("127.0.0.1", sipd.port)
    try:
        c.send(b"\r\n\r\n")
        assert c.recv_raw() == b"\r\n"
        c.send(options("sip:127.0.0.1", via_port=c.port, transport="TCP"))
        assert status_of(c.recv_message()) == 200
    finally:
        c.close()


def test_tcp_stalled_half_message_is_closed(sipd: Daemon) -> None:
    c = TcpClient("127.0.0.1", sipd.port)
    try:
        c.send(options("sip:127.0.0.1", via_port=c.port, transport="TCP")[:60])
        # tcp_message_timeout is 1 s in this daemon's config.
        assert c.is_closed(wait=4.0)
    finally:
        c.close()
    assert sipd.ping() == 200


@pytest.mark.slow
def test_tcp_idle_connection_is_closed(sipd: Daemon) -> None:
    c = TcpClient("127.0.0.1", sipd.port)
    try:
        assert not c.is_closed(wait=1.0)
        assert c.is_closed(wait=5.0)  # tcp_idle_timeout is 3 s
    finally:
        c.close()


def test_tcp_oversize_message_closes_connection(sipd: Daemon) -> None:
    c = TcpClient("127.0.0.1", sipd.port)
    try:
        big = options("sip:127.0.0.1", via_port=c.port, transport="TCP",
                      extra="X-Pad: " + "a" * 30000 + "\r\n")
        try:
            c.send(big)
        except (BrokenPipeError, ConnectionResetError):
            pass
        said = c.read_until_closed()
        assert said is not None, "connection not closed"
        # The server may say why before it closes: 513 Message Too Large.
        assert said == b"" or status_of(said) == 513, said[:200]
    finally:
        c.close()
    assert sipd.ping() == 200


def _served_client(port: int) -> TcpClient:
    """A TCP connection sipd accepted and answered on.

    The tests before closed connections of their own to this sipd, and it
    counts one out only once it has read the close: until then a new one
    may be over the cap. So a refused one is tried again, for a while.
    """
    deadline = time.monotonic() + 5.0
    while True:
        c = TcpClient("127.0.0.1", port)
        try:
            c.send(options("sip:127.0.0.1", via_port=c.port, transport="TCP"))
            if status_of(c.recv_message()) == 200:
                return c
        except OSError:
            pass  # refused: reset or closed at once
        c.close()
        assert time.monotonic() < deadline, "no TCP connection served"
        time.sleep(0.05)


def test_tcp_connection_limit(sipd: Daemon) -> None:
    clients: list[TcpClient] = []
    try:
        for _ in range(8):
            clients.append(_served_client(sipd.port))
        assert tcp_refused("127.0.0.1", sipd.port)
    finally:
        for c in clients:
            c.close()

    def served() -> bool:
        # Refused (closed at once) until sipd has seen the others go.
        try:
            again = TcpClient("127.0.0.1", sipd.port)
        except OSError:
            return False
        try:
            again.send(options("sip:127.0.0.1", via_port=again.port, transport="TCP"))
            return status_of(again.recv_message()) == 200
        except OSError:
            return False
        finally:
            again.close()

    wait_for(served, "a connection served once the others closed")


def test_udp_bad_request_gets_400_naming_the_problem(sipd: Daemon) -> None:
    c = UdpClient("127.0.0.1", sipd.port)
    try:
        bad = options("sip:127.0.0.1", via_port=c.port).replace(b"Call-ID", b"Call-Identity")
        resp = c.request(bad)
        assert status_of(resp) == 400
        assert "Call-ID" in reason_of(resp)
    finally:
        c.close()


def test_udp_oversize_and_garbage_are_dropped(sipd: Daemon) -> None:
    c = UdpClient("127.0.0.1", sipd.port)
    try:
        c.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\xff" * 300)
        c.send(options("sip:127.0.0.1", via_port=c.port, extra="X-Pad: " + "b" * 20000 + "\r\n"))
        c.expect_nothing()
        assert status_of(c.request(options("sip:127.0.0.1", via_port=c.port))) == 200
    finally:
        c.close()


def test_udp_retransmission_answered_from_transaction(sipd: Daemon) -> None:
    c = UdpClient("127.0.0.1", sipd.port)
    try:
        data = options("sip:127.0.0.1", via_port=c.port, branch="z9hG4bKsame")
        first = c.request(data)
        again = c.request(data)
        assert first == again  # same To tag: from the transaction, not a new answer
    finally:
        c.close()


def test_every_corpus_message_leaves_the_daemon_answering(sipd: Daemon) -> None:
    corpus = TESTS / "vectors" / "rfc4475"
    files = sorted(corpus.glob("*.dat"))
    assert len(files) > 40
    c = UdpClient("127.0.0.1", sipd.port, timeout=0.3)
    try:
        for f in files:
            c.send(f.read_bytes())
            t = TcpClient("127.0.0.1", sipd.port)
            try:
                t.send(f.read_bytes())
            finally:
                t.close()
        assert sipd.ping() == 200
        assert sipd.ping("::1") == 200
    finally:
        c.close()


def test_raw_socket_noise_never_stops_it(sipd: Daemon) -> None:
    import random

    rnd = random.Random(4475)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        base = options("sip:127.0.0.1")
        for _ in range(300):
            data = bytearray(base)
            for _ in range(rnd.randint(1, 20)):
                data[rnd.randrange(len(data))] = rnd.randrange(256)
            s.sendto(bytes(data[: rnd.randint(0, len(data))]), ("127.0.0.1", sipd.port))
    finally:
        s.close()
    assert sipd.ping() == 200

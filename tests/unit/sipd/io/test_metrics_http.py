"""The metrics endpoint over real sockets on 127.0.0.1: what each request gets, and its limits.

The server runs under trio; each client is plain blocking code in a
worker thread, so what it sees is what any HTTP client would.
"""

from __future__ import annotations

import http.client
import logging
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest
import trio

from sipd.config import HostPort
from sipd.io.metrics_http import CONTENT_TYPE, MetricsServer, bind_metrics
from sipd.io.transport import StartupError

T = TypeVar("T")

PAGE = "# HELP sipd_messages_in_total SIP messages received.\n" \
       "# TYPE sipd_messages_in_total counter\nsipd_messages_in_total 7\n"


def serve(client: Callable[[int, MetricsServer], T], render: Callable[[], str] = lambda: PAGE,
          host: str = "127.0.0.1", **limits: Any) -> T:
    """Run ``client(port, server)`` in a thread against a server on ``host``."""

    async def main() -> T:
        sock = bind_metrics(HostPort(host, 9), any_port=True)
        port = sock.getsockname()[1]
        server = MetricsServer(render, **limits)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(server.serve, sock)
                with trio.fail_after(60):
                    result = await trio.to_thread.run_sync(client, port, server)
                nursery.cancel_scope.cancel()
        finally:
            sock.close()
        return result

    return trio.run(main)


class Conn:
    """A client connection that reads responses off a buffer (pipelining leaves several in it)."""

    def __init__(self, port: int, timeout: float = 5.0, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = b""

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()

    def _more(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buffer += chunk
        return bool(chunk)


@contextmanager
def connected(port: int, timeout: float = 5.0) -> Iterator[Conn]:
    c = Conn(port, timeout)
    try:
        yield c
    finally:
        c.close()


def read_all(c: Conn) -> bytes:
    """Everything until the server closes."""
    while c._more():
        pass
    out, c.buffer = c.buffer, b""
    return out


def read_response(c: Conn, *, head_only: bool = False) -> tuple[bytes, dict[str, str], bytes]:
    """One response: status line, headers (lower-case names), and its Content-Length of body."""
    while b"\r\n\r\n" not in c.buffer:
        assert c._more(), f"closed before the end of the head: {c.buffer!r}"
    head, _, c.buffer = c.buffer.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    length = 0 if head_only else int(headers["content-length"])
    while len(c.buffer) < length:
        assert c._more(), "closed in the body"
    body, c.buffer = c.buffer[:length], c.buffer[length:]
    return status.encode(), headers, body


def request(method: str, target: str, *, extra: str = "", version: str = "1.1") -> bytes:
    return f"{method} {target} HTTP/{version}\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


def wait_until(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# --- what each request gets ---------------------------------------------------------


def test_get_metrics_is_the_page_in_the_exposition_format() -> None:
    def client(port: int, _: MetricsServer) -> tuple[int, str | None, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            r = conn.getresponse()
            return r.status, r.getheader("Content-Type"), r.read()
        finally:
            conn.close()

    status, ctype, body = serve(client)
    assert status == 200
    assert ctype == CONTENT_TYPE.decode() == "text/plain; version=0.0.4; charset=utf-8"
    assert body == PAGE.encode()


def test_the_page_is_rendered_for_each_request() -> None:
    count = iter(range(100))

    def render() -> str:
        return f"sipd_x {next(count)}\n"

    def client(port: int, _: MetricsServer) -> list[bytes]:
        out = []
        for _ in range(2):
            with connected(port) as s:
                s.sendall(request("GET", "/metrics", extra="Connection: close\r\n"))
                out.append(read_response(s)[2])
        return out

    assert serve(client, render) == [b"sipd_x 0\n", b"sipd_x 1\n"]


def test_a_query_string_is_ignored() -> None:
    def client(port: int, _: MetricsServer) -> bytes:
        with connected(port) as s:
            s.sendall(request("GET", "/metrics?format=prometheus"))
            return read_response(s)[0]

    assert serve(client) == b"HTTP/1.1 200 OK"


def test_head_has_the_headers_of_get_and_no_body() -> None:
    def client(port: int, _: MetricsServer) -> bytes:
        with connected(port) as s:
            s.sendall(request("HEAD", "/metrics", extra="Connection: close\r\n"))
            return read_all(s)

    raw = serve(client)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"content-length: {len(PAGE)}".encode() in head.lower()
    assert b"content-type: " + CONTENT_TYPE in head.lower()
    assert body == b""


def test_other_paths_are_404() -> None:
    def client(port: int, _: MetricsServer) -> list[bytes]:
        out = []
        with connected(port) as s:
            for target in ("/", "/metricsx", "/metrics/", "/run/sr/metrics", "*"):
                s.sendall(request("GET", target))
                out.append(read_response(s)[0])
        return out

    assert serve(client) == [b"HTTP/1.1 404 Not Found"] * 5


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "get"])
def test_other_methods_are_405_with_allow(method: str) -> None:
    def client(port: int, _: MetricsServer) -> tuple[bytes, dict[str, str]]:
        with connected(port) as s:
            s.sendall(request(method, "/metrics", extra="Content-Length: 0\r\n"))
            status, headers, _ = read_response(s)
            # The connection stays usable.
            s.sendall(request("GET", "/metrics"))
            assert read_response(s)[2] == PAGE.encode()
            return status, headers

    status, headers = serve(client)
    assert status == b"HTTP/1.1 405 Method Not Allowed"
    assert headers["allow"] == "GET, HEAD"


# --- keep-alive ---------------------------------------------------------------------


def test_keep_alive_serves_two_requests_on_one_connection() -> None:
    def client(port: int, server: MetricsServer) -> list[bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            r = conn.getresponse()
            bodies = [r.read()]
            assert r.getheader("Connection") is None
            first = conn.sock
            conn.request("GET", "/metrics")
            bodies.append(conn.getresponse().read())
            assert conn.sock is first, "a second connection was opened"
            assert server.open == 1
            return bodies
        finally:
            conn.close()

    assert serve(client) == [PAGE.encode()] * 2


def test_pipelined_requests_are_answered_in_order() -> None:
    def client(port: int, _: MetricsServer) -> list[bytes]:
        with connected(port) as s:
            s.sendall(request("GET", "/nothing") + request("HEAD", "/metrics")
                      + request("GET", "/metrics"))
            return [read_response(s)[0], read_response(s, head_only=True)[0],
                    read_response(s)[2]]

    assert serve(client) == [b"HTTP/1.1 404 Not Found", b"HTTP/1.1 200 OK", PAGE.encode()]


def test_http_1_0_gets_its_answer_then_the_close() -> None:
    def client(port: int, _: MetricsServer) -> bytes:
        with connected(port) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
            return read_all(s)

    raw = serve(client)
    assert raw.startswith(b"HTTP/1.1 200 OK\r\n")
    assert raw.endswith(b"\r\n\r\n" + PAGE.encode())


def test_connection_close_is_honoured() -> None:
    def client(port: int, _: MetricsServer) -> bytes:
        with connected(port) as s:
            s.sendall(request("GET", "/metrics", extra="Connection: close\r\n"))
            return read_all(s)

    raw = serve(client)
    assert b"connection: close" in raw.lower() and raw.endswith(PAGE.encode())


def test_a_request_body_is_read_and_thrown_away() -> None:
    def client(port: int, _: MetricsServer) -> list[bytes]:
        with connected(port) as s:
            s.sendall(request("GET", "/metrics", extra="Content-Length: 5\r\n") + b"hello"
                      + request("GET", "/metrics", extra="Transfer-Encoding: chunked\r\n")
                      + b"3\r\nabc\r\n0\r\n\r\n" + request("GET", "/metrics"))
            return [read_response(s)[2] for _ in range(3)]

    assert serve(client) == [PAGE.encode()] * 3


def test_expect_100_continue_is_answered() -> None:
    def client(port: int, _: MetricsServer) -> list[bytes]:
        with connected(port) as s:
            s.sendall(request("POST", "/metrics",
                              extra="Content-Length: 2\r\nExpect: 100-continue\r\n"))
            interim = read_response(s, head_only=True)[0]
            s.sendall(b"hi")
            return [interim, read_response(s)[0]]

    assert serve(client) == [b"HTTP/1.1 100 Continue", b"HTTP/1.1 405 Method Not Allowed"]


# --- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    b"GARBAGE\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\n\r\n",  # no Host
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nBad Header: x\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: \x00\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) + b"\r\n\r\n",
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
def test_a_malformed_request_is_400_then_closed(raw: bytes,
                                                caplog: pytest.LogCaptureFixture) -> None:
    def client(port: int, server: MetricsServer) -> tuple[bytes, int]:
        with connected(port) as s:
            s.sendall(raw)
            answer = read_all(s)
        with connected(port) as s:
            # And the server still serves.
            s.sendall(request("GET", "/metrics"))
            assert read_response(s)[2] == PAGE.encode()
        wait_until(lambda: server.open == 0, "the connections to end")
        return answer, server.open

    with caplog.at_level(logging.DEBUG, logger="sipd"):
        answer, still_open = serve(client)
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
    assert b"connection: close" in answer.lower()
    assert still_open == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any(r.exc_info for r in caplog.records)


def test_a_transfer_coding_h11_does_not_know_is_501_then_closed() -> None:
    # Not malformed but not understood: RFC 9112, 6.1, asks for 501.
    def client(port: int, _: MetricsServer) -> bytes:
        with connected(port) as s:
            s.sendall(request("POST", "/metrics", extra="Transfer-Encoding: gzip\r\n"))
            return read_all(s)

    assert serve(client).startswith(b"HTTP/1.1 501 Not Implemented\r\n")


@pytest.mark.parametrize("version", ["2.0", "9.9", "1.2"])
def test_an_http_version_but_1_0_and_1_1_is_505_then_closed(version: str) -> None:
    def client(port: int, _: MetricsServer) -> bytes:
        with connected(port) as s:
            s.sendall(request("GET", "/metrics", version=version))
            return read_all(s)

    assert serve(client).startswith(b"HTTP/1.1 505 HTTP Version Not Supported\r\n")


def test_a_head_over_the_limit_is_431_then_closed() -> None:
    def client(port: int, _: MetricsServer) -> bytes:
        with connected(port) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2000)
            return read_all(s)

    answer = serve(client, max_head=1024)
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer


def test_a_body_over_the_limit_is_413_then_closed() -> None:
    def client(port: int, _: MetricsServer) -> bytes:
        with connected(port) as s:
            s.sendall(request("POST", "/metrics", extra="Content-Length: 100000\r\n")
                      + b"x" * 3000)
            return read_all(s)

    answer = serve(client, max_body=1024)
    assert answer.startswith(b"HTTP/1.1 413 Content Too Large\r\n") \
        or answer.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n"), answer


def test_a_client_that_leaves_mid_request_is_forgotten() -> None:
    def client(port: int, server: MetricsServer) -> int:
        with connected(port) as s:
            s.sendall(b"GET /metr")
        with connected(port) as s:
            s.sendall(request("GET", "/metrics", extra="Content-Length: 10\r\n") + b"abc")
        with connected(port) as s:
            # Reset, not closed: SO_LINGER 0.
            s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            s.sendall(request("GET", "/metrics"))
        wait_until(lambda: server.open == 0, "the connections to end")
        return server.open

    assert serve(client) == 0


def test_a_renderer_that_fails_is_500_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    calls = iter(range(10))

    def render() -> str:
        if next(calls) == 0:
            raise RuntimeError("broken figure")
        return PAGE

    def client(port: int, _: MetricsServer) -> list[bytes]:
        with connected(port) as s:
            s.sendall(request("GET", "/metrics") + request("GET", "/metrics"))
            return [read_response(s)[0], read_response(s)[2]]

    with caplog.at_level(logging.ERROR, logger="sipd"):
        assert serve(client, render) == [b"HTTP/1.1 500 Internal Server Error", PAGE.encode()]
    assert [r.getMessage() for r in caplog.records] == [
        "metrics endpoint: cannot render the metrics"]


# --- limits -------------------------------------------------------------------------------


def test_connections_over_the_cap_are_closed_at_once(caplog: pytest.LogCaptureFixture) -> None:
    def client(port: int, server: MetricsServer) -> tuple[bytes, int]:
        held = [Conn(port) for _ in range(2)]
        try:
            wait_until(lambda: server.open == 2, "two connections served")
            with connected(port) as extra:
                started = time.monotonic()
                # Closed by the server without a word, long before any deadline.
                assert read_all(extra) == b""
                assert time.monotonic() - started < 2
            assert server.refused == 1
            held.pop().close()
            wait_until(lambda: server.open == 1, "one connection left")
            with connected(port) as s:
                s.sendall(request("GET", "/metrics"))
                status = read_response(s)[0]
            # The ones held were served all along.
            held[0].sendall(request("GET", "/metrics"))
            assert read_response(held[0])[2] == PAGE.encode()
            return status, server.refused
        finally:
            for s in held:
                s.close()

    with caplog.at_level(logging.WARNING, logger="sipd"):
        assert serve(client, max_connections=2) == (b"HTTP/1.1 200 OK", 1)
    assert [r.getMessage() for r in caplog.records] == [
        "metrics endpoint: refused 1 connection(s): 2 open, the most it serves at once"]


def test_the_default_cap_is_sixteen() -> None:
    def client(port: int, server: MetricsServer) -> int:
        held = [Conn(port) for _ in range(16)]
        try:
            wait_until(lambda: server.open == 16, "sixteen connections served")
            with connected(port) as extra:
                assert read_all(extra) == b""
            return server.refused
        finally:
            for s in held:
                s.close()

    assert serve(client) == 1


def test_a_connection_ends_at_its_deadline_whatever_it_does() -> None:
    def client(port: int, server: MetricsServer) -> list[float]:
        took = []
        with connected(port) as idle:
            started = time.monotonic()
            assert read_all(idle) == b""
            took.append(time.monotonic() - started)
        with connected(port) as busy:
            # A request every 0.1 s keeps it busy, not alive.
            started = time.monotonic()
            try:
                while True:
                    busy.sendall(request("GET", "/metrics"))
                    read_response(busy)
                    time.sleep(0.1)
            except (ConnectionError, AssertionError):
                took.append(time.monotonic() - started)
        with connected(port) as slow:
            # A byte every 0.1 s: the request would take four seconds.
            started = time.monotonic()
            try:
                for byte in request("GET", "/metrics"):
                    slow.sendall(bytes([byte]))
                    time.sleep(0.1)
                read_all(slow)
            except ConnectionError:
                pass
            took.append(time.monotonic() - started)
        wait_until(lambda: server.open == 0, "the connections to end")
        return took

    for took in serve(client, deadline=0.5):
        assert 0.45 < took < 2, took


# --- binding ------------------------------------------------------------------------------


def test_a_busy_port_is_a_one_line_startup_error() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(StartupError) as caught:
            bind_metrics(HostPort("127.0.0.1", port))
    assert str(caught.value) == (
        f"cannot listen on metrics_listen 127.0.0.1:{port}: Address already in use")


def test_an_address_the_host_does_not_have_is_a_startup_error() -> None:
    with pytest.raises(StartupError, match=r"^cannot listen on metrics_listen 192\.0\.2\.1:9100: "
                                           r"Cannot assign requested address$"):
        bind_metrics(HostPort("192.0.2.1", 9100))


def test_ipv6_loopback_serves_too() -> None:
    try:
        bind_metrics(HostPort("::1", 9), any_port=True).close()
    except StartupError as exc:
        pytest.skip(f"no IPv6 loopback: {exc}")

    def client(port: int, _: MetricsServer) -> bytes:
        c = Conn(port, host="::1")
        try:
            c.sendall(request("GET", "/metrics"))
            return read_response(c)[2]
        finally:
            c.close()

    assert serve(client, host="::1") == PAGE.encode()

"""The metrics over HTTP: ``GET /metrics`` on ``metrics_listen``, for Prometheus to scrape.

The page is the text of ``/run/sr/metrics``, rendered afresh for each
request from the daemon's figures (the caller passes the renderer), so it
is there with the state filesystem off too. HTTP/1.1 is parsed and
framed by h11, a sans-IO state machine; this module only moves its bytes
and decides the answers:

- ``GET`` and ``HEAD`` of ``/metrics`` (any query string): 200 with the
  exposition format's content type; HEAD gets the headers alone;
- any other path: 404; another method on ``/metrics``: 405 with
  ``Allow: GET, HEAD``;
- a request h11 cannot parse: 400, then the connection is closed; so it
  is, after 431, for a head over :data:`MAX_HEAD` bytes, 413 for a body
  over :data:`MAX_BODY`, 501 for a transfer coding other than chunked and
  505 for an HTTP version other than 1.0 and 1.1.

Keep-alive follows h11's states: a connection serves request after
request until the client or HTTP/1.0 asks to close it. What a client can
hold is bounded: :data:`MAX_CONNECTIONS` connections at once (one more is
closed as soon as it is accepted), :data:`DEADLINE` seconds per
connection whatever it does, and a few kilobytes of buffer. Nothing a
client sends ends in a traceback or stops the daemon.

There is no authentication and no TLS: ``metrics_listen`` belongs on a
loopback or management address.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from http import HTTPStatus

import h11
import trio

from sipd.config import HostPort
from sipd.io.limits import accept
from sipd.io.transport import StartupError
from srfs.logtext import Tally

__all__ = [
    "CONTENT_TYPE",
    "DEADLINE",
    "MAX_BODY",
    "MAX_CONNECTIONS",
    "MAX_HEAD",
    "PATH",
    "MetricsServer",
    "bind_metrics",
]

log = logging.getLogger("sipd.metrics")

#: Where the page is, and how it is labelled (Prometheus text format 0.0.4).
PATH = b"/metrics"
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
ALLOW = b"GET, HEAD"
#: Connections served at once; one more is closed as soon as it is accepted.
MAX_CONNECTIONS = 16
#: Bytes of a request's head (request line and headers); more is answered 431.
MAX_HEAD = 8 * 1024
#: Bytes of request body read and thrown away (a scrape sends none); more is 413.
MAX_BODY = 8 * 1024
#: Seconds a connection may last, requests and idle time together.
DEADLINE = 10.0
#: Seconds to read what a client still sends after an error answer, before the close.
LINGER = 1.0
RECEIVE_SIZE = 4096


def bind_metrics(address: HostPort, *, any_port: bool = False) -> socket.socket:
    """The listening TCP socket of the endpoint, bound at start like the SIP sockets.

    ``any_port`` binds the address on a port the kernel picks
    (``--check-config`` beside a running sipd, which holds the real one).
    A failure is the one line of a :class:`StartupError`.
    """
    try:
        sock = socket.socket(address.family, socket.SOCK_STREAM)
    except OSError as exc:
        raise StartupError(f"cannot listen on metrics_listen {address}: {exc.strerror}") from None
    try:
        if address.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address.host, 0 if any_port else address.port))
        sock.listen(MAX_CONNECTIONS)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise StartupError(f"cannot listen on metrics_listen {address}: {exc.strerror}") from None
    return sock


class _BodyTooLarge(Exception):
    pass


def _response(status: int, headers: list[tuple[bytes, bytes]]) -> h11.Response:
    return h11.Response(status_code=status, headers=headers,
                        reason=HTTPStatus(status).phrase.encode())


def _text(message: str) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    body = message.encode() + b"\n"
    return body, [(b"content-type", b"text/plain; charset=utf-8"),
                  (b"content-length", str(len(body)).encode())]


class MetricsServer:
    """Serves ``render()`` at ``/metrics`` on one listening socket."""

    def __init__(self, render: Callable[[], str], *, max_connections: int = MAX_CONNECTIONS,
                 deadline: float = DEADLINE, max_head: int = MAX_HEAD,
                 max_body: int = MAX_BODY) -> None:
        self.render = render
        self.max_connections = max_connections
        self.deadline = deadline
        self.max_head = max_head
        self.max_body = max_body
        #: Connections being served now, and those refused over the cap so far.
        self.open = 0
        self.refused = 0
        self._refusals = Tally(60.0)
        self._accept_failures = Tally(60.0)

    async def serve(self, sock: socket.socket,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept and serve connections on ``sock``, a bound listening socket, until cancelled."""
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await accept(listener, self._accept_failures, "metrics endpoint")
                # Nothing awaits from here to start_soon: the cap holds exactly.
                if self.open >= self.max_connections:
                    self.refused += 1
                    stream.socket.close()
                    held = self._refusals.count(trio.current_time())
                    if held is not None:
                        log.warning("metrics endpoint: refused %d connection(s): %d open, "
                                    "the most it serves at once", held, self.open)
                    continue
                self.open += 1
                nursery.start_soon(self._serve_connection, stream)

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self.max_head)
        try:
            with trio.move_on_after(self.deadline):
                await self._exchange(stream, conn)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("metrics endpoint: connection lost: %s", exc)
        except Exception:
            # A fault of ours, not of the client's input (that is answered
            # above): logged, and the connection closed; the daemon goes on.
            log.exception("metrics endpoint: internal error")
        finally:
            self.open -= 1
            stream.socket.close()

    async def _exchange(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        """Requests and answers until either side closes, as h11's states say."""
        while True:
            try:
                event = await self._next_event(stream, conn)
                if isinstance(event, h11.ConnectionClosed):
                    return
                if not isinstance(event, h11.Request):
                    raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")
                if event.http_version not in (b"1.0", b"1.1"):
                    # h11 would take HTTP/2.0 and HTTP/9.9 for 1.1.
                    raise h11.RemoteProtocolError("HTTP version not supported",
                                                  error_status_hint=505)
                await self._discard_body(stream, conn)
            except h11.RemoteProtocolError as exc:
                log.debug("metrics endpoint: bad request: %s", exc)
                await self._fail(stream, conn, exc.error_status_hint)
                return
            except _BodyTooLarge:
                log.debug("metrics endpoint: a request body over %d bytes", self.max_body)
                await self._fail(stream, conn, 413)
                return
            await self._answer(stream, conn, event)
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
                continue
            # HTTP/1.0, or "Connection: close" from either side.
            await self._close_after_answer(stream)
            return

    async def _next_event(self, stream: trio.SocketStream, conn: h11.Connection) -> h11.Event:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(RECEIVE_SIZE))
                continue
            if event is h11.PAUSED:
                # Only after both sides finished a cycle, which _exchange ends.
                raise h11.RemoteProtocolError("paused")
            assert isinstance(event, h11.Event)
            return event

    async def _discard_body(self, stream: trio.SocketStream, conn: h11.Connection) -> None:
        """Read the request to its end; a body is thrown away, up to ``max_body`` bytes."""
        if conn.they_are_waiting_for_100_continue:
            await stream.send_all(self._bytes(conn, h11.InformationalResponse(
                status_code=100, headers=[], reason=b"Continue")))
        received = 0
        while True:
            event = await self._next_event(stream, conn)
            if isinstance(event, h11.EndOfMessage):
                return
            if isinstance(event, h11.Data):
                received += len(event.data)
                if received > self.max_body:
                    raise _BodyTooLarge
                continue
            raise h11.RemoteProtocolError(f"unexpected {type(event).__name__} in a request body")

    async def _answer(self, stream: trio.SocketStream, conn: h11.Connection,
                      request: h11.Request) -> None:
        path = request.target.split(b"?", 1)[0]
        headers: list[tuple[bytes, bytes]]
        if path != PATH:
            status = 404
            body, headers = _text(f"not found: only {PATH.decode()} is served here")
        elif request.method not in (b"GET", b"HEAD"):
            status = 405
            body, headers = _text(f"method not allowed: {ALLOW.decode()} only")
            headers.append((b"allow", ALLOW))
        else:
            try:
                body = self.render().encode()
            except Exception:
                log.exception("metrics endpoint: cannot render the metrics")
                status = 500
                body, headers = _text("internal error: see the log of sipd")
            else:
                status = 200
                headers = [(b"content-type", CONTENT_TYPE),
                           (b"content-length", str(len(body)).encode()),
                           (b"cache-control", b"no-store")]
        events: list[h11.Event] = [_response(status, headers)]
        if request.method != b"HEAD":
            # h11 frames HEAD's answer as bodiless: the headers say what GET would get.
            events.append(h11.Data(data=body))
        events.append(h11.EndOfMessage())
        await stream.send_all(self._bytes(conn, *events))

    async def _fail(self, stream: trio.SocketStream, conn: h11.Connection, status: int) -> None:
        """Answer an unusable request with ``status`` if h11 still lets us, then close.

        The answer names the status only: nothing of the request is echoed.
        """
        if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body, headers = _text(HTTPStatus(status).phrase.lower())
            headers.append((b"connection", b"close"))
            await stream.send_all(self._bytes(
                conn, _response(status, headers), h11.Data(data=body), h11.EndOfMessage()))
            await self._close_after_answer(stream)

    @staticmethod
    def _bytes(conn: h11.Connection, *events: h11.Event) -> bytes:
        return b"".join(conn.send(e) or b"" for e in events)

    @staticmethod
    async def _close_after_answer(stream: trio.SocketStream) -> None:
        """Close our side, then read what the client still sends for a moment.

        Closing with unread input would reset the connection, and the
        client could lose the answer it was sent before reading it.
        """
        await stream.send_eof()
        with trio.move_on_after(LINGER):
            received = 0
            while received <= MAX_BODY + MAX_HEAD:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    return
                received += len(data)

"""UDP, TCP, TLS and WebSocket under trio: bytes in, bytes out, nothing else.

Everything SIP happens in the sans-IO :class:`~sipd.endpoint.Endpoint`;
this module only moves bytes between sockets and it, and keeps the clock.
Sends never await: UDP uses the non-blocking socket directly (a full socket
buffer drops the datagram, as the network would), TCP queues into a
bounded per-connection channel whose writer task drains it, so one slow
peer cannot stall the loop that serves everyone else.

Accepted connections are counted the moment ``accept`` returns, against a
global cap and a cap per source address, so that no burst of connections
can hold more slots than configured; see :mod:`.liveness` for when a
connection is closed again.

The stream transports are four kinds of one connection: ``tcp``; ``tls``,
the same behind a :class:`trio.SSLStream` whose handshake
(:mod:`.tls` owns the contexts) must end within ``tcp_message_timeout``;
``ws`` and ``wss``, where an HTTP upgrade comes first (within the same
deadline) and each WebSocket message is one SIP message
(:mod:`.websocket`). Every kind counts against the same caps, and a
connection is found by (transport, address): a phone's TLS connection is
not its TCP one. sipd opens TCP and TLS connections; WebSocket ones only
the phones open.

Why one module of this size: UDP and the stream kinds share the send path
and the per-source accounting.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import math
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from sipd.config import ListenAddress
from sipd.core.peer import Outgoing, Peer
from sipd.core.work import Action, Ask, Job, Outcome
from sipd.io.limits import accept
from sipd.io.liveness import Close, Liveness
from sipd.io.tls import TlsContexts
from sipd.io.websocket import WsClosed, WsServer
from sipd.io.workers import Workers
from sipd.sip.framing import FramingError, Ping, Pong, StreamFramer
from srfs.addresses import source_key
from srfs.files.home import FileWriter
from srfs.logtext import Tally

#: Datagrams handled per wake-up of a UDP listener before other tasks get a turn.
UDP_BATCH = 64

log = logging.getLogger("sipd.transport")

#: Outgoing messages queued for one TCP connection before it is closed as stuck.
TCP_SEND_QUEUE = 256
#: How long opening a connection to a phone or the next hop may take.
CONNECT_TIMEOUT = 5.0
#: Refused connections are logged per source at most this often, seconds.
REFUSAL_LOG_INTERVAL = 10.0
#: How late a timer may fire so that the timers due close together fire in
#: one pass, seconds. Under load every call's transactions end on timers of
#: their own (I, J, K, L, M), thousands a second, each a wake-up of the
#: timer task; SIP's shortest timer is T1 (500 ms).
TIMER_SLACK = 0.01
_RECV_SIZE = 65536


class StartupError(Exception):
    """A failure before the daemon is ready; the message is one line for the user."""


class EndpointLike(Protocol):
    wall_offset: float

    def receive(self, data: bytes, peer: Peer, now: float) -> list[Action]: ...
    def handle_timer(self, now: float) -> list[Action]: ...
    def get_timer(self) -> float | None: ...
    def connection_closed(self, peer: Peer, now: float) -> list[Action]: ...
    def framing_error(self, error: FramingError, peer: Peer) -> list[Action]: ...
    def connection_failed(self, peer: Peer, now: float) -> list[Action]: ...
    def connection_has_binding(self, peer: Peer) -> bool: ...


@dataclass
class TransportStats:
    udp_datagrams_in: int = 0
    udp_oversize_dropped: int = 0
    udp_send_errors: int = 0
    udp_internal_errors: int = 0
    timer_internal_errors: int = 0
    tcp_internal_errors: int = 0
    tcp_accepted: int = 0
    tcp_refused: int = 0
    tcp_refused_per_source: int = 0
    tcp_open: int = 0
    tcp_idle_closed: int = 0
    tcp_unregistered_closed: int = 0
    tcp_framing_errors: int = 0
    tcp_send_overflow: int = 0
    tcp_pings: int = 0
    tcp_pongs: int = 0
    tcp_connects: int = 0
    tcp_connect_failures: int = 0
    tls_handshake_failures: int = 0
    ws_upgrades_refused: int = 0
    ws_closed: int = 0
    jobs_started: int = 0
    jobs_failed: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


#: The stream transports and what each needs before SIP flows.
STREAM_KINDS = ("tcp", "tls", "ws", "wss")
_TLS_KINDS = ("tls", "wss")
_WS_KINDS = ("ws", "wss")


@dataclass
class _TcpConnection:
    """One stream connection of any kind (``peer.transport``)."""

    peer: Peer
    stream: trio.abc.Stream | None
    send: trio.MemorySendChannel[bytes]
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    #: What the per-source cap counts an accepted connection by; None for ours.
    source: str | None = None
    #: The WebSocket state once upgraded (ws, wss): what SIP messages are framed by.
    ws: WsServer | None = None
    #: Its reader has ended: nothing more is sent on it (it may still flush).
    closed: bool = False

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.peer.transport, self.peer.host, self.peer.port)


class _RefusalLog:
    """One log line per refused source per interval; the rest are counted into it."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._seen: dict[str, tuple[float, int]] = {}

    def due(self, key: str, now: float) -> int | None:
        """None to stay quiet, else how many refusals went unlogged before this one."""
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.interval:
            self._seen[key] = (last[0], last[1] + 1)
            return None
        if len(self._seen) > 4096:
            self._seen = {k: v for k, v in self._seen.items() if now - v[0] < self.interval}
        self._seen[key] = (now, 0)
        return last[1] if last is not None else 0


def _reset(sock: trio.socket.SocketType) -> None:
    # An abortive close (RST): the peer learns at once, and a flood of
    # refusals leaves no TIME_WAIT sockets behind here.
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def bind_sockets(
    listen: tuple[ListenAddress, ...], skip_unavailable_ipv6: bool, *, any_port: bool = False
) -> list[tuple[ListenAddress, socket.socket]]:
    """Open and bind every listening socket before anything else starts.

    Binding first means a busy port is a clear start-up error, not a task
    that dies later. With the default listen set, a host without IPv6
    simply gets IPv4 only. ``any_port`` binds each address on a port the
    kernel picks: a test of the addresses that leaves the configured ports
    to whoever holds them (``--check-config`` beside a running sipd).
    """
    out: list[tuple[ListenAddress, socket.socket]] = []
    try:
        for addr in listen:
            kind = socket.SOCK_DGRAM if addr.transport == "udp" else socket.SOCK_STREAM
            try:
                sock = socket.socket(addr.family, kind)
            except OSError as exc:
                if skip_unavailable_ipv6 and addr.family == socket.AF_INET6:
                    log.warning("IPv6 unavailable, not listening on %s: %s", addr, exc.strerror)
                    continue
                raise StartupError(f"cannot listen on {addr}: {exc.strerror}") from None
            try:
                if addr.family == socket.AF_INET6:
                    # Separate v4 and v6 sockets on the same port need this.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if kind == socket.SOCK_STREAM:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                else:
                    # A bigger receive buffer rides out bursts of REGISTERs.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
                sock.bind((addr.host, 0 if any_port else addr.port))
                if kind == socket.SOCK_STREAM:
                    sock.listen(512)
                sock.setblocking(False)
            except OSError as exc:
                sock.close()
                if (
                    skip_unavailable_ipv6
                    and addr.family == socket.AF_INET6
                    and exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)
                ):
                    log.warning("IPv6 unavailable, not listening on %s: %s", addr, exc.strerror)
                    continue
                raise StartupError(f"cannot listen on {addr}: {exc.strerror}") from None
            out.append((addr, sock))
    except BaseException:
        for _, s in out:
            s.close()
        raise
    if not out:
        raise StartupError("no address to listen on")
    return out


class Transports:
    """The sockets of one daemon and the tasks that serve them."""

    def __init__(
        self,
        endpoint: EndpointLike,
        *,
        max_message_size: int,
        tcp_max_connections: int,
        tcp_idle_timeout: float,
        tcp_message_timeout: float,
        tcp_max_connections_per_source: int | None = None,
        tcp_unregistered_idle_timeout: float = 0.0,
        tls: TlsContexts | None = None,
        ws_allowed_origins: tuple[str, ...] = (),
    ) -> None:
        self.endpoint = endpoint
        self.max_message_size = max_message_size
        self.tcp_max_connections = tcp_max_connections
        self.tcp_max_connections_per_source = tcp_max_connections_per_source or tcp_max_connections
        self.tcp_idle_timeout = tcp_idle_timeout
        self.tcp_message_timeout = tcp_message_timeout
        #: 0 turns the rule for connections without a registration off.
        self.tcp_unregistered_idle_timeout = tcp_unregistered_idle_timeout
        #: The TLS contexts in force (SIGHUP replaces them); None: no TLS at all.
        self.tls = tls
        #: Read at each upgrade: SIGHUP changes it for new connections.
        self.ws_allowed_origins = ws_allowed_origins
        self.stats = TransportStats()
        self._ids = itertools.count(1)
        self._udp: dict[int, socket.socket] = {}
        self._tcp: dict[int, _TcpConnection] = {}
        #: Connections by transport and remote address, for messages to a peer
        #: we hold no connection id for (conn 0): reused, or opened on demand.
        self._tcp_by_addr: dict[tuple[str, str, int], _TcpConnection] = {}
        #: Accepted connections open per :func:`source_key`.
        self._per_source: dict[str, int] = {}
        self._refusals = _RefusalLog(REFUSAL_LOG_INTERVAL)
        #: Failed handshakes and upgrades, logged per source now and then.
        self._failures = _RefusalLog(REFUSAL_LOG_INTERVAL)
        self._udp_family: dict[int, int] = {}
        self._timer_changed = trio.Event()
        self._armed = math.inf
        self.bound: list[ListenAddress] = []
        self._nursery: trio.Nursery | None = None
        #: The threads that run blocking jobs (PAM, NSS, home I/O), and the
        #: one that writes files in homes where the C path is there.
        self.workers = Workers(self._job_done,
                               writer=FileWriter() if FileWriter.available() else None)
        self._accept_failures = Tally()
        # A bug that every datagram, connection or timer pass meets again
        # logs its traceback once a minute, not hundreds of times a second.
        self._udp_errors = Tally()
        self._tcp_errors = Tally()
        self._timer_errors = Tally()
        #: Who asks the media relay's questions; set when ``rtpengine`` is.
        self.asker: Callable[[Ask[list[Action]]], None] = self._no_relay
        self.sync_clock()

    def sync_clock(self) -> None:
        """Tell the endpoint how the wall clock relates to trio's clock."""
        self.endpoint.wall_offset = time.time() - trio.current_time()

    # ------------------------------------------------------------ sending

    def send(self, actions: list[Action]) -> None:
        lost: list[Peer] = []
        for out in actions:
            if isinstance(out, Job):
                self._start_job(out)
                continue
            if isinstance(out, Ask):
                self.asker(out)
                continue
            peer = out.peer
            if peer.transport == "udp":
                sock = self._udp.get(peer.conn) if peer.conn else self._udp_for(peer.host)
                if sock is None:
                    continue
                try:
                    sock.sendto(out.data, (peer.host, peer.port))
                    self.stats.bytes_out += len(out.data)
                except OSError as exc:
                    # EAGAIN (buffer full) or an unreachable peer: UDP may lose it.
                    self.stats.udp_send_errors += 1
                    log.debug("udp send to %s failed: %s", peer, exc)
            else:
                conn = self._tcp.get(peer.conn) if peer.conn else self._tcp_to(peer)
                if conn is None:
                    log.debug("connection to %s is gone, dropping %d bytes", peer, len(out.data))
                    lost.append(peer)
                    continue
                data = out.data
                if conn.ws is not None:
                    data = conn.ws.message(data)
                elif peer.transport in _WS_KINDS:
                    continue  # not upgraded (yet, or ever): nothing SIP goes there
                try:
                    conn.send.send_nowait(data)
                    self.stats.bytes_out += len(out.data)
                except trio.WouldBlock:
                    self.stats.tcp_send_overflow += 1
                    log.warning("closing %s connection %s: peer is not reading",
                                peer.transport, peer)
                    conn.cancel.cancel()
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    # Closing: its reader has ended and it only flushes now.
                    lost.append(peer)
        # §17.1.4: a request that cannot leave fails its transaction now, not
        # at Timer B. Each report ends the branches still waiting on that
        # peer, so what it sends in turn cannot come back here for them.
        for peer in dict.fromkeys(lost):
            self.send(self.endpoint.connection_failed(peer, trio.current_time()))
        self._poke_timer()

    def _no_relay(self, ask: Ask[list[Action]]) -> None:
        # Only a relay asks; without one configured this is a bug, not an outage.
        log.error("%s: no media relay configured", ask.name)
        self.send(ask.then(Outcome(error=ConnectionError("no media relay")), trio.current_time()))

    def udp_sockets(self) -> dict[int, tuple[str, int]]:
        """Each UDP socket's bound address by its ``conn`` (once serving)."""
        out: dict[int, tuple[str, int]] = {}
        for conn, sock in self._udp.items():
            try:
                host, port = sock.getsockname()[:2]
            except OSError:
                continue
            out[conn] = (str(host), int(port))
        return out

    def _udp_for(self, host: str) -> socket.socket | None:
        """A listening UDP socket of the host's family: its port is what our Via says."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for conn, sock in self._udp.items():
            if self._udp_family.get(conn) == family:
                return sock
        return None

    def _tcp_to(self, peer: Peer) -> _TcpConnection | None:
        """The connection to ``peer``'s transport and address, opening one if there is none.

        sipd opens TCP and TLS connections; a WebSocket peer is reached only
        over the connection it opened.
        """
        key = (peer.transport, peer.host, peer.port)
        conn = self._tcp_by_addr.get(key)
        if conn is not None:
            return conn
        if peer.transport not in ("tcp", "tls") or (peer.transport == "tls" and self.tls is None):
            log.info("no %s connection to %s, and sipd does not open one", peer.transport, peer)
            return None
        if self._nursery is None or len(self._tcp) >= self.tcp_max_connections:
            self.stats.tcp_refused += 1
            return None
        conn_id = next(self._ids)
        send, receive = trio.open_memory_channel[bytes](TCP_SEND_QUEUE)
        conn = _TcpConnection(Peer(peer.transport, peer.host, peer.port, conn_id, peer.name),
                              None, send)
        # Registered before it connects: what is sent meanwhile waits in its queue.
        self._tcp[conn_id] = conn
        self._tcp_by_addr[key] = conn
        self.stats.tcp_open += 1
        self._nursery.start_soon(self._connect_tcp, conn, receive)
        return conn

    async def _connect_tcp(self, conn: _TcpConnection, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        peer = conn.peer
        self.stats.tcp_connects += 1
        stream: trio.abc.Stream | None = None
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(peer.host, peer.port)
                if peer.transport == "tls":
                    assert self.tls is not None
                    # The server's certificate must name the host we were
                    # asked for; an address target is checked by its chain.
                    by_name = bool(peer.name)
                    stream = trio.SSLStream(stream, self.tls.client(by_name=by_name),
                                            server_hostname=peer.name if by_name else peer.host)
                    await stream.do_handshake()
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            self.stats.tcp_connect_failures += 1
            named = f" ({peer.name})" if peer.name else ""
            log.info("cannot connect to %s%s: %s", peer, named, _why(exc))
            if stream is not None:
                await _close_quietly(stream)
            self._forget_tcp(conn)
            self.send(self.endpoint.connection_failed(peer, trio.current_time()))
            return
        conn.stream = stream
        await self._run_tcp(conn, receive)

    def _forget_tcp(self, conn: _TcpConnection) -> None:
        self._tcp.pop(conn.peer.conn, None)
        key = conn.key
        if self._tcp_by_addr.get(key) is conn:
            del self._tcp_by_addr[key]
        if conn.source is not None:
            left = self._per_source[conn.source] - 1
            if left:
                self._per_source[conn.source] = left
            else:
                del self._per_source[conn.source]
        self.stats.tcp_open -= 1

    def _start_job(self, job: Job[Any]) -> None:
        self.stats.jobs_started += 1
        self.workers.submit(job)

    def _job_done(self, job: Job[Any], outcome: Outcome[Any]) -> None:
        if outcome.error is not None:
            self.stats.jobs_failed += 1
        self.send(job.done(outcome, trio.current_time()))

    def _poke_timer(self) -> None:
        # Under load the timer task is nearly always due to wake within the
        # slack: whatever was armed meanwhile then fires at most the slack
        # late, as any timer may, and the endpoint is not asked (four heaps
        # looked at after every datagram were 2-3 % of a call's CPU).
        if self._armed <= trio.current_time() + TIMER_SLACK:
            return
        deadline = self.endpoint.get_timer()
        # One due within the slack of the planned wake-up waits for it.
        if deadline is not None and deadline + TIMER_SLACK < self._armed:
            self._timer_changed.set()

    # -------------------------------------------------------------- tasks

    async def timer_loop(self) -> None:
        ran = -math.inf
        while True:
            deadline = self.endpoint.get_timer()
            # At most one pass per TIMER_SLACK: a deadline right after the
            # last pass waits for the timers due just after it.
            self._armed = math.inf if deadline is None else max(deadline, ran + TIMER_SLACK)
            # Wake at least every 30 s to keep the wall clock offset fresh.
            with trio.move_on_at(min(self._armed, trio.current_time() + 30.0)):
                await self._timer_changed.wait()
            ran = trio.current_time()
            self.sync_clock()
            try:
                actions = self.endpoint.handle_timer(ran)
            except Exception:
                # As for a datagram: a bug met by a timer costs what this
                # pass would have sent, never the daemon. The timers it did
                # not reach are still due and run at the next pass.
                actions = []
                self.stats.timer_internal_errors += 1
                _log_bug(self._timer_errors, "a timer pass ended early: unexpected error")
            # The loop recomputes its deadline next: sending these must not
            # poke it awake again (that would spin while any timer is set).
            self._armed = -math.inf
            self.send(actions)
            self._timer_changed = trio.Event()

    async def serve(
        self,
        bound: list[tuple[ListenAddress, socket.socket]],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.timer_loop)
                nursery.start_soon(self.workers.serve_writes)
                for addr, sock in bound:
                    self.bound.append(addr)
                    if addr.transport == "udp":
                        conn = next(self._ids)
                        self._udp[conn] = sock
                        self._udp_family[conn] = addr.family
                        nursery.start_soon(self._serve_udp, sock, conn)
                    else:
                        nursery.start_soon(self._serve_tcp_listener, sock, nursery,
                                           addr.transport)
                task_status.started()
        finally:
            self.workers.close()

    async def _serve_udp(self, raw: socket.socket, conn: int) -> None:
        # The socket is read directly, as many datagrams as are queued (up
        # to UDP_BATCH) per wake-up: trio's awaitable recvfrom costs a trip
        # through the scheduler for every datagram, which under load was a
        # large share of the CPU spent per request.
        raw.setblocking(False)
        limit = self.max_message_size
        endpoint = self.endpoint
        stats = self.stats
        while True:
            await trio.lowlevel.wait_readable(raw)
            for _ in range(UDP_BATCH):
                try:
                    data, addr = raw.recvfrom(limit + 1)
                except BlockingIOError:
                    break
                except OSError as exc:
                    # ICMP errors from earlier sends surface here on Linux; the
                    # socket itself is fine.
                    log.debug("udp receive error: %s", exc)
                    continue
                stats.udp_datagrams_in += 1
                stats.bytes_in += len(data)
                if len(data) > limit:
                    stats.udp_oversize_dropped += 1
                    log.debug("dropped %d-byte datagram from %s: over max_message_size",
                              len(data), addr[0])
                    continue
                # One string per source address, not one per datagram: the
                # registrar and the throttle keep it for each phone.
                peer = Peer("udp", sys.intern(addr[0]), addr[1], conn)
                try:
                    self.send(endpoint.receive(data, peer, trio.current_time()))
                except Exception:
                    # A bug met by one datagram costs that datagram, never
                    # the daemon that serves every other phone (as a
                    # connection's input costs that connection).
                    stats.udp_internal_errors += 1
                    _log_bug(self._udp_errors,
                             "dropped a %d-byte datagram from %s: unexpected error",
                             len(data), peer)
            else:
                # A full batch: let the timers, TCP and the filesystem run too.
                await trio.lowlevel.checkpoint()

    async def _serve_tcp_listener(self, raw: socket.socket, nursery: trio.Nursery,
                                  kind: str = "tcp") -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
        while True:
            stream = await accept(listener, self._accept_failures, kind)
            # From here to start_soon nothing awaits: the connection is
            # counted before the next accept, so the caps hold exactly.
            try:
                host, port = stream.socket.getpeername()[:2]
            except OSError:
                _reset(stream.socket)
                continue
            if self._refuse(host):
                _reset(stream.socket)
                continue
            conn_id = next(self._ids)
            send, receive = trio.open_memory_channel[bytes](TCP_SEND_QUEUE)
            key = source_key(host)
            conn = _TcpConnection(Peer(kind, host, port, conn_id), stream, send, source=key)
            self._tcp[conn_id] = conn
            self._tcp_by_addr.setdefault(conn.key, conn)
            self._per_source[key] = self._per_source.get(key, 0) + 1
            self.stats.tcp_accepted += 1
            self.stats.tcp_open += 1
            nursery.start_soon(self._run_tcp, conn, receive)

    def _refuse(self, host: str) -> bool:
        """Whether a connection from ``host`` is over a cap; logs why, now and then."""
        key = source_key(host)
        if len(self._tcp) >= self.tcp_max_connections:
            why = f"{len(self._tcp)} connections open (tcp_max_connections)"
            log_key = ""
        elif self._per_source.get(key, 0) >= self.tcp_max_connections_per_source:
            self.stats.tcp_refused_per_source += 1
            where = "that address" if key == host else key
            why = f"{self._per_source[key]} open from {where} (tcp_max_connections_per_source)"
            log_key = key
        else:
            return False
        self.stats.tcp_refused += 1
        unlogged = self._refusals.due(log_key, trio.current_time())
        if unlogged is not None:
            more = f"; {unlogged} more refused since the last message" if unlogged else ""
            log.warning("refusing tcp connection from %s: %s%s", host, why, more)
        return True

    async def _run_tcp(self, conn: _TcpConnection, receive: trio.MemoryReceiveChannel[bytes]) -> None:
        """Serve one connection, accepted or opened by us, until it ends."""
        peer = conn.peer
        try:
            with conn.cancel:
                first = await self._open(conn)
                if first is None:
                    return
                stream = conn.stream
                assert stream is not None
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._tcp_writer, conn, stream, receive)
                    await self._tcp_reader(conn, first)
                    # Nothing more goes out on it: what is sent to this peer
                    # from now on fails, or opens a new connection.
                    conn.send.close()
                    self._closed(conn)
                    # Let the writer flush what is queued (a final 400, say),
                    # but not wait forever on a peer that stopped reading.
                    nursery.cancel_scope.deadline = trio.current_time() + 1.0
        except Exception:
            # A bug met by one connection's input costs that connection,
            # never the daemon that serves all the others.
            self.stats.tcp_internal_errors += 1
            _log_bug(self._tcp_errors, "closing %s connection %s: unexpected error",
                     peer.transport, peer)
        finally:
            self._closed(conn)
            self._forget_tcp(conn)
            if conn.stream is not None:
                await _close_quietly(conn.stream)

    async def _open(self, conn: _TcpConnection) -> list[bytes] | None:
        """An accepted connection's TLS handshake and WebSocket upgrade, as its kind needs.

        Both must be done within ``tcp_message_timeout`` of the accept: a
        client that stays silent, or trickles, holds its slot no longer.
        Returns the SIP messages that came with the upgrade, or None when
        the connection is to close.
        """
        kind = conn.peer.transport
        if conn.source is None or kind == "tcp":
            return []
        stream = conn.stream
        assert stream is not None
        limit = self.tcp_message_timeout or math.inf
        step = "TLS handshake" if kind in _TLS_KINDS else "WebSocket upgrade"
        try:
            with trio.fail_after(limit):
                if kind in _TLS_KINDS:
                    context = self.tls.server if self.tls is not None else None
                    if context is None:
                        return None
                    # The context in force now: a SIGHUP later does not touch this one.
                    stream = conn.stream = trio.SSLStream(stream, context, server_side=True)
                    await stream.do_handshake()
                if kind in _WS_KINDS:
                    step = "WebSocket upgrade"
                    return await self._upgrade(conn, stream)
                return []
        except trio.TooSlowError:
            self._failed(conn, step, f"not done within {limit:g} s (tcp_message_timeout)")
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._failed(conn, step, _why(exc))
        return None

    async def _upgrade(self, conn: _TcpConnection, stream: trio.abc.Stream) -> list[bytes] | None:
        ws = WsServer(self.max_message_size, self.ws_allowed_origins)
        while True:
            data = bytes(await stream.receive_some(_RECV_SIZE))
            self.stats.bytes_in += len(data)
            upgrade = ws.upgrade(data)
            if upgrade.reply:
                await stream.send_all(upgrade.reply)
            if not upgrade.done:
                continue
            if upgrade.refused is not None:
                self.stats.ws_upgrades_refused += 1
                self._failed(conn, "WebSocket upgrade", upgrade.refused)
                return None
            conn.ws = ws
            return upgrade.frames

    def _failed(self, conn: _TcpConnection, step: str, why: str) -> None:
        if step.startswith("TLS"):
            self.stats.tls_handshake_failures += 1
        # Per source and per kind of failure: a scanner's garbage does not
        # hide that a phone's handshakes time out.
        key = f"{conn.source or conn.peer.host} {step} {why[:12]}"
        unlogged = self._failures.due(key, trio.current_time())
        if unlogged is not None:
            more = f"; {unlogged} more failure(s) from there since the last message" if unlogged else ""
            log.info("closing %s connection %s: %s failed: %s%s", conn.peer.transport, conn.peer,
                     step, why, more)

    def _closed(self, conn: _TcpConnection) -> None:
        """The connection carries nothing more: requests that went out on it unanswered fail."""
        if conn.closed:
            return
        conn.closed = True
        if self._tcp_by_addr.get(conn.key) is conn:
            del self._tcp_by_addr[conn.key]
        self.send(self.endpoint.connection_closed(conn.peer, trio.current_time()))

    async def _tcp_writer(self, conn: _TcpConnection, stream: trio.abc.Stream,
                          receive: trio.MemoryReceiveChannel[bytes]) -> None:
        async for data in receive:
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                # The peer is gone (reset): the reader would learn it only
                # at its next deadline, and what is queued would wait for it.
                conn.cancel.cancel()
                return

    async def _tcp_reader(self, conn: _TcpConnection, first: list[bytes]) -> None:
        framer = StreamFramer(self.max_message_size)
        ws = conn.ws
        peer = conn.peer
        stream = conn.stream
        assert stream is not None
        unregistered = self.tcp_unregistered_idle_timeout
        clock = Liveness.opened(
            trio.current_time(),
            idle_timeout=self.tcp_idle_timeout,
            message_timeout=self.tcp_message_timeout,
            # Only for connections peers opened: ours carry our own traffic.
            unregistered_timeout=unregistered if conn.source is not None and unregistered else None,
        )
        has_binding = functools.partial(self.endpoint.connection_has_binding, peer)
        if first:
            messages = self._frames(conn, first)
            clock.received(trio.current_time(), frames=len(first), messages=messages,
                           pending=ws is not None and ws.pending)
        pinged = -math.inf
        while True:
            wake = clock.deadline()
            ping_at = math.inf
            if ws is not None and clock.idle_timeout and pinged < clock.last_traffic:
                # Browsers never ping by themselves but every one answers a
                # ping: a phone quiet between registrations keeps its
                # connection, and a gone one is found by the idle rule.
                ping_at = clock.last_traffic + clock.idle_timeout / 2
                wake = min(wake, ping_at)
            with trio.move_on_at(wake) as scope:
                try:
                    data = bytes(await stream.receive_some(_RECV_SIZE))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
            now = trio.current_time()
            if scope.cancelled_caught:
                if ws is not None and now >= ping_at:
                    self._raw(conn, ws.ping())
                    pinged = now
                if self._expired(peer, clock.check(now, has_binding)):
                    return
                continue
            if ws is not None:
                try:
                    frames, reply = ws.feed(data)
                except WsClosed as closed:
                    self.stats.ws_closed += 1
                    self._raw(conn, closed.reply)
                    log.log(logging.DEBUG if closed.normal else logging.INFO,
                            "closing %s connection %s: %s", peer.transport, peer, closed.reason)
                    return
                self._raw(conn, reply)
                self.stats.bytes_in += len(data)
                pending = ws.pending
            else:
                if not data:
                    return
                self.stats.bytes_in += len(data)
                try:
                    frames = framer.feed(data)
                except FramingError as exc:
                    self.stats.tcp_framing_errors += 1
                    log.info("closing %s connection %s: %s", peer.transport, peer, exc.reason)
                    self.send(self.endpoint.framing_error(exc, peer))
                    return
                pending = framer.pending
            messages = self._frames(conn, frames)
            clock.received(now, frames=len(frames), messages=messages, pending=pending)
            # A deadline can pass while bytes keep coming (a trickled message,
            # keep-alives on a connection nobody registered over).
            if self._expired(peer, clock.check(now, has_binding)):
                return

    def _frames(self, conn: _TcpConnection, frames: list[bytes]) -> int:
        """Hand framed input to the endpoint; how many were SIP messages."""
        peer = conn.peer
        messages = 0
        for frame in frames:
            if isinstance(frame, Ping):
                # RFC 5626 §3.5.1: answer a double-CRLF ping with one CRLF.
                self.stats.tcp_pings += 1
                self.send([Outgoing(b"\r\n", peer)])
            elif isinstance(frame, Pong):
                # The answer to a ping of ours: the connection is alive.
                self.stats.tcp_pongs += 1
            else:
                messages += 1
                self.send(self.endpoint.receive(frame, peer, trio.current_time()))
        return messages

    def _raw(self, conn: _TcpConnection, data: bytes) -> None:
        """Bytes of the WebSocket layer itself (pongs, close frames), queued as they are."""
        if not data:
            return
        try:
            conn.send.send_nowait(data)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            conn.cancel.cancel()

    def _expired(self, peer: Peer, why: tuple[Close, float] | None) -> bool:
        if why is None:
            return False
        reason, after = why
        if reason is Close.UNREGISTERED:
            self.stats.tcp_unregistered_closed += 1
        else:
            self.stats.tcp_idle_closed += 1
        log.info("closing %s connection %s: %s for %g s", peer.transport, peer, reason.value, after)
        return True


def _log_bug(tally: Tally, text: str, *args: object) -> None:
    """Log the exception being handled with its traceback, at the pace of ``tally``.

    A line says how many of the same kind went unlogged before it.
    """
    held = tally.count(trio.current_time())
    if held is None:
        return
    more = "" if held <= 1 else f" ({held - 1} more since the last such line)"
    log.exception(text + "%s", *args, more)


def _why(exc: BaseException) -> str:
    """The reason of a failed connect or handshake: the ssl error under trio's, if any."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        # "Hostname mismatch, certificate is not valid for 'sip.example.org'."
        return f"certificate verify failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    if isinstance(cause, OSError):
        return str(cause)
    return str(exc) or type(exc).__name__


async def _close_quietly(stream: trio.abc.Stream) -> None:
    """Close a stream within a second, whatever state it is in (TLS sends close_notify)."""
    with trio.CancelScope(shield=True):
        with trio.move_on_after(1):
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

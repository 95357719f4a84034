"""The daemon: ordered start-up, one trio loop, signals, systemd readiness."""

from __future__ import annotations

import logging
import os
import signal
import socket

import trio

from ..config import Settings
from ..endpoint import Endpoint
from ..identity import build_identity
from ..server import Server
from .transport import Transports, bind_sockets

log = logging.getLogger("sipd")


def notify_systemd(state: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(state.encode())
    except OSError as exc:
        log.warning("cannot notify systemd: %s", exc)


def build_endpoint(settings: Settings, ports: set[int], hosts: list[str]) -> Endpoint:
    realm = settings.effective_realm()
    identity = build_identity(realm, settings.domains, hosts, ports)
    server = Server(identity)
    return Endpoint(server, max_message_size=settings.max_message_size)


async def run(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT. Start-up failures raise StartupError."""
    bound = bind_sockets(settings.listen, skip_unavailable_ipv6=settings.listen_is_default)
    try:
        endpoint = build_endpoint(
            settings,
            ports={addr.port for addr, _ in bound},
            hosts=[addr.host for addr, _ in bound],
        )
        transports = Transports(
            endpoint,
            max_message_size=settings.max_message_size,
            tcp_max_connections=settings.tcp_max_connections,
            tcp_idle_timeout=settings.tcp_idle_timeout,
            tcp_message_timeout=settings.tcp_message_timeout,
        )
        endpoint.transport_stats = transports.stats
    except BaseException:
        for _, sock in bound:
            sock.close()
        raise
    async with trio.open_nursery() as nursery:
        await nursery.start(transports.serve, bound)
        log.info(
            "sipd ready: realm %s, listening on %s",
            settings.effective_realm(),
            ", ".join(str(a) for a, _ in bound),
        )
        notify_systemd("READY=1")
        await _wait_for_signals()
        notify_systemd("STOPPING=1")
        nursery.cancel_scope.cancel()
    for _, sock in bound:
        sock.close()
    log.info("sipd stopped")


async def _wait_for_signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                # Caught so that a reload request never kills the daemon.
                log.info("SIGHUP received: nothing is reloadable yet; restart sipd to apply changes")
                continue
            log.info("%s received, shutting down", signal.Signals(signum).name)
            return

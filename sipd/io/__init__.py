"""trio transports and the daemon runner: the code that runs on the event loop.

:mod:`~sipd.io.daemon` starts sipd in order and serves until a signal,
:mod:`~sipd.io.transport` holds the UDP, TCP, TLS and WebSocket sockets
(with :mod:`~sipd.io.tls` for the TLS contexts and :mod:`~sipd.io.websocket`
for SIP over WebSocket),
:mod:`~sipd.io.statefs` feeds the ``/run/sr`` tree and writes what is
written to it, :mod:`~sipd.io.metrics_http` serves the metrics over HTTP,
:mod:`~sipd.io.startup` makes the start-up checks
(shared with ``--check-config``), :mod:`~sipd.io.limits` and
:mod:`~sipd.io.liveness` bound file descriptors and TCP connections.

It may import every other part of :mod:`sipd` and :mod:`srfs`; nothing
imports it but :mod:`sipd.cli`. The blocking parts of the others (NSS,
PAM, files in homes and in ``/etc/sipd``) run in worker threads once the
daemon serves, never on the event loop.
"""

"""trio transports and the daemon runner: the only code here that does I/O.

It may import every other part of :mod:`sipd` and :mod:`srfs`; nothing
imports it but :mod:`sipd.cli`. Blocking work (NSS, PAM, files in homes)
runs in worker threads, never on the event loop.
"""

"""trio transports and the daemon runner: the only code here that does I/O."""

"""sipd: a SIP registrar and proxy for a UNIX host."""

__version__ = "0.1.0"

"""sipd: a SIP registrar and proxy for a UNIX host.

The layers, each a package; imports point down only (a test reads them):

- :mod:`sipd.io`: trio sockets, the daemon runner, signals, the state
  filesystem's daemon side. The only package (with :mod:`sipd.cli`) that
  imports trio or pyfuse3, and the only one that blocks.
- :mod:`sipd.endpoint`: the sans-IO endpoint that joins the SIP core to
  the services: bytes and ``now`` in, bytes and work out.
- :mod:`sipd.proxy` and :mod:`sipd.registrar`: how the server routes
  requests for others, and what it answers to requests for itself
  (REGISTER, OPTIONS).
- :mod:`sipd.auth`: one authentication flow, shared by both.
- :mod:`sipd.core`: what they share: transport addresses, the work handed
  to the I/O layer, who "this server" is.
- :mod:`sipd.sip`: the sans-IO SIP core; it imports nothing else of the
  project.

:mod:`srfs` below them all holds users, homes and the live state.
"""

__version__ = "0.1.0"

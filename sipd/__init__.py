"""sipd: a SIP registrar and proxy for a UNIX host.

The layers, lowest first; each imports only those before it, and
:mod:`srfs` below them all (``tests/test_layers.py`` reads the imports):

- :mod:`sipd.sip`: the sans-IO SIP core; it imports nothing else of the
  project.
- :mod:`sipd.core`: what the services share: transport addresses, the work
  handed to the I/O layer, who "this server" is, the alias map and trunks
  in force.
- :mod:`sipd.auth`: one authentication flow, for REGISTER and for calls.
- :mod:`sipd.registrar` and :mod:`sipd.proxy`: what the server answers to
  requests for itself (REGISTER, OPTIONS), and how it routes requests for
  others.
- :mod:`sipd.endpoint`: the sans-IO endpoint that joins the SIP core to
  the services: bytes and ``now`` in, bytes and work out.
  :mod:`sipd.config`: the table of settings.
- :mod:`sipd.io`: trio sockets, the daemon runner, signals, the state
  filesystem's daemon side. With :mod:`sipd.cli`, the only code of sipd
  that imports trio (pyfuse3 it reaches through :mod:`srfs.fs.fuse`); once
  the daemon serves, it runs everything that blocks in worker threads.
- :mod:`sipd.cli`: the ``sipd`` command.
"""

__version__ = "0.1.0"

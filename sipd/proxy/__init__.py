"""The transaction-stateful proxy of RFC 3261 §16, sans-IO, in small parts.

- :mod:`~sipd.proxy.proxy`: how a request is routed (checks, who calls,
  where to); the entry points the endpoint calls.
- :mod:`~sipd.proxy.routing`: loops, this proxy's own routes, local AORs,
  registered contacts inside a dialog.
- :mod:`~sipd.proxy.callerid`: caller identity, privacy, the caller's
  credentials consumed.
- :mod:`~sipd.proxy.local` and :mod:`~sipd.proxy.users`: local users as
  targets, their settings and their bindings.
- :mod:`~sipd.proxy.forking`: branches out, the best response back,
  CANCEL and the proxy's timers; :mod:`~sipd.proxy.context` is what it
  keeps per request.
- :mod:`~sipd.proxy.ack`: the stateless ACK of a 2xx.
- :mod:`~sipd.proxy.targets` (next hops), :mod:`~sipd.proxy.limits` (what
  one sender can make it do), :mod:`~sipd.proxy.calltrack` (calls in
  progress and their records).

What blocks (a user's settings read by :mod:`~sipd.proxy.users`, a next
hop's name resolved by :mod:`~sipd.proxy.targets`) is handed to the I/O
layer as work, never called on the way. Imports :mod:`sipd.sip`,
:mod:`sipd.core`, :mod:`sipd.auth`, :mod:`sipd.registrar` and :mod:`srfs`.
"""

"""Media relay through rtpengine, sans-IO: its ng protocol and which calls it carries.

:mod:`~sipd.media.ng` is the protocol (messages, cookies, tries and
time-outs, with ``now`` passed in); :mod:`~sipd.media.relay` is the
policy (``media_relay``) and the media state of each relayed call, and
turns offers, answers and call ends into ng requests for the I/O layer
(:class:`~sipd.core.work.Ask`). The proxy decides when to ask; the I/O
layer (:mod:`sipd.io.mediarelay`) owns the socket. Imports
:mod:`sipd.sip`, :mod:`sipd.core` and :mod:`srfs`.
"""

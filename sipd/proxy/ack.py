"""The ACK of a 2xx (RFC 3261 §13.2.2.4, §16.7 step 5): end to end, forwarded statelessly.

It belongs to no transaction of this proxy: it follows its Route set, or
the dialog's flow token (see :mod:`~sipd.proxy.flowtoken`), or goes to the
registered phone its Request-URI names, with one Via of ours.
An ACK that looped or ran out of hops is dropped; nothing is ever sent
back for an ACK.
"""

from __future__ import annotations

import logging

from sipd.core.peer import Outgoing, Peer
from sipd.proxy.callerid import drop_our_credentials
from sipd.proxy.routing import BRANCH_PREFIX, ContactIndex, Router, branch_key
from sipd.proxy.targets import LivePeer, Target, flow_target, uri_target
from sipd.sip.errors import ParseError, SipError
from sipd.sip.headers import parse_address
from sipd.sip.message import Request
from sipd.sip.uri import SipURI

log = logging.getLogger("sipd.proxy")


def forward_ack(ack: Request, router: Router, contacts: ContactIndex,
                live_peer: LivePeer, realm: str,
                source: Peer | None = None) -> list[Outgoing]:
    """Where the ACK goes and with what Via; [] to drop it."""
    try:
        mf = ack.max_forwards
        if mf is not None and mf <= 0:
            return []
        if router.looped(ack):
            return []
        fwd = ack.copy()
        own = router.strip_own_routes(fwd)
        drop_our_credentials(fwd, realm)
        routes = fwd.values("Route")
        if not own and not routes:
            return []
        hop = parse_address(routes[0], "Route").uri if routes else fwd.uri
        if not isinstance(hop, SipURI):
            return []
        flow = router.across(own, source) if source is not None and not routes else None
        t = (flow_target(fwd.uri_text, flow, live_peer)
             or (None if routes else contacts.hop(fwd.uri_text, live_peer)) or uri_target(hop))
        dest = _on_live_connection(t, live_peer).dest
        if dest is None:
            return []
        fwd.set("Max-Forwards", str(mf - 1 if mf is not None else 70))
        host, port = router.addresses.for_peer(dest)
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        branch = f"{BRANCH_PREFIX}{branch_key(ack)}.a"
        fwd.prepend("Via", f"SIP/2.0/{dest.transport.upper()} {hostport};branch={branch};rport")
        return [Outgoing(fwd.to_bytes(), dest)]
    except (SipError, ParseError, ValueError) as exc:
        log.info("dropped an ACK: %s", exc)
        return []


def _on_live_connection(t: Target, live_peer: LivePeer) -> Target:
    """Over a stream, the connection already open to the next hop, if there is one."""
    if t.dest is not None and t.dest.reliable and t.dest.conn == 0:
        live = live_peer(t.dest.transport, t.dest.host, t.dest.port)
        if live is not None:
            return Target(t.uri, live, t.routes, t.host, t.port, t.transport)
    return t

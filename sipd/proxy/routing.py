"""Where a request stands on its way: loops, this proxy's own routes, local AORs.

Pure decisions over the request and who "this server" is
(:class:`~sipd.core.identity.LocalIdentity`, and the address each
transport is reached at, :class:`~sipd.proxy.targets.LocalAddresses`).

Loops (RFC 3261 §16.3 item 4, RFC 5393 §4.2): each forwarded request
gets a Via branch ``z9hG4bKsr<key>.<target>.<n>``, where ``key`` is a
digest of what makes it the same request again and ``target`` a digest of
the local user it was routed to. A request that comes back with our Via
and the same key is a loop; one that comes back changed (a spiral) is a
loop too when it would be routed to the same local user again.

Inside a dialog, this proxy's Record-Route carries a flow token
(:mod:`~sipd.proxy.flowtoken`): :meth:`Router.strip_own_routes` returns
the URIs of ours it removed, and :meth:`Router.across` says which flow a
request goes over.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from sipd.core.identity import LocalIdentity
from sipd.core.peer import Peer
from sipd.proxy.context import DEFAULT_MAX_BREADTH
from sipd.proxy.flowtoken import FlowTokens
from sipd.proxy.targets import LivePeer, LocalAddresses, Target, binding_target
from sipd.sip.errors import ParseError, SipError
from sipd.sip.headers import parse_address
from sipd.sip.message import Request
from sipd.sip.transaction import MAGIC_COOKIE
from sipd.sip.uri import SipURI
from srfs.state.location import Binding, Change, ChangeKind, LocationStore, contact_key

BRANCH_PREFIX = MAGIC_COOKIE + "sr"


def branch_key(req: Request) -> str:
    """A digest of what makes a request the same request again (§16.6 step 8)."""
    parts = [req.uri_text.strip(), req.call_id, str(req.cseq.seq)]
    try:
        parts.append(req.from_.tag or "")
        parts.append(req.to.tag or "")
    except ParseError:
        pass
    parts.extend(req.values("Route"))
    parts.extend(req.values("Proxy-Require"))
    return hashlib.blake2s("\n".join(parts).encode(), digest_size=8).hexdigest()


def target_tag(user: str) -> str:
    return hashlib.blake2s(user.encode("utf-8", "surrogateescape"), digest_size=4).hexdigest()


def max_breadth(req: Request) -> int:
    """RFC 5393 §5: the request's Max-Breadth, or the default; 400 if malformed."""
    text = req.get("Max-Breadth")
    if text is None:
        return DEFAULT_MAX_BREADTH
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 9:
        raise SipError(400, "Bad Max-Breadth header")
    return min(int(text), DEFAULT_MAX_BREADTH)


class Router:
    """This proxy's view of a request's path: what is ours, what is local, what looped."""

    def __init__(self, identity: LocalIdentity, addresses: LocalAddresses,
                 flows: FlowTokens | None = None) -> None:
        self.identity = identity
        self.addresses = addresses
        #: The tokens this proxy writes into its Record-Route, and reads back.
        self.flows = flows if flows is not None else FlowTokens()

    def is_local_aor(self, uri: SipURI) -> bool:
        """A user at one of our domains; a local host with another port is a phone."""
        if uri.user is None or not self.identity.is_local_host(uri.host):
            return False
        return uri.port is None or uri.port in self.identity.ports

    def is_me(self, uri: SipURI) -> bool:
        return self.identity.is_me(uri) or self.addresses.is_mine(uri.host, uri.port)

    def branch_id(self, req: Request, target: str, seq: int) -> str:
        """The Via branch of a request forked now (see the module text)."""
        return f"{BRANCH_PREFIX}{branch_key(req)}.{target}.{seq}"

    def _ours(self, req: Request) -> list[list[str]]:
        """The parts of the branch IDs of the Vias this proxy put on ``req``."""
        found = []
        for via in req.vias:
            branch = via.branch or ""
            if branch.startswith(BRANCH_PREFIX) and self.addresses.is_mine(via.host, via.port):
                found.append(branch[len(BRANCH_PREFIX):].split("."))
        return found

    def looped(self, req: Request) -> bool:
        """RFC 3261 §16.3 item 4: the very same request came back."""
        ours = self._ours(req)
        if not ours:
            return False
        key = branch_key(req)
        return any(parts[0] == key for parts in ours)

    def passed_before(self, req: Request, tag: str) -> bool:
        """RFC 5393 §4.2: ``req`` was already routed here to the same local user.

        A spiral that comes back changed is allowed by §16.3, but one that
        ends at the same user again would fork again, and again.
        """
        return any(len(parts) >= 3 and parts[1] == tag for parts in self._ours(req))

    def strip_own_routes(self, fwd: Request) -> list[SipURI]:
        """§16.4: a strict router's request comes with our URI as Request-URI;
        our own Route entries on top are ours to remove. The URIs of ours
        removed (none: the request did not come through our Record-Route)."""
        routes = fwd.values("Route")
        uri = fwd.uri
        ours: list[SipURI] = []
        if (routes and isinstance(uri, SipURI) and self.is_me(uri)
                and (uri.user is None or self.flows.decode(uri.user) is not None)):
            fwd.uri = parse_address(routes[-1], "Route").uri
            routes = routes[:-1]
            ours.append(uri)
        while routes:
            top = parse_address(routes[0], "Route").uri
            if not (isinstance(top, SipURI) and self.is_me(top)):
                break
            routes = routes[1:]
            ours.append(top)
        if ours:
            fwd.set_values("Route", routes)
        return ours

    def across(self, ours: list[SipURI], source: Peer) -> Peer | None:
        """The flow a request from ``source`` goes over, from the token in one of
        ``ours`` (its Route entries of this proxy); None without one, or when
        the request came over neither of the dialog's flows."""
        for uri in ours:
            if uri.user:
                flows = self.flows.decode(uri.user)
                if flows is not None:
                    return FlowTokens.other(flows, source)
        return None


class ContactIndex:
    """Registered contacts by URI: the way to a phone inside a dialog.

    Inside a dialog the contact is the Request-URI; a phone behind NAT is
    reachable only where its REGISTER came from, as for a new call.
    """

    def __init__(self, store: LocationStore,
                 udp_socket: Callable[[str], int] | None = None) -> None:
        #: Our socket of a UDP flow (see :meth:`sipd.core.flows.RegisteredFlows.udp_socket`).
        self.udp_socket = udp_socket
        self._by_contact: dict[str, Binding] = {}
        for b in store:
            self._by_contact[b.contact_identity] = b
        store.subscribe(self._changed)

    def hop(self, uri_text: str, live_peer: LivePeer) -> Target | None:
        b = self._by_contact.get(contact_key(uri_text))
        if b is None or b.path or not b.received:
            return None
        try:
            return binding_target(b, live_peer, self.udp_socket)
        except (SipError, ParseError):
            return None

    def _changed(self, change: Change) -> None:
        b = change.binding
        if change.previous is not None and change.previous.contact != b.contact:
            self._by_contact.pop(change.previous.contact_identity, None)
        key = b.contact_identity
        if change.kind is ChangeKind.REMOVED:
            if self._by_contact.get(key) == b:
                del self._by_contact[key]
        else:
            self._by_contact[key] = b

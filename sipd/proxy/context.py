"""What the proxy keeps per request: its context, its branches, and the words they share.

One :class:`Context` per proxied request (a server transaction), one
:class:`Branch` per destination it was forked to (a client transaction).
Neither points back at the other's owner or holds a callable: a branch
names its request by its server transaction, and their timers are
entries in the core's one :class:`~sipd.sip.timers.Deadlines` (kind and
owner, no closure), so a finished request is freed by reference counting
alone, with no cycle to break.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from sipd.core.peer import Outgoing, Peer
from sipd.core.work import Ask, Defer
from sipd.proxy.callerid import FromPolicy, OutboundIdentity
from sipd.proxy.targets import Target
from sipd.sip.errors import ParseError
from sipd.sip.message import Request, Response, make_response
from sipd.sip.transaction import ClientTransaction, Event, ServerTransaction

#: What the proxy asks the endpoint to do.
ProxyAction: TypeAlias = "Event | Outgoing | Defer[Any, list[ProxyAction]] | Ask[list[ProxyAction]]"

#: Methods the proxy forwards (RFC 3261 and the usual extensions).
PROXY_METHODS = frozenset(
    ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "MESSAGE", "INFO", "UPDATE", "REFER",
     "NOTIFY", "SUBSCRIBE", "PRACK")
)
#: Requests that create a dialog: the proxy stays in its path (Record-Route).
DIALOG_METHODS = frozenset(("INVITE", "SUBSCRIBE", "REFER"))
#: Option tags the proxy does not need to understand to forward (none yet).
PROXY_EXTENSIONS: tuple[str, ...] = ()

#: Timer C (§16.6 step 11): "greater than 3 minutes".
TIMER_C = 181.0
#: How long to wait for the 487s of CANCELled branches before giving up on them.
CANCEL_WAIT = 32.0
DEFAULT_RING_TIMEOUT = 20
#: Unconditional forwards followed in a row before the call is refused.
MAX_FORWARD_CHAIN = 5
#: Branches one request may ever have (every q group and forward counted):
#: what one request can make the proxy send is bounded by this.
MAX_BRANCHES = 32
#: RFC 5393 §5: the breadth a request without Max-Breadth starts with.
DEFAULT_MAX_BREADTH = 60


class TimerKind(enum.Enum):
    """The proxy's timers, beside the transactions' in the same Deadlines."""

    C = "C"
    """A branch's Timer C: CANCEL it, or give it up (on a :class:`Branch`)."""
    RING = "ring"
    """``ring_timeout`` of ``forward_noanswer`` (on a :class:`Context`)."""
    CANCEL_WAIT = "cancel-wait"
    """The 487s of CANCELled branches take too long (on a :class:`Context`)."""
    ANSWER = "answer"
    """A held answer is due: a failed authentication's (on a :class:`Context`)."""


class CallHooks(Protocol):
    """Where call tracking and call records plug in; every method is optional work."""

    def call_started(self, call_id: str, caller_user: str | None, callee_user: str | None,
                     from_uri: str, to_uri: str, wall: float) -> None: ...
    def call_answered(self, call_id: str, wall: float) -> None: ...
    def call_failed(self, call_id: str, status: int, wall: float) -> None: ...
    def call_ended(self, call_id: str, wall: float) -> None: ...
    def call_forwarded(self, call_id: str, callee_user: str | None, status: int,
                       wall: float) -> None: ...


class NoHooks:
    """The default :class:`CallHooks`: nothing is tracked."""

    def call_started(self, call_id: str, caller_user: str | None, callee_user: str | None,
                     from_uri: str, to_uri: str, wall: float) -> None:
        pass

    def call_answered(self, call_id: str, wall: float) -> None:
        pass

    def call_failed(self, call_id: str, status: int, wall: float) -> None:
        pass

    def call_ended(self, call_id: str, wall: float) -> None:
        pass

    def call_forwarded(self, call_id: str, callee_user: str | None, status: int,
                       wall: float) -> None:
        pass


@dataclass
class ProxyPolicy:
    outbound_proxy: str = ""
    #: A From user the caller does not own: "reject" (403) or "rewrite".
    from_policy: FromPolicy = "reject"


@dataclass
class ProxyStats:
    proxy_requests: int = 0
    proxy_branches: int = 0
    proxy_rejected: int = 0
    proxy_loops: int = 0
    proxy_errors: int = 0
    proxy_trunk_calls: int = 0
    proxy_branches_refused: int = 0
    proxy_unknown_throttled: int = 0
    #: Calls whose users' settings were known without a look-up (no worker thread).
    proxy_users_cached: int = 0


class Branch:
    """One destination a request was forked to: a client transaction.

    A plain class for the reason :class:`Context` gives; the defaults below
    are each instance's.
    """

    server: ServerTransaction
    """The request's server transaction: the key of its :class:`Context`."""
    txn: ClientTransaction
    request: Request
    dest: Peer
    provisional: bool = False
    final: int = 0
    cancel_sent: bool = False
    cancel_wanted: bool = False
    superseded: bool = False
    unanswered: bool = False
    """Counted in :class:`~sipd.proxy.limits.Destinations` until its first answer."""
    nat: bool = False
    """Its target is a phone behind a NAT (:attr:`~sipd.proxy.targets.Target.nat`)."""
    answered_sdp: tuple[bytes, bytes] | None = None
    """The last SDP answer of this branch and rtpengine's for it: a 2xx
    sent again carries the same, and is not asked about again."""
    _timers: dict[Any, int]

    def __init__(self, server: ServerTransaction, txn: ClientTransaction, request: Request,
                 dest: Peer, *, unanswered: bool = False, nat: bool = False) -> None:
        self.server = server
        self.txn = txn
        self.request = request
        self.dest = dest
        self.unanswered = unanswered
        self.nat = nat
        self._timers = {}


class Context:
    """One proxied request: its server transaction, branches and decisions.

    A plain class, not a dataclass: mypyc compiles its ``__init__`` (see
    sipd.io.compiled), where a dataclass's stays interpreted, and one is
    made for every request proxied. The defaults below are each instance's.
    """

    server: ServerTransaction
    request: Request
    source: Peer
    caller: str | None = None
    callee: str | None = None
    distrusted: bool = False
    """From a trusted trunk whose owner's account is suspended: as untrusted."""
    branches: list[Branch]
    later_groups: list[list[Target]]
    responses: list[tuple[Response, bool]]
    """Finals of branches that count, with True when generated here."""
    final_sent: bool = False
    answered: bool = False
    cancelled: bool = False
    call_started: bool = False
    forward_noanswer: str | None = None
    forwarding: bool = False
    """Targets still being looked up or resolved: not finished yet."""
    base: Request | None = None
    identity: OutboundIdentity | None = None
    """What a call from a local user asserts (P-Asserted-Identity)."""
    arrived: float = 0.0
    breadth: int = DEFAULT_MAX_BREADTH
    """RFC 5393 Max-Breadth: parallel branches this request may still have."""
    sent: int = 0
    """Branches sent so far (at most :data:`MAX_BRANCHES`)."""
    target_tag: str = "x"
    """The local user this request is routed to, hashed into our Via branch:
    the same request coming back for the same user is a loop."""
    forward_status: int = 0
    """Set when ``forward_noanswer`` sent the call on (408): its new local
    callee, once known, gets a leg of the call record."""
    held: Response | None = None
    """An answer waiting for its :attr:`TimerKind.ANSWER`."""
    offered: bool = False
    """The media relay was considered for this request's SDP offer (once, whatever
    later q groups and forwards do with the request)."""
    relayed: bool = False
    """rtpengine took this request's offer: the SDP answers to it go there too."""
    _timers: dict[Any, int]

    def __init__(self, server: ServerTransaction, request: Request, source: Peer, *,
                 arrived: float = 0.0) -> None:
        self.server = server
        self.request = request
        self.source = source
        self.arrived = arrived
        self.branches = []
        self.later_groups = []
        self.responses = []
        self._timers = {}

    @property
    def is_invite(self) -> bool:
        return self.request.method == "INVITE"

    @property
    def initial(self) -> bool:
        """Outside a dialog: a new call, not a re-INVITE or BYE."""
        return self.request.to.tag is None

    def live(self) -> list[Branch]:
        return [b for b in self.branches if not b.final and not b.txn.terminated]


# ---------------------------------------------------------------- responses


def tag_for(req: Request) -> str:
    """A To tag for our own answers to ``req``: the same on a retransmission."""
    return hashlib.blake2s(f"{req.call_id}|{req.cseq.seq}|{_from_tag(req)}".encode(),
                           digest_size=5).hexdigest()


def _from_tag(req: Request) -> str:
    try:
        return req.from_.tag or ""
    except ParseError:
        return ""


def reply(req: Request, status: int, reason: str,
          headers: tuple[tuple[str, str], ...] = ()) -> Response:
    """An answer of the proxy's own to ``req``."""
    return make_response(req, status, reason, (("Server", "sipd"), *headers), to_tag=tag_for(req))


def upstream(resp: Response, ctx: Context) -> Response:
    """A response to forward (§16.7 step 3): without the Via we put there.

    The Vias are the ones the request came with, not what the next hop
    returned: a UAS that echoes the wrong Vias (the CANCEL's, say) must not
    make the answer unroutable.
    """
    out = resp.copy()
    out.set_values("Via", ctx.request.values("Via"))
    return out


def with_status(resp: Response, status: int, reason: str) -> Response:
    out = resp.copy()
    out.status = status
    out.reason = reason
    return out

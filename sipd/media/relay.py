"""The media relay: which calls go through rtpengine, and the ng requests that make it so.

:class:`MediaRelay` owns the media state of every relayed call (one
:class:`Session` per Call-ID, opened by the From tag of its first INVITE)
and the policy (``media_relay``):

- ``always``: every INVITE with an SDP offer is relayed;
- ``nat``: only when the caller or a callee is behind a NAT
  (:func:`caller_behind_nat`, and the proxy's view of the callee's
  binding, :attr:`~sipd.proxy.targets.Target.nat`);
- ``never``: nothing is.

An in-dialog INVITE (a re-INVITE) is relayed exactly when its call is,
whatever the policy says now, so a call never changes course halfway.

It is sans-IO: it builds the ng ``offer``, ``answer`` and ``delete``
messages as :class:`~sipd.core.work.Ask` values, and their continuations
put rtpengine's SDP in the message (``to_bytes`` states the new
Content-Length) or, when rtpengine fails or does not answer, leave the
message as it was: the call goes on unrelayed, with one log line at most
every :data:`FAILURE_LOG_INTERVAL` seconds (:class:`~srfs.logtext.Tally`)
and a count in :class:`MediaStats`. Deletes need no answer: they are
queued (:meth:`MediaRelay.end`) and the endpoint drains them
(:meth:`MediaRelay.take_pending`).

The flags of every offer and answer: ``replace: [origin,
session-connection]`` (o= and c= name rtpengine), ``ICE: remove`` (no
candidate lets the phones go around the relay), ``received-from`` (the
address the message came from) and, for a party behind a NAT,
``SIP-source-address``: rtpengine sends that party's media to the address
its SIP came from rather than to the private one in its SDP, until
rtpengine hears the party's own RTP and answers where it came from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from sipd.core.peer import Peer
from sipd.core.work import Ask, Outcome
from sipd.media.ng import NgError, Reply
from sipd.sip.errors import ParseError
from sipd.sip.message import Message, Request, Response
from srfs.addresses import parse_host
from srfs.logtext import Tally, quote

log = logging.getLogger("sipd.media")

__all__ = [
    "MODES",
    "MediaRelay",
    "MediaStats",
    "Mode",
    "Session",
    "behind_nat",
    "caller_behind_nat",
    "carries_sdp",
]

R = TypeVar("R")

Mode = Literal["always", "nat", "never"]
MODES: tuple[Mode, ...] = ("always", "nat", "never")
#: The default policy once ``rtpengine`` is set.
DEFAULT_MODE: Mode = "nat"
#: Seconds between two log lines about rtpengine failing (the rest are counted).
FAILURE_LOG_INTERVAL = 60.0
#: Sessions kept at most: past this the oldest is deleted to make room.
MAX_SESSIONS = 50_000

#: What every offer and answer asks of rtpengine (see the module text).
_FLAGS: dict[str, Any] = {"replace": ["origin", "session-connection"], "ICE": "remove"}


@dataclass
class MediaStats:
    """ng requests by command, and those that failed (no answer, or an error)."""

    offers: int = 0
    answers: int = 0
    deletes: int = 0
    offer_failures: int = 0
    answer_failures: int = 0
    delete_failures: int = 0
    sessions_dropped: int = 0
    """Sessions deleted to stay within :data:`MAX_SESSIONS`."""


@dataclass(slots=True)
class Session:
    """One relayed call, as rtpengine knows it: Call-ID and the From tag of its offer."""

    call_id: str
    from_tag: str
    started: float


def carries_sdp(msg: Message) -> bool:
    """Whether ``msg``'s body is an SDP (``application/sdp``, not multipart)."""
    if not msg.body.strip():
        return False
    ctype = msg.get("Content-Type")
    return ctype is not None and ctype.split(";", 1)[0].strip().lower() == "application/sdp"


def behind_nat(advertised: str, seen: str) -> bool:
    """Whether a party that says it is at ``advertised`` but is seen at ``seen`` is behind a NAT.

    Compared as addresses (:func:`~srfs.addresses.parse_host`): a name, or
    any other address than the one its packets come from, says a NAT
    rewrote them on the way.
    """
    mine, theirs = parse_host(advertised), parse_host(seen)
    return mine is None or theirs is None or mine != theirs


def caller_behind_nat(req: Request, source: Peer) -> bool:
    """The sender of ``req`` is behind a NAT: its top Via names another host than
    the one the request came from (where RFC 3261 §18.2.1 adds ``received``)."""
    try:
        return behind_nat(req.top_via.host, source.host)
    except ParseError:
        return False


def _family(host: str) -> str:
    return "IP6" if ":" in host else "IP4"


def _tag(msg: Message, which: str) -> str | None:
    try:
        return (msg.from_ if which == "from" else msg.to).tag
    except ParseError:
        return None


class MediaRelay:
    """The policy, the sessions of relayed calls, and what their ng requests do."""

    def __init__(self, mode: Mode, where: str, *,
                 log_interval: float = FAILURE_LOG_INTERVAL) -> None:
        self.mode: Mode = mode
        #: rtpengine's address, for the log.
        self.where = where
        self.stats = MediaStats()
        #: Relayed calls by Call-ID (rtpengine's own key), oldest first.
        self.sessions: dict[str, Session] = {}
        self._pending: list[Ask[list[Any]]] = []
        self._failures = Tally(log_interval)

    # ----------------------------------------------------------- policy

    def relays(self, req: Request, *, caller_nat: bool, callee_nat: bool) -> bool:
        """Whether the offer in INVITE ``req`` goes through rtpengine."""
        if not carries_sdp(req):
            return False
        if _tag(req, "to") is not None:
            return self.session_of(req) is not None
        if self.mode == "always":
            return True
        return self.mode == "nat" and (caller_nat or callee_nat)

    def session_of(self, msg: Message) -> Session | None:
        """The session ``msg`` belongs to: its Call-ID, and the opening From tag at
        either end of its dialog (a re-INVITE may come from the callee)."""
        try:
            session = self.sessions.get(msg.call_id)
        except ParseError:
            return None
        if session is None or session.from_tag not in (_tag(msg, "from"), _tag(msg, "to")):
            return None
        return session

    # ----------------------------------------------------------- requests

    def offer(self, req: Request, source: Peer, nat: bool, now: float,
              then: Callable[[bool, float], R]) -> Ask[R]:
        """Ask rtpengine for the offer in ``req`` (an INVITE the policy relays).

        Its continuation puts rtpengine's SDP in ``req`` and opens the
        session, or leaves ``req`` alone when rtpengine fails; then it
        calls ``then(relayed, now)``.
        """
        call_id = req.call_id
        from_tag = _tag(req, "from") or ""
        to_tag = _tag(req, "to")
        message = self._message("offer", req, source.host, nat)
        if to_tag is not None:
            message["to-tag"] = to_tag
        self.stats.offers += 1

        def offered(outcome: Outcome[Reply], later: float) -> R:
            sdp = self._sdp(outcome, "offer", call_id, later)
            if sdp is None:
                self.stats.offer_failures += 1
                return then(False, later)
            req.body = sdp
            if to_tag is None and call_id not in self.sessions:
                self._open(Session(call_id, from_tag, now))
            return then(True, later)

        return Ask(message, offered, name=f"offer {call_id}")

    def answer(self, resp: Response, source_host: str, nat: bool,
               then: Callable[[bool, float], R]) -> Ask[R]:
        """Ask rtpengine for the answer in ``resp`` (an 18x or 2xx to a relayed offer).

        Its continuation puts rtpengine's SDP in ``resp``, or leaves it alone
        when rtpengine fails, then calls ``then(relayed, now)``.
        """
        call_id = resp.call_id
        message = self._message("answer", resp, source_host, nat)
        message["to-tag"] = _tag(resp, "to") or ""
        self.stats.answers += 1

        def answered(outcome: Outcome[Reply], later: float) -> R:
            sdp = self._sdp(outcome, "answer", call_id, later)
            if sdp is None:
                self.stats.answer_failures += 1
                return then(False, later)
            resp.body = sdp
            return then(True, later)

        return Ask(message, answered, name=f"answer {call_id}")

    def end(self, call_id: str) -> None:
        """The call is over: its session is deleted at rtpengine (queued, see
        :meth:`take_pending`). Nothing for a call that was not relayed."""
        session = self.sessions.pop(call_id, None)
        if session is not None:
            self._delete(session)

    def ping(self) -> Ask[list[Any]]:
        """An ng ``ping``, whose answer is logged: is rtpengine there at all?"""
        def pinged(outcome: Outcome[Reply], later: float) -> list[Any]:
            if outcome.error is None:
                log.info("media relay: rtpengine at %s answers; media_relay = %s",
                         self.where, self.mode)
            else:
                error = outcome.error
                why = error.reason if isinstance(error, NgError) else str(error)
                log.warning("media relay: rtpengine at %s does not answer (%s); calls go "
                            "unrelayed while it does not", self.where, why)
            return []

        return Ask({"command": "ping"}, pinged, name="ping")

    def take_pending(self) -> list[Ask[list[Any]]]:
        """The deletes queued since the last call, for the endpoint to send."""
        out, self._pending = self._pending, []
        return out

    # ----------------------------------------------------------- inside

    def _message(self, command: str, msg: Message, source_host: str, nat: bool) -> dict[str, Any]:
        message: dict[str, Any] = {
            "command": command,
            "call-id": msg.call_id,
            "from-tag": _tag(msg, "from") or "",
            "sdp": msg.body,
            **_FLAGS,
            "received-from": [_family(source_host), source_host],
        }
        if nat:
            message["flags"] = ["SIP-source-address"]
        return message

    def _sdp(self, outcome: Outcome[Reply], command: str, call_id: str,
             now: float) -> bytes | None:
        """rtpengine's SDP from a reply, or None (logged) when there is none."""
        if outcome.error is None:
            sdp = outcome.get().get("sdp")
            if isinstance(sdp, str) and sdp:
                return sdp.encode("utf-8", "surrogateescape")
            why = "a reply without SDP"
        else:
            error = outcome.error
            why = error.reason if isinstance(error, NgError) else str(error) or type(error).__name__
        self._failed(command, call_id, why, "the call goes on unrelayed", now)
        return None

    def _failed(self, command: str, call_id: str, why: str, consequence: str,
                now: float) -> None:
        held = self._failures.count(now)
        if held is None:
            return
        more = f" ({held - 1} more failure(s) since the last message)" if held > 1 else ""
        log.warning("media relay: rtpengine at %s failed the %s of call-id %s: %s; %s%s",
                    self.where, command, quote(call_id, 64), quote(why, 120), consequence, more)

    def _open(self, session: Session) -> None:
        self.sessions[session.call_id] = session
        while len(self.sessions) > MAX_SESSIONS:
            oldest = next(iter(self.sessions))
            self.stats.sessions_dropped += 1
            self._delete(self.sessions.pop(oldest))

    def _delete(self, session: Session) -> None:
        self.stats.deletes += 1
        call_id = session.call_id

        def deleted(outcome: Outcome[Reply], later: float) -> list[Any]:
            if outcome.error is not None:
                self.stats.delete_failures += 1
                error = outcome.error
                why = error.reason if isinstance(error, NgError) else str(error)
                self._failed("delete", call_id, why, "rtpengine ends it when its media stops",
                             later)
            return []

        self._pending.append(Ask({"command": "delete", "call-id": call_id,
                                  "from-tag": session.from_tag}, deleted,
                                 name=f"delete {call_id}"))

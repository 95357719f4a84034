"""Which digest algorithms a challenge offers, so that every phone in the field can answer.

See :class:`ChallengePolicy`: what a phone used before, what its
User-Agent is known to choose, else MD5 alone. Sans-IO.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from urllib.parse import unquote

from sipd.sip.errors import ParseError
from sipd.sip.message import Request
from sipd.sip.uri import SipURI, TelURI

__all__ = ["DEFAULT_SHA256_USER_AGENTS", "ChallengePolicy", "challenge_hint"]

#: User-Agent substrings of phones known to pick SHA-256 out of several
#: challenges (RFC 8760); sipd.conf's ``sha256_user_agents`` replaces them.
DEFAULT_SHA256_USER_AGENTS: tuple[str, ...] = ("Linphone",)


class ChallengePolicy:
    """Which digest algorithms a challenge offers, so that every phone can answer.

    One challenge per algorithm is what RFC 8760 suggests, but phones in
    the field read only the first challenge, or give up on the whole
    response when one names an algorithm they lack (libre, under baresip
    1.0). So a challenge offers one algorithm unless it is known better:

    - a phone (the user named in To or From, and its User-Agent) that
      authenticated before with MD5 is offered MD5 alone, one that used
      SHA-256 is offered SHA-256 and then MD5;
    - a User-Agent that contains one of ``sha256_agents`` (phones known
      to choose SHA-256 from several challenges) is offered SHA-256 first
      and MD5 after it;
    - anything else is offered MD5 alone, which every phone answers.

    Only algorithms in ``accepted`` are ever offered.
    """

    def __init__(self, accepted: Sequence[str] = ("MD5", "SHA-256"),
                 sha256_agents: Sequence[str] = DEFAULT_SHA256_USER_AGENTS,
                 max_entries: int = 20_000) -> None:
        self.accepted: tuple[str, ...] = ()
        self.sha256_agents: tuple[str, ...] = ()
        self.configure(accepted=accepted, sha256_agents=sha256_agents)
        self.max_entries = max_entries
        self._learned: OrderedDict[tuple[str, str], str] = OrderedDict()

    def configure(self, *, accepted: Sequence[str] | None = None,
                  sha256_agents: Sequence[str] | None = None) -> None:
        """New settings (a reload); what was learned of each phone stays."""
        if accepted is not None:
            self.accepted = tuple(accepted)
        if sha256_agents is not None:
            self.sha256_agents = tuple(a.lower() for a in sha256_agents if a)

    def offer(self, hint: str, agent: str) -> tuple[str, ...]:
        learned = self._learned.get((hint, agent))
        if learned == "MD5" and "MD5" in self.accepted:
            return ("MD5",)
        if learned == "SHA-256" and learned in self.accepted:
            # Another phone of that name and model may hold only an MD5 HA1
            # (linphone keeps what it first hashed): MD5 stays offered after it.
            return tuple(a for a in ("SHA-256", "MD5") if a in self.accepted)
        lowered = agent.lower()
        if "SHA-256" in self.accepted and any(a in lowered for a in self.sha256_agents):
            return tuple(a for a in ("SHA-256", "MD5") if a in self.accepted)
        return ("MD5",) if "MD5" in self.accepted else self.accepted[:1]

    def succeeded(self, hint: str, agent: str, algorithm: str) -> None:
        key = (hint, agent)
        self._learned.pop(key, None)
        self._learned[key] = algorithm
        while len(self._learned) > self.max_entries:
            self._learned.popitem(last=False)


def challenge_hint(req: Request) -> tuple[str, str]:
    """Who a request says it is before it has proved it: (To or From user, User-Agent)."""
    try:
        uri = req.to.uri if req.method == "REGISTER" else req.from_.uri
    except ParseError:
        uri = None
    if isinstance(uri, SipURI):
        hint = unquote(uri.user or "")
    elif isinstance(uri, TelURI):
        hint = uri.number
    else:
        hint = ""
    return hint[:128], (req.get("User-Agent") or "")[:128]

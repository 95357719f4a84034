"""The one check every binding passes, however it enters.

A binding reaches the location store by a REGISTER, by a write to
``/run/sr/<user>/contacts``, or by the reload of ``~/.sr/usrloc`` at start
(a file its user can edit). All three ask :meth:`BindingRules.refusal`, so a
rule cannot hold for one door and not for another:

- the AOR is the user's own name or a name the alias map gives them;
- the line can be written to ``~/.sr/usrloc`` and read back (shape,
  characters, length: :func:`srfs.files.usrloc.check_binding`);
- neither the contact, nor the address the REGISTER came from, nor the
  first Path hop points at this server (a request sent there would come
  back in and fork again), at a multicast or broadcast address, at the
  outbound gateway, or into another user's trusted trunk network.

The number of contacts per AOR (``max_contacts``) is the caller's rule, as
each door has its own answer to too many: the registrar replaces or
refuses, the tree refuses with EDQUOT, the reload keeps the newest.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from sipd.core.identity import LocalIdentity
from sipd.core.ownership import Ownership
from sipd.sip.errors import ParseError
from sipd.sip.headers import parse_address
from sipd.sip.uri import SipURI, parse_uri
from srfs.addresses import is_unicast, parse_host
from srfs.files.usrloc import check_binding
from srfs.state.location import Binding


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a binding is refused: the SIP answer, the errno for the tree, a reason."""

    status: int
    errno: int
    reason: str


class BindingRules:
    def __init__(self, identity: LocalIdentity, ownership: Ownership | None = None) -> None:
        self.identity = identity
        self.ownership = ownership

    def owns(self, user: str, aor: str) -> bool:
        return aor == user or (self.ownership is not None and self.ownership.owns(user, aor))

    def refusal(self, user: str, b: Binding) -> Refusal | None:
        """Why ``user`` may not hold ``b``, or None."""
        if not self.owns(user, b.aor):
            return Refusal(403, errno.EACCES, f"{user} does not own AOR {b.aor[:64]!r}")
        problem = check_binding(b)
        if problem is not None:
            return Refusal(400, errno.EINVAL, problem)
        try:
            hops = self._hops(b)
        except ParseError as exc:
            # What the proxy could not route must not be kept either.
            return Refusal(400, errno.EINVAL, f"not a usable SIP URI: {exc.reason}")
        for host, port, secure, what in hops:
            why = self.host_refusal(user, host, port, secure)
            if why is not None:
                return Refusal(403, errno.EACCES, f"{what} {why}")
        return None

    def host_refusal(self, user: str, host: str, port: int | None, secure: bool = False) -> str | None:
        """Why ``user``'s requests may not be sent to ``host:port``, or None."""
        if self.identity.is_own_address(host, port, secure=secure):
            return "points at this server"
        addr = parse_host(host)
        if addr is not None and not is_unicast(addr):
            return "is not a unicast address"
        ownership = self.ownership
        if ownership is not None:
            if ownership.is_gateway(host):
                return "points at the gateway"
            trunk_user = ownership.trunk_user_at(host)
            if trunk_user is not None and trunk_user != user:
                return "points at a trunk address"
        return None

    @staticmethod
    def _hops(b: Binding) -> list[tuple[str, int | None, bool, str]]:
        """The places a request for ``b`` may be sent: (host, port, secure, what).

        Raises ParseError for a contact or Path the SIP parser refuses.
        """
        hops: list[tuple[str, int | None, bool, str]] = []
        uri = parse_uri(b.contact)
        if not isinstance(uri, SipURI):
            raise ParseError("a contact must be a sip: or sips: URI")
        hops.append((uri.param("maddr") or uri.host, uri.port, uri.secure, "Contact"))
        if b.received:
            _, _, rest = b.received.partition(":")
            host, _, port = rest.rpartition(":")
            hops.append((host, int(port) if port.isdigit() else None, False, "received address"))
        if b.path:
            first = parse_address(b.path[0], "Path").uri
            if isinstance(first, SipURI):
                hops.append((first.param("maddr") or first.host, first.port, first.secure,
                             "first Path hop"))
        return hops

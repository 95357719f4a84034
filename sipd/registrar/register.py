"""REGISTER processing, RFC 3261 §10.3 steps 6–8, over the location store.

Authentication and "who owns this AOR" are settled before this runs
(steps 1–5 are the caller's: :mod:`sipd.auth`). Everything here is sans-IO:
the request, the authenticated user, the source and ``now`` in; a plan of
the store's changes out (:meth:`Registrar.plan`), which the caller makes
durable and then applies. The whole request is checked before anything is
changed, so a REGISTER that fails changes nothing. Every new binding passes
:class:`~sipd.registrar.admission.BindingRules`, like one written through
``/run/sr`` or reloaded from ``~/.sr/usrloc``.
"""

from __future__ import annotations

import email.utils
import functools
from dataclasses import dataclass
from urllib.parse import unquote

from sipd.core.peer import Peer
from sipd.registrar.admission import BindingRules
from sipd.sip.errors import SipError
from sipd.sip.headers import Address, format_header_params, parse_address, quote
from sipd.sip.headers import unquote as unquote_value
from sipd.sip.message import Request
from sipd.sip.uri import SipURI, TelURI
from srfs.files.usrloc import printable
from srfs.state.location import Binding, LocationStore, Op, Remove, RemoveReason

#: Option tags the registrar implements (RFC 3327 Path, RFC 5626 outbound).
REGISTRAR_EXTENSIONS = ("path", "outbound")


def uses_outbound(req: Request) -> bool:
    """RFC 5626 §6: a REGISTER that asks for outbound (``Supported: outbound``)
    and registers a flow (a contact with ``+sip.instance`` and ``reg-id``)."""
    tags = {t.lower() for t in (*req.tokens("Supported"), *req.tokens("Require"))}
    if "outbound" not in tags or req.contact_star:
        return False
    return any(c.param("reg-id") is not None and c.param("+sip.instance") is not None
               for c in req.contacts)


def first_hop_lacks_outbound(req: Request) -> bool:
    """RFC 5626 §6: a flow registered through a proxy is only a flow when the
    first hop, the proxy next to the phone (the last Path), marks it ``;ob``."""
    path = req.values("Path")
    if not path:
        return False  # a single hop: the flow is the phone's own connection to us
    first = parse_address(path[-1], "Path").uri
    return not (isinstance(first, SipURI) and first.has_param("ob"))


@dataclass(frozen=True, slots=True)
class RegistrarPolicy:
    min_expires: int = 60
    max_expires: int = 3600
    default_expires: int = 3600
    max_contacts: int = 10
    overflow: str = "replace-oldest"


def aor_of(uri: SipURI | TelURI) -> str:
    """The AOR key of a To URI: its user part, unescaped (every local domain
    shares one namespace); a tel: URI's number."""
    if isinstance(uri, TelURI):
        return uri.number
    return unquote(uri.user or "")


class Registrar:
    """REGISTER rules over the store: plan first, apply once the plan is on disk."""

    def __init__(self, policy: RegistrarPolicy, store: LocationStore,
                 rules: BindingRules | None = None) -> None:
        self.policy = policy
        self.store = store
        self.rules = rules

    def plan(self, req: Request, aor: str, user: str, source: Peer, now: float) -> list[Op]:
        """What a REGISTER for ``aor`` owned by ``user`` would change; raise SipError to refuse.

        The store is only read: the whole request is checked before any of
        it is applied, so a REGISTER that fails changes nothing.
        """
        p = self.policy
        unsupported = [t for t in req.tokens("Require") if t.lower() not in REGISTRAR_EXTENSIONS]
        if unsupported:
            raise SipError(420, "Bad Extension", (("Unsupported", ", ".join(unsupported)),))
        if uses_outbound(req) and first_hop_lacks_outbound(req):
            raise SipError(439, "First Hop Lacks Outbound Support")
        callid = req.call_id
        cseq = req.cseq.seq
        header_expires = req.expires
        existing = {b.key: b for b in self.store.lookup(aor)}

        if req.contact_star:
            if header_expires != 0 or len(req.values("Contact")) != 1:
                raise SipError(400, "Contact * needs Expires: 0 and no other Contact")
            for b in existing.values():
                self._check_order(b, callid, cseq)
            return [Remove(aor, b.key, RemoveReason.UNREGISTERED)
                    for b in existing.values() if not b.static]

        contacts = req.contacts
        if len(contacts) > p.max_contacts:
            raise SipError(403, f"Too many contacts in one REGISTER (max_contacts {p.max_contacts})")
        path = tuple(req.values("Path"))
        ua = req.get("User-Agent") or req.get("Server")
        planned: list[tuple[Binding, int]] = []
        for addr in contacts:
            b, expires = self._plan(addr, header_expires, aor, user, callid, cseq, path, ua,
                                    source, now, existing)
            if expires > 0 and self.rules is not None:
                refused = self.rules.refusal(user, b)
                if refused is not None:
                    raise SipError(refused.status, refused.reason)
            planned.append((b, expires))
        keys = [b.key for b, _ in planned]
        if len(set(keys)) != len(keys):
            raise SipError(400, "The same contact twice in one REGISTER")
        for b, _ in planned:
            old = existing.get(b.key)
            if old is not None:
                self._check_order(old, callid, cseq)
        adding = {b.key for b, e in planned if e > 0} - set(existing)
        removing = {b.key for b, e in planned if e == 0 and not existing.get(b.key, b).static}
        # Static contacts count towards the limit too (every contact is a
        # branch of each call), but only dynamic ones make room.
        kept = [b for b in existing.values() if b.key not in removing]
        excess = len(kept) + len(adding) - p.max_contacts
        victims: list[Binding] = []
        if excess > 0:
            if p.overflow == "reject":
                raise SipError(403, f"Too many registered contacts (max_contacts {p.max_contacts})")
            keep = {b.key for b, _ in planned}
            candidates = sorted((b for b in kept if not b.static and b.key not in keep),
                                key=lambda b: b.registered)
            if len(candidates) < excess:
                raise SipError(403, f"Too many registered contacts (max_contacts {p.max_contacts})")
            victims = candidates[:excess]

        ops: list[Op] = [Remove(aor, v.key, RemoveReason.REPLACED) for v in victims]
        for b, expires in planned:
            if expires == 0:
                old = existing.get(b.key)
                if old is not None and not old.static:
                    ops.append(Remove(aor, b.key, RemoveReason.UNREGISTERED))
            else:
                ops.append(b)
        return ops

    # ---------------------------------------------------------------- steps

    @staticmethod
    def _check_order(old: Binding, callid: str, cseq: int) -> None:
        # §10.3 step 6: the same Call-ID must come with a higher CSeq, or the
        # request is an old one replayed or reordered, and fails.
        if old.callid == callid and cseq <= old.cseq:
            raise SipError(400, "Stale CSeq for this Call-ID")

    def _plan(
        self,
        addr: Address,
        header_expires: int | None,
        aor: str,
        user: str,
        callid: str,
        cseq: int,
        path: tuple[str, ...],
        ua: str | None,
        source: Peer,
        now: float,
        existing: dict[str, Binding],
    ) -> tuple[Binding, int]:
        p = self.policy
        if not isinstance(addr.uri, SipURI):
            raise SipError(400, "Contact must be a sip: or sips: URI")
        raw = addr.param("expires")
        if raw is not None:
            raw = unquote_value(raw)
            if not raw.isdigit():
                raise SipError(400, "Bad expires parameter in Contact")
            expires = int(raw)
        elif header_expires is not None:
            expires = header_expires
        else:
            expires = p.default_expires
        if 0 < expires < p.min_expires:
            raise SipError(423, "Interval Too Brief", (("Min-Expires", str(p.min_expires)),))
        expires = min(expires, p.max_expires)
        q = 1.0
        qtext = addr.param("q")
        if qtext is not None:
            try:
                q = float(qtext)
            except ValueError:
                raise SipError(400, "Bad q value in Contact") from None
            if not 0.0 <= q <= 1.0:
                raise SipError(400, "Bad q value in Contact")
        instance = addr.param("+sip.instance")
        if instance is not None:
            instance = unquote_value(instance)
        reg_id: int | None = None
        rtext = addr.param("reg-id")
        if rtext is not None:
            if not rtext.isdigit() or not 0 < int(rtext) < 2**31:
                raise SipError(400, "Bad reg-id in Contact")
            reg_id = int(rtext) if instance is not None else None
        contact = str(addr.uri)
        binding = Binding(
            aor=aor,
            user=user,
            contact=contact,
            expires=now + expires,
            q=q,
            callid=callid,
            cseq=cseq,
            instance=instance,
            reg_id=reg_id,
            path=path,
            received=str(source),
            # Informational: kept, but never with bytes that would corrupt a line or a log.
            ua=printable(ua[:200]) if ua else None,
            registered=_first_registered(existing, contact, instance, reg_id, now),
        )
        return binding, expires

    def listing(self, aor: str, req: Request, now: float) -> tuple[tuple[str, str], ...]:
        """The 200 OK's Contact fields: every current binding (§10.3 step 8)."""
        headers: list[tuple[str, str]] = []
        for b in self.store.lookup(aor):
            params: list[tuple[str, str | None]] = []
            remaining = b.remaining(now)
            if remaining is not None:
                params.append(("expires", str(remaining)))
            if b.q != 1.0:
                params.append(("q", f"{b.q:.3g}"))
            if b.instance is not None:
                params.append(("+sip.instance", quote(b.instance)))
            if b.reg_id is not None:
                params.append(("reg-id", str(b.reg_id)))
            headers.append(("Contact", f"<{b.contact}>{format_header_params(tuple(params))}"))
        if "path" in (t.lower() for t in req.tokens("Supported")):
            headers.extend(("Path", v) for v in req.values("Path"))
        if uses_outbound(req):
            # RFC 5626 §6: the phone learns its flow is one, and keeps it alive.
            headers.append(("Require", "outbound"))
        headers.append(("Date", http_date(int(now))))
        return tuple(headers)


def _first_registered(existing: dict[str, Binding], contact: str, instance: str | None,
                      reg_id: int | None, now: float) -> float:
    """When the binding a refresh renews was first registered, else ``now``.

    A refresh keeps that time (the store would copy it over otherwise, a
    second Binding and its key worked out again for every refresh). A
    phone nearly always sends its contact as it did before: the same text
    with the same instance and reg-id is the same key. Another spelling of
    the same binding is left to the store.
    """
    for old in existing.values():
        if old.contact == contact and old.instance == instance and old.reg_id == reg_id:
            return old.registered or now
    return now


# Every 200 OK of a REGISTER carries the date, to the second: made once a
# second rather than through email.utils each time.
@functools.lru_cache(maxsize=4)
def http_date(second: int) -> str:
    """``second`` (Unix time) as an RFC 1123 date in GMT, as the Date header has it."""
    return email.utils.formatdate(second, usegmt=True)

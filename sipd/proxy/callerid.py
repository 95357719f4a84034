"""Caller ID on calls from local users (RFC 3325 asserted identity, RFC 3323 privacy).

Pure rules, no I/O: which of a user's numbers a call goes out as, whether
the phone's From may stand, which identity headers the next hop sees, and
the caller's credentials, consumed here.

The identity sent onwards is, in order: the user's ``caller_id`` setting
if the user owns it; else the From user if the user owns it; else the
user's default identity (the caller's choice of their numbers, or their
own name). A From user the caller does not own is refused (403) or
rewritten to that identity, as ``from_policy`` says, unless the call comes
from the user's trusted trunk and the trunk may present that From
(``present=`` in sipd-trunks(5), the "no screening" case of RFC 3325
§7 networks): then From stays as the PBX sent it, the user's identity is
asserted in P-Asserted-Identity, and a ``Diversion`` header (RFC 5806)
names the user unless the PBX sent ``Diversion`` or ``History-Info``
(RFC 7044) of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import unquote

from sipd.sip.digest import NotDigest, parse_credentials
from sipd.sip.errors import ParseError, SipError
from sipd.sip.headers import Address, parse_address, quote
from sipd.sip.message import Request
from sipd.sip.uri import SipURI, TelURI
from srfs.files.userconfig import UserConfig

__all__ = [
    "FromPolicy",
    "OutboundIdentity",
    "add_diversion",
    "apply_display_name",
    "assert_identity",
    "drop_our_credentials",
    "is_anonymous",
    "outbound_identity",
    "preferred_identity",
    "privacy_requested",
    "set_from_user",
]

FromPolicy = Literal["reject", "rewrite"]


@dataclass(frozen=True, slots=True)
class OutboundIdentity:
    """What a call from ``user`` asserts: ``identity`` is a user part they own."""

    user: str
    identity: str
    #: True when the phone's From user is not the caller's and must be replaced.
    rewrite_from: bool
    #: True when From is a number the caller does not own that their trunk
    #: may present: it stays, and the identity goes in PAI and Diversion.
    presented: bool = False

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, user: str, identity: str, rewrite_from: bool, presented: bool = False) -> None:
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "identity", identity)
        object.__setattr__(self, "rewrite_from", rewrite_from)
        object.__setattr__(self, "presented", presented)


def outbound_identity(
    user: str,
    from_user: str,
    caller_id: str | None,
    owns: Callable[[str, str], bool],
    policy: FromPolicy = "reject",
    *,
    presents: Callable[[str], bool] | None = None,
    default: str | None = None,
) -> OutboundIdentity:
    """The identity a call from authenticated ``user`` goes out with.

    ``presents`` says whether the caller's trunk may present a From user
    it does not own (trunk calls only); ``default`` is the identity when
    neither ``caller_id`` nor From is the caller's (else the user's name).
    Raises ``SipError(403)`` when the From user is not the caller's, not
    presentable, and the policy is ``reject``.
    """
    from_owned = owns(user, from_user)
    presented = not from_owned and presents is not None and presents(from_user)
    if not from_owned and not presented and policy == "reject":
        raise SipError(403, "From is not an address of the caller")
    if caller_id and owns(user, caller_id):
        identity = caller_id
    elif from_owned:
        identity = from_user
    else:
        identity = default if default and owns(user, default) else user
    return OutboundIdentity(user, identity, rewrite_from=not from_owned and not presented,
                            presented=presented)


def add_diversion(ident: OutboundIdentity | None, fwd: Request, realm: str) -> None:
    """A presented call names the caller as the diverting party (RFC 5806).

    Only when the PBX told nothing of the kind itself: its own
    ``Diversion`` or ``History-Info`` (RFC 7044) travels on unchanged.
    """
    if ident is None or not ident.presented:
        return
    if "Diversion" in fwd or "History-Info" in fwd:
        return
    fwd.add("Diversion", f"<sip:{ident.identity}@{realm}>;reason=unknown;counter=1")


def preferred_identity(req: Request) -> str | None:
    """The user part of the first ``P-Preferred-Identity`` (RFC 3325 §9.2), if any."""
    for value in req.values("P-Preferred-Identity"):
        try:
            uri = parse_address(value, "P-Preferred-Identity").uri
        except ParseError:
            continue
        if isinstance(uri, SipURI) and uri.user:
            return unquote(uri.user)
        if isinstance(uri, TelURI):
            return uri.number
    return None


def privacy_requested(values: list[str]) -> bool:
    """Does a Privacy header (RFC 3323) ask to hide the identity?

    ``id`` hides the asserted identity (RFC 3325 §9.3); ``user`` and
    ``header`` hide the user's identity in headers too, so both count.
    ``none`` (or no header) asks nothing.
    """
    tokens = {t.strip().lower() for v in values for t in v.replace(",", ";").split(";")}
    return bool(tokens & {"id", "user", "header"})


def assert_identity(ident: OutboundIdentity | None, original: Request, fwd: Request, realm: str,
                    *, trusted_hop: bool) -> None:
    """Put our P-Asserted-Identity on ``fwd``, a call from a local user (RFC 3325).

    Withheld from an untrusted next hop (a local callee's phone) when the
    caller asked for privacy; a gateway, trusted, gets it with the Privacy
    header for the far end to honour.
    """
    if ident is None:
        return
    fwd.remove("P-Asserted-Identity")
    # RFC 3325 §9.2: the phone's preference has been decided on.
    fwd.remove("P-Preferred-Identity")
    if not trusted_hop and privacy_requested(original.values("Privacy")):
        return
    fwd.add("P-Asserted-Identity", f"<sip:{ident.identity}@{realm}>")


def is_anonymous(uri: object) -> bool:
    """The From of RFC 3323 §4.1.1.3 (``anonymous.invalid``)."""
    return isinstance(uri, SipURI) and uri.host.lower() == "anonymous.invalid"


def set_from_user(req: Request, user: str, host: str) -> None:
    """From's URI becomes ``sip:user@host``; display name and tag stay."""
    frm = req.from_
    uri = frm.uri
    if isinstance(uri, SipURI):
        new_uri = replace(uri, user=user, host=host, port=None, password=None, headers=None)
    else:
        new_uri = SipURI("sip", host, user)
    if str(new_uri) != str(uri):
        req.set("From", str(Address(new_uri, frm.display, frm.params)))


def apply_display_name(req: Request, config: UserConfig | None) -> None:
    """The caller's ``display_name`` on From when the phone sent none."""
    if config is None:
        return
    name = config.get("display_name")
    if not name:
        return
    frm = req.from_
    if frm.display:
        return
    req.set("From", str(Address(frm.uri, quote(name), frm.params)))


def drop_our_credentials(req: Request, realm: str) -> None:
    """§22.3: credentials for our realm are consumed here; others travel on."""
    values = req.get_all("Proxy-Authorization")
    if not values:
        return
    keep: list[str] = []
    for value in values:
        try:
            if parse_credentials(value, "Proxy-Authorization").realm == realm:
                continue
        except (NotDigest, ParseError):
            pass
        keep.append(value)
    req.remove("Proxy-Authorization")
    for value in keep:
        req.add("Proxy-Authorization", value)

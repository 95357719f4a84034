"""Caller ID on calls from local users (RFC 3325 asserted identity, RFC 3323 privacy).

Pure rules, no I/O: which of a user's numbers a call goes out as, whether
the phone's From may stand, and which identity headers the next hop sees.

The identity sent onwards is, in order: the user's ``caller_id`` setting
if the user owns it; else the From user if the user owns it; else the
user's own name. A From user the caller does not own is refused (403) or
rewritten to that identity, as ``from_policy`` says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sipd.sip.errors import SipError

__all__ = ["FromPolicy", "OutboundIdentity", "outbound_identity", "privacy_requested"]

FromPolicy = Literal["reject", "rewrite"]


@dataclass(frozen=True, slots=True)
class OutboundIdentity:
    """What a call from ``user`` asserts: ``identity`` is a user part they own."""

    user: str
    identity: str
    #: True when the phone's From user is not the caller's and must be replaced.
    rewrite_from: bool


def outbound_identity(
    user: str,
    from_user: str,
    caller_id: str | None,
    owns: Callable[[str, str], bool],
    policy: FromPolicy = "reject",
) -> OutboundIdentity:
    """The identity a call from authenticated ``user`` goes out with.

    Raises ``SipError(403)`` when the From user is not the caller's and the
    policy is ``reject``.
    """
    from_owned = owns(user, from_user)
    if not from_owned and policy == "reject":
        raise SipError(403, "From is not an address of the caller")
    if caller_id and owns(user, caller_id):
        identity = caller_id
    elif from_owned:
        identity = from_user
    else:
        identity = user
    return OutboundIdentity(user, identity, rewrite_from=not from_owned)


def privacy_requested(values: list[str]) -> bool:
    """Does a Privacy header (RFC 3323) ask to hide the identity?

    ``id`` hides the asserted identity (RFC 3325 §9.3); ``user`` and
    ``header`` hide the user's identity in headers too, so both count.
    ``none`` (or no header) asks nothing.
    """
    tokens = {t.strip().lower() for v in values for t in v.replace(",", ";").split(";")}
    return bool(tokens & {"id", "user", "header"})

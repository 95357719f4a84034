"""One log line for each registration put in force or ended.

Called where a change is known to be in force: by the persister once a
commit's plan is applied (a REGISTER, a write to ``/run/sr``) and by the
endpoint for what expired. Not a store subscriber: the reload at start
puts thousands of bindings back, and the log says that with one line.

At info: a new binding (``registered``), one removed by its phone
(``unregistered``), by expiry, by ``max_contacts`` or through
``/run/sr``. A refresh of a binding is the normal life of a phone,
every few minutes each: debug.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from srfs.logtext import quote
from srfs.state.location import Binding, Change, ChangeKind, RemoveReason

__all__ = ["describe", "log_changes"]

log = logging.getLogger("sipd.registrar")

_REMOVED: dict[RemoveReason, str] = {
    RemoveReason.UNREGISTERED: "unregistered",
    RemoveReason.EXPIRED: "registration expired",
    RemoveReason.REPLACED: "contact dropped for a newer one (max_contacts)",
    RemoveReason.ADMIN: "contact removed through the state filesystem",
    RemoveReason.UNREACHABLE: "contact dropped, unreachable (keepalive_drop_after)",
}


def _who(b: Binding) -> str:
    # The owner only when it is not the AOR itself (an alias, a DID).
    owner = "" if b.user == b.aor else f" of {quote(b.user)}"
    return f"aor {quote(b.aor)}{owner} contact {quote(b.contact)}"


def _lifetime(b: Binding, wall: float) -> str:
    left = b.remaining(wall)
    return "static" if left is None else f"for {left} s"


def describe(change: Change, wall: float) -> tuple[int, str]:
    """The level and text of ``change``'s line, at wall-clock ``wall``."""
    b = change.binding
    if change.kind is ChangeKind.ADDED:
        # Only a REGISTER (or a line that says so) knows where the phone is.
        source = f" from {b.received}" if b.received else ""
        verb = "registered" if b.received else "contact added"
        return logging.INFO, f"{verb}: {_who(b)}{source} {_lifetime(b, wall)}"
    if change.kind is ChangeKind.UPDATED:
        return logging.DEBUG, f"refreshed: {_who(b)} {_lifetime(b, wall)}"
    reason = change.reason or RemoveReason.ADMIN
    return logging.INFO, f"{_REMOVED[reason]}: {_who(b)}"


def log_changes(changes: Iterable[Change], wall: float) -> None:
    """Log each change that is in force now."""
    for change in changes:
        # A refresh is a debug line: not even described unless it is logged.
        if change.kind is ChangeKind.UPDATED and not log.isEnabledFor(logging.DEBUG):
            continue
        level, text = describe(change, wall)
        if log.isEnabledFor(level):
            log.log(level, "%s", text)

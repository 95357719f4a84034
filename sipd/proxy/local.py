"""Local users as targets: their settings (and the forwards they chain), their bindings.

:func:`settings_chain` is the blocking part, run as a worker job: it
follows the callee's ``forward`` settings through local users.
:func:`cached_settings_chain` is the same walk on the event loop, when
every answer it needs was found lately (:meth:`UserLookup.find_cached`).
:func:`binding_groups` turns an AOR's live bindings into targets, grouped
by q-value, highest first (§16.6: parallel within a group, one group
after another).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from sipd.core.identity import LocalIdentity
from sipd.proxy.context import MAX_FORWARD_CHAIN
from sipd.proxy.targets import LivePeer, Target, binding_target
from sipd.proxy.users import UserLookup
from sipd.registrar.register import aor_of
from sipd.sip.errors import ParseError, SipError
from sipd.sip.uri import SipURI, parse_uri
from srfs.files.userconfig import UserConfig
from srfs.logtext import quote as log_quote
from srfs.state.location import LocationStore, Reach

log = logging.getLogger("sipd.proxy")

#: (user, is a SIP user, their settings) along a chain of forwards.
Chain = list[tuple[str, bool, UserConfig]]


def settings_chain(lookup: UserLookup, identity: LocalIdentity, first: str,
                   caller: str | None) -> tuple[Chain, UserConfig | None]:
    return _walk(lookup.find, identity, first, caller)


class _NotCached(Exception):
    """An answer the walk needs is not known without a look-up."""


def cached_settings_chain(lookup: UserLookup, identity: LocalIdentity, first: str,
                          caller: str | None) -> tuple[Chain, UserConfig | None] | None:
    """:func:`settings_chain` without blocking, or None when it would need a look-up."""

    def find(name: str) -> tuple[bool, UserConfig]:
        found = lookup.find_cached(name)
        if found is None:
            raise _NotCached(name)
        return found

    try:
        return _walk(find, identity, first, caller)
    except _NotCached:
        return None


def _walk(find: Callable[[str], tuple[bool, UserConfig]], identity: LocalIdentity, first: str,
          caller: str | None) -> tuple[Chain, UserConfig | None]:
    """Blocking: ``first``'s settings and those of every local user it forwards to.

    The chain ends at a user without ``forward``, at a forward to another
    domain, or after :data:`MAX_FORWARD_CHAIN` hops (the caller refuses it
    as a loop). The caller's own settings come along (display name).
    """
    chain: Chain = []
    name = first
    while True:
        known, config = find(name)
        chain.append((name, known, config))
        fwd_to = config.get("forward") if known else None
        if fwd_to is None or len(chain) > MAX_FORWARD_CHAIN:
            break
        uri = parse_uri(fwd_to)
        if not (isinstance(uri, SipURI) and uri.user and identity.is_local_host(uri.host)):
            break
        name = aor_of(uri)
    caller_config = find(caller)[1] if caller else None
    return chain, caller_config


def binding_groups(store: LocationStore, aor: str, wall: float, owns: Callable[[str, str], bool],
                   live_peer: LivePeer,
                   dialled: str | None = None,
                   udp_socket: Callable[[str], int] | None = None) -> list[list[Target]]:
    """The targets of ``aor``'s live bindings, grouped by q, highest first.

    With ``dialled``, each Request-URI carries that number as its user
    part, so a PBX behind one trunk registration can route many DIDs.
    A binding whose user no longer owns its AOR (the alias map changed)
    gets no calls. A binding whose last keep-alive probe went unanswered
    is skipped while another one is left; when all are unreachable, all
    are tried: a probe can be lost, and trying costs a timeout where
    giving up would cost the call.
    """
    live = [b for b in store.lookup(aor)
            if (b.expires is None or b.expires > wall) and owns(b.user, b.aor)]
    answering = [b for b in live if store.reachability(b.aor, b.key).state is not Reach.NO]
    if answering and len(answering) < len(live):
        log.debug("%s: skipping %d unreachable contact(s)", log_quote(aor, 64),
                  len(live) - len(answering))
        live = answering
    groups: dict[float, list[Target]] = {}
    for b in sorted(live, key=lambda b: -b.q):
        try:
            target = binding_target(b, live_peer, udp_socket)
        except (SipError, ParseError) as exc:
            # A WebSocket phone whose connection closed (480) is only away.
            level = logging.INFO if isinstance(exc, SipError) and exc.status == 480 else \
                logging.WARNING
            log.log(level, "skipping binding %s of %s: %s", log_quote(b.contact, 80),
                    log_quote(aor, 64), exc)
            continue
        if dialled is not None:
            target = dialled_target(target, dialled)
        groups.setdefault(b.q, []).append(target)
    return [groups[q] for q in sorted(groups, reverse=True)]


def dialled_target(target: Target, number: str) -> Target:
    """``target`` with ``number`` as the user part of its Request-URI."""
    try:
        uri = parse_uri(target.uri)
    except ParseError:
        return target
    if not isinstance(uri, SipURI):
        return target
    return replace(target, uri=str(replace(uri, user=number)))

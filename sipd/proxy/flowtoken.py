"""Flow tokens: the two ways a dialog took through this proxy, kept in its Record-Route.

A phone behind a NAT puts its private address in its Contact, so a request
sent to that Contact inside the dialog never arrives. What does arrive is
a request sent where the phone's INVITE (or its 200 OK) came from: the
flow. When this proxy record-routes a dialog it writes both flows, the
caller's (where the request came from) and the callee's (where the branch
went), into the user part of its Record-Route URI, as RFC 5626 §5.3 does
for an edge proxy. A request inside the dialog carries that URI back in
its Route; one that comes from one flow is sent over the other (the same
local socket, the same TCP connection while it is open), whatever its
Request-URI says. Phones' Contacts stay as they wrote them.

A token is the two flows, packed, and an HMAC over them with a key made
at start: nobody can make this proxy send to an address of their choice
with a token of their own, and after a restart old tokens are ignored
(those dialogs are routed by their Request-URI again, as before tokens).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import socket
import struct

from sipd.core.peer import Peer
from srfs.addresses import parse_host

__all__ = ["FlowTokens"]

_MAC_SIZE = 8
_VERSION = 1
#: Good tokens whose flows are kept once read (the oldest read go first).
TOKENS_KEPT = 4096


def _pack_peer(peer: Peer) -> bytes | None:
    addr = parse_host(peer.host)
    transport = peer.transport.encode("ascii", "replace")
    if addr is None or not 0 < len(transport) < 16 or not 0 <= peer.conn < 2**32:
        return None
    packed = addr.packed
    return (bytes([len(transport)]) + transport + bytes([len(packed)]) + packed
            + struct.pack("!HI", peer.port, peer.conn))


def _unpack_peer(data: bytes, at: int) -> tuple[Peer, int]:
    n = data[at]
    transport = data[at + 1:at + 1 + n].decode("ascii")
    at += 1 + n
    size = data[at]
    if size not in (4, 16):
        raise ValueError("bad address size")
    raw = data[at + 1:at + 1 + size]
    at += 1 + size
    port, conn = struct.unpack_from("!HI", data, at)
    # inet_ntoa writes an IPv4 address as ipaddress does, several times faster.
    host = socket.inet_ntoa(raw) if size == 4 else str(ipaddress.IPv6Address(raw))
    return Peer(transport, host, port, conn), at + 6


class FlowTokens:
    """Makes and reads the flow tokens of one running proxy."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)
        # Tokens read lately, oldest first: a dialog's ACK, BYE and their
        # answers bring the same one back, each read twice (is it ours, and
        # which way). Only good tokens are kept, so made-up ones cannot
        # push them out faster than real dialogs do.
        self._read: dict[str, tuple[Peer, Peer]] = {}

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, payload, hashlib.sha256).digest()[:_MAC_SIZE]

    def encode(self, first: Peer, second: Peer) -> str | None:
        """A token naming both flows; None if a peer cannot be put in one."""
        a, b = _pack_peer(first), _pack_peer(second)
        if a is None or b is None:
            return None
        payload = bytes([_VERSION]) + a + b
        raw = payload + self._mac(payload)
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    def decode(self, token: str) -> tuple[Peer, Peer] | None:
        """The two flows of a token this proxy made; None for anything else."""
        known = self._read.get(token)
        if known is not None:
            return known
        flows = self._decode(token)
        if flows is not None:
            read = self._read
            if len(read) >= TOKENS_KEPT:
                del read[next(iter(read))]
            read[token] = flows
        return flows

    def _decode(self, token: str) -> tuple[Peer, Peer] | None:
        if not token or len(token) > 200 or not token.isascii():
            return None
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            return None
        payload, mac = raw[:-_MAC_SIZE], raw[-_MAC_SIZE:]
        if len(raw) <= _MAC_SIZE or not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            if payload[0] != _VERSION:
                return None
            first, at = _unpack_peer(payload, 1)
            second, at = _unpack_peer(payload, at)
        except (IndexError, ValueError, struct.error, UnicodeDecodeError):
            return None
        return (first, second) if at == len(payload) else None

    @staticmethod
    def other(flows: tuple[Peer, Peer], source: Peer) -> Peer | None:
        """The flow across from ``source``'s; None when it came over neither."""
        seen = (source.transport, parse_host(source.host), source.port)
        for this, that in (flows, flows[::-1]):
            if (this.transport, parse_host(this.host), this.port) == seen:
                return that
        return None

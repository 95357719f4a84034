"""Host strings as the network will read them: addresses compared as addresses.

A rule such as "no contact at a trunk's address" is only as good as its
comparison. The C resolver, which is what finally sends a datagram, reads
``127.3``, ``127.000.000.002``, ``0x7f.1`` and ``2130706433`` as IPv4
addresses (``inet_aton(3)`` forms), and an IPv4-mapped IPv6 address reaches
the IPv4 host; :mod:`ipaddress` refuses all of those as strings. So every
rule compares the value :func:`parse_host` gives, never the text.

Pure: no name resolution here (a name is None; the caller resolves it where
blocking is allowed and compares the result again).
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket

__all__ = ["IPAddress", "is_unicast", "parse_host", "source_key"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# What inet_aton(3) takes: one to four parts, each decimal, octal (leading
# 0) or hexadecimal (0x). Anything else that is not an IP literal is a name.
_INET_ATON_RE = re.compile(
    r"(?:0[xX][0-9A-Fa-f]*|[0-9]+)(?:\.(?:0[xX][0-9A-Fa-f]*|[0-9]+)){0,3}", re.ASCII
)


def parse_host(host: str) -> IPAddress | None:
    """The address ``host`` denotes, or None when it is a name (or nonsense).

    Brackets and an IPv6 zone are dropped; an IPv4-mapped IPv6 address is
    its IPv4 address; the legacy IPv4 forms are read as the resolver reads
    them. Remembered for the last :data:`PARSED_HOSTS` hosts: a call asks
    about the same few addresses a dozen times, 1.5-2.5 µs each, and the
    answer is an immutable value. A text longer than any host is read
    each time: a few long Via hosts cannot fill the memory.
    """
    if len(host) > HOST_TEXT_MAX:
        return _parse_host.__wrapped__(host)
    return _parse_host(host)


#: Longer than any address or DNS name (253), with brackets and a zone.
HOST_TEXT_MAX = 300


#: Hosts whose :func:`parse_host` answer is kept (least recently used go first).
PARSED_HOSTS = 4096


@functools.lru_cache(maxsize=PARSED_HOSTS)
def _parse_host(host: str) -> IPAddress | None:
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        if not _INET_ATON_RE.fullmatch(text):
            return None
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_unicast(addr: IPAddress) -> bool:
    """An address one host answers at: not multicast, broadcast or unspecified.

    A contact at any of those would make one request reach many hosts, or
    this one.
    """
    # On the number, as ipaddress's own properties would decide (224/4,
    # ff00::/8, the unspecified address) without their network objects:
    # every REGISTER asks about its contact's address.
    n = int(addr)
    if isinstance(addr, ipaddress.IPv4Address):
        return n >> 28 != 0xE and n != 0 and n != 0xFFFFFFFF
    return n >> 120 != 0xFF and n != 0


def source_key(host: str) -> str:
    """What limits per source count by: the IPv4 address, or the IPv6 /64.

    One IPv6 host commonly holds a whole /64, and phones behind one router
    share it as IPv4 phones share a NAT address.
    """
    if ":" not in host:
        return host
    try:
        return str(ipaddress.IPv6Network((host.split("%", 1)[0], 64), strict=False))
    except ValueError:
        return host

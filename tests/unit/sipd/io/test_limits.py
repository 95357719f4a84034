"""Descriptors and sources, sans-IO: the connection cap under an open-file limit."""

from __future__ import annotations

import pytest

from sipd.io.limits import FD_RESERVE, connection_cap, reserve
from sipd.io.transport import source_key


@pytest.mark.parametrize(("limit", "configured", "cap"), [
    (1024, 1024, 1024 - FD_RESERVE),
    (524288, 1024, 1024),
    (512, 1024, 256),
    (128, 1024, 64),
    (2048, 100, 100),
])
def test_the_connection_cap_leaves_a_reserve(limit: int, configured: int, cap: int) -> None:
    assert connection_cap(configured, limit) == cap
    assert reserve(limit) + connection_cap(limit, limit) == limit


@pytest.mark.parametrize(("host", "key"), [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:a:b:c:d", "2001:db8:1:2::/64"),
    ("2001:db8:1:2::5", "2001:db8:1:2::/64"),
    ("fe80::1%eth0", "fe80::/64"),
])
def test_sources_are_addresses_and_ipv6_slash_64s(host: str, key: str) -> None:
    assert source_key(host) == key

"""Host strings read as the resolver reads them, and remembered within a bound."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srfs import addresses
from srfs.addresses import PARSED_HOSTS, parse_host, source_key


@pytest.mark.parametrize(("host", "expected"), [
    ("127.0.0.1", "127.0.0.1"),
    ("127.3", "127.0.0.3"),
    ("127.000.000.002", "127.0.0.2"),
    ("0x7f.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("[2001:db8::1]", "2001:db8::1"),
    ("fe80::1%eth0", "fe80::1"),
    ("::ffff:192.0.2.7", "192.0.2.7"),
    (" 192.0.2.1 ", "192.0.2.1"),
])
def test_address_forms_are_read_as_the_resolver_reads_them(host: str, expected: str) -> None:
    assert parse_host(host) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("host", ["gw.example.com", "", "1.2.3.4.5", "0x", "[::1"])
def test_names_and_nonsense_are_no_address(host: str) -> None:
    assert parse_host(host) is None


def test_answers_are_remembered_for_a_bounded_number_of_hosts() -> None:
    addresses._parse_host.cache_clear()
    first = parse_host("192.0.2.1")
    assert parse_host("192.0.2.1") is first
    # A flood of distinct hosts (a peer making them up) cannot grow it.
    for n in range(PARSED_HOSTS + 500):
        parse_host(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
    info = addresses._parse_host.cache_info()
    assert info.currsize == PARSED_HOSTS
    assert parse_host("192.0.2.1") == first


def test_a_text_longer_than_any_host_is_not_remembered() -> None:
    addresses._parse_host.cache_clear()
    long = "h" * (addresses.HOST_TEXT_MAX + 1)
    assert parse_host(long) is None
    # Read all the same, only not kept.
    assert parse_host("[::1]" + " " * addresses.HOST_TEXT_MAX) == ipaddress.ip_address("::1")
    assert addresses._parse_host.cache_info().currsize == 0


def test_sources_count_by_ipv4_address_or_ipv6_64() -> None:
    assert source_key("192.0.2.1") == "192.0.2.1"
    assert source_key("2001:db8:1:2:3::4") == "2001:db8:1:2::/64"


@pytest.mark.parametrize(("host", "unicast"), [
    ("192.0.2.7", True), ("2001:db8::1", True), ("127.0.0.1", True), ("::ffff:192.0.2.7", True),
    ("255.255.255.255", False), ("0xffffffff", False), ("::ffff:255.255.255.255", False),
    ("224.0.0.1", False), ("ff02::1", False), ("0.0.0.0", False), ("0", False), ("::", False),
])
def test_unicast_is_one_host(host: str, unicast: bool) -> None:
    addr = parse_host(host)
    assert addr is not None
    assert addresses.is_unicast(addr) is unicast


@settings(max_examples=2000)
@given(st.one_of(
    st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
    st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
    # The edges of the ranges, which random numbers seldom hit.
    st.sampled_from([0xE0000000, 0xDFFFFFFF, 0xEFFFFFFF, 0xF0000000, 0xFFFFFFFE, 1])
    .map(ipaddress.IPv4Address),
    st.sampled_from([0xFF << 120, (0xFF << 120) - 1, 1, 2**128 - 1]).map(ipaddress.IPv6Address),
))
def test_unicast_is_what_ipaddress_says(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    # Decided on the number; ipaddress's properties are the reference.
    broadcast = isinstance(addr, ipaddress.IPv4Address) and addr == ipaddress.IPv4Address(
        "255.255.255.255")
    expected = not (addr.is_multicast or addr.is_unspecified or broadcast)
    assert addresses.is_unicast(addr) is expected

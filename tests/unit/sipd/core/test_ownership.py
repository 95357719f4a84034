"""Who may register what: aliases (Auth-ID apart from the AOR), trunk and gateway addresses."""

from __future__ import annotations

import pytest

from sipd.core.ownership import Ownership
from srfs.files.aliases import AliasMap
from srfs.files.trunks import parse_trunks
from tests.unit.sipd.registrar.test_registrar import Harness, contact_expiries


def harness(gateways: tuple[str, ...] = ()) -> Harness:
    h = Harness()
    own = Ownership(None, None, gateways=gateways)
    own.aliases = AliasMap.of({"1003": "alice", "01727221221": "alice", "2000": "bob"})
    own.trunks, problems = parse_trunks("bob: 198.51.100.7/32\n")
    assert not problems
    registration = h.endpoint.server.registration
    assert registration is not None
    registration.ownership = own
    h.rules.ownership = own
    return h


def test_one_auth_id_registers_each_owned_line_with_its_own_bindings() -> None:
    h = harness()
    line1 = h.register("alice", aor="1003", contacts=["<sip:alice@192.0.2.7:5062;line=1>"],
                       call_id="line-1")
    line2 = h.register("alice", aor="01727221221", contacts=["<sip:alice@192.0.2.7:5062;line=2>"],
                       call_id="line-2")
    assert line1.status == 200 and line2.status == 200
    assert contact_expiries(line1) == {"sip:alice@192.0.2.7:5062;line=1": 600}
    assert contact_expiries(line2) == {"sip:alice@192.0.2.7:5062;line=2": 600}
    assert [b.contact for b in h.store.lookup("1003")] == ["sip:alice@192.0.2.7:5062;line=1"]
    assert {b.aor for b in h.store.bindings_of_user("alice")} == {"1003", "01727221221"}
    # Her own name still works, and stays apart.
    assert h.register("alice").status == 200
    assert len(h.store.lookup("1003")) == 1


@pytest.mark.parametrize("aor", ["2000", "bob", "9999"])
def test_an_address_the_user_does_not_own_is_forbidden(aor: str) -> None:
    h = harness()
    resp = h.register("alice", aor=aor)
    assert (resp.status, resp.reason) == (403, "Not allowed to register this address")
    assert h.store.lookup(aor) == []


def test_a_contact_at_a_trunk_address_is_refused_except_for_the_trunks_user() -> None:
    h = harness()
    resp = h.register("alice", contacts=["<sip:alice@198.51.100.7:5060>"])
    assert (resp.status, resp.reason) == (403, "Contact points at a trunk address")
    assert h.store.lookup("alice") == []
    assert h.register("bob", aor="2000", contacts=["<sip:pbx@198.51.100.7:5060>"]).status == 200


def test_a_contact_at_the_gateway_is_refused() -> None:
    h = harness(gateways=("gw.example.net",))
    resp = h.register("alice", contacts=["<sip:alice@GW.example.net>"])
    assert (resp.status, resp.reason) == (403, "Contact points at the gateway")
    assert h.register("alice", contacts=["<sip:alice@192.0.2.7:5062>"]).status == 200

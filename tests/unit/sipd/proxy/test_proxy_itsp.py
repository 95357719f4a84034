"""The ITSP cases in the proxy, sans-IO: DIDs, trusted trunks, caller ID, privacy."""

from __future__ import annotations

import errno

import pytest

from sipd.core.numbers import NumberPlan
from sipd.core.ownership import Ownership
from sipd.core.peer import Peer
from sipd.proxy.context import ProxyPolicy
from srfs.accounts.nss import DirectoryUnavailable
from srfs.accounts.state import AccountState
from srfs.files.aliases import AliasMap
from srfs.files.trunks import parse_trunks
from srfs.state.location import Binding
from tests.unit.sipd.proxy.test_proxy import (
    BOB1,
    CALLER,
    REALM,
    Net,
    challenge,
    credentials,
    invite,
    requests,
    responses,
)

TRUNK = Peer("udp", "203.0.113.7", 5060, conn=0)
STRANGER = Peer("udp", "192.0.2.66", 5060, conn=1)
GATEWAY = "sip:192.0.2.99:5080"


def itsp_net(outbound: str = "", from_policy: str = "reject") -> Net:
    net = Net(outbound=outbound)
    own = Ownership(None, None, gateways=["192.0.2.99"])
    own.aliases = AliasMap.of({"1003": "alice", "01727221221": "alice",
                               "+441727238471": "dave", "7000": "nobody"})
    own.trunks, problems = parse_trunks("dave: 203.0.113.7/32\n")
    assert not problems
    net.proxy.ownership = own
    net.proxy.policy = ProxyPolicy(outbound_proxy=outbound,
                                   from_policy="rewrite" if from_policy == "rewrite" else "reject")
    return net


def authed(net: Net, uri: str, frm: str, extra: str = "", user: str = "alice") -> list[object]:
    resp = challenge(net, uri, frm)
    auth = "Proxy-Authorization: " + credentials(resp, uri, user=user) + "\r\n"
    return net.send(invite(uri, frm=frm, extra=auth + extra, cseq=2), CALLER)  # type: ignore[return-value]


# ------------------------------------------------------------------ DIDs


def test_a_did_with_its_own_registration_rings_that_line() -> None:
    net = itsp_net()
    net.bind("1003", BOB1)
    out = net.send(invite(f"sip:1003@{REALM}"), STRANGER)
    (req, peer), = requests(out, "INVITE")
    assert peer == BOB1 and req.uri_text == "sip:1003@192.0.2.20:5070"


def test_a_did_without_a_registration_reaches_the_owners_trunk_with_the_number() -> None:
    net = itsp_net()
    net.store.upsert(Binding("dave", "dave", "sip:pbx@203.0.113.7:5060", None,
                             received="udp:203.0.113.7:5060"))
    out = net.send(invite(f"sip:+441727238471@{REALM}"), STRANGER)
    (req, peer), = requests(out, "INVITE")
    assert (peer.host, peer.port) == ("203.0.113.7", 5060)
    assert req.uri_text == "sip:+441727238471@203.0.113.7:5060"
    assert str(req.to.uri) == f"sip:+441727238471@{REALM}"
    assert ("started", req.call_id, None, "dave", "sip:zed@example.com",
            f"sip:+441727238471@{REALM}") in net.hooks.seen


def test_dids_of_users_without_phones_or_owners() -> None:
    net = itsp_net()
    assert responses(net.send(invite(f"sip:01727221221@{REALM}"), STRANGER)) == [100, 480]
    # An alias whose owner is no SIP user is nobody's number; a stranger is
    # not told that it differs from a number whose phones are off.
    assert responses(net.send(invite(f"sip:7000@{REALM}"), STRANGER)) == [100, 480]


@pytest.mark.parametrize("uri", [
    "tel:01727221221", "tel:+491727221221", "tel:+49-1727-221221", "tel:0172.722.1221",
    "tel:1727221221;phone-context=+49", f"sip:+491727221221@{REALM};user=phone",
    f"sip:+49%201727%20221221@{REALM};user=phone", f"sip:0049(1727)221221@{REALM}",
    f"sip:1727221221%3Bphone-context=+49@{REALM};user=phone",
])
def test_a_did_in_any_spelling_reaches_the_trunk_as_the_map_writes_it(uri: str) -> None:
    net = itsp_net()
    net.proxy.ownership.plan = NumberPlan("49", "0", "00")  # type: ignore[union-attr]
    net.store.upsert(Binding("alice", "alice", "sip:pbx@203.0.113.9:5060", None,
                             received="udp:203.0.113.9:5060"))
    out = net.send(invite(uri), STRANGER)
    (req, peer), = requests(out, "INVITE")
    assert (peer.host, peer.port) == ("203.0.113.9", 5060)
    assert req.uri_text == "sip:01727221221@203.0.113.9:5060"


def test_without_a_number_plan_a_tel_uri_must_be_spelled_as_the_map() -> None:
    net = itsp_net()
    net.store.upsert(Binding("alice", "alice", "sip:pbx@203.0.113.9:5060", None,
                             received="udp:203.0.113.9:5060"))
    out = net.send(invite("tel:0-1727-221221"), STRANGER)
    (req, _), = requests(out, "INVITE")
    assert req.uri_text == "sip:01727221221@203.0.113.9:5060"
    # E.164 is another number without the country: not ours, and a
    # stranger may not relay.
    assert responses(net.send(invite("tel:+491727221221"), STRANGER)) == [403]


def test_an_outside_number_goes_to_the_gateway_normalised() -> None:
    net = itsp_net(outbound=GATEWAY)
    net.proxy.ownership.plan = NumberPlan("49", "0")  # type: ignore[union-attr]
    out = net.send(invite("tel:030-123456", frm="sip:+441727238471@pbx.example"), TRUNK)
    (req, peer), = requests(out, "INVITE")
    assert (peer.host, peer.port) == ("192.0.2.99", 5080)
    assert req.uri_text == "tel:+4930123456"
    out = net.send(invite("sip:030%20123456@carrier.example;user=phone",
                          frm="sip:+441727238471@pbx.example"), TRUNK)
    (req, _), = requests(out, "INVITE")
    assert req.uri_text == "sip:+4930123456@carrier.example;user=phone"


def test_a_trunk_may_call_as_its_did_in_another_spelling() -> None:
    net = itsp_net()
    net.proxy.ownership.plan = NumberPlan("44", "0")  # type: ignore[union-attr]
    net.bind("bob", BOB1)
    out = net.send(invite(f"sip:bob@{REALM}", frm=f"sip:01727238471@{REALM};user=phone"), TRUNK)
    (req, _), = requests(out, "INVITE")
    assert req.get_all("P-Asserted-Identity") == [f"<sip:+441727238471@{REALM}>"]


# ------------------------------------------------------------------ trunks


def test_a_trusted_trunk_calls_out_as_its_number_without_a_challenge() -> None:
    net = itsp_net()
    net.bind("bob", BOB1)
    out = net.send(invite(f"sip:bob@{REALM}", frm=f"sip:+441727238471@{REALM}"), TRUNK)
    assert responses(out) == [100]
    (req, _), = requests(out, "INVITE")
    assert req.get_all("P-Asserted-Identity") == [f"<sip:+441727238471@{REALM}>"]
    # The same From from anywhere else is challenged like any caller.
    assert responses(net.send(invite(f"sip:bob@{REALM}", frm=f"sip:+441727238471@{REALM}"),
                              STRANGER)) == [407]
    # And from the trunk, someone else's address is not the trunk speaking.
    assert responses(net.send(invite(f"sip:bob@{REALM}", frm=f"sip:alice@{REALM}"),
                              TRUNK)) == [407]


def test_a_trusted_trunk_reaches_the_gateway() -> None:
    net = itsp_net(outbound=GATEWAY)
    out = net.send(invite("sip:+15551234@example.org", frm="sip:+441727238471@pbx.example"),
                   TRUNK)
    (req, peer), = requests(out, "INVITE")
    assert (peer.host, peer.port) == ("192.0.2.99", 5080)


def test_a_trunk_whose_owner_is_suspended_is_not_trusted() -> None:
    net = itsp_net()
    net.bind("bob", BOB1)
    states = {"dave": AccountState(True)}
    asked: list[str] = []

    def state_of(name: str) -> AccountState | None:
        asked.append(name)
        return states.get(name)

    net.proxy.account_state = state_of
    pai = "P-Asserted-Identity: <sip:+441727238471@sip.test>\r\n"
    frm = f"sip:+441727238471@{REALM}"
    out = net.send(invite(f"sip:bob@{REALM}", frm=frm, extra=pai), TRUNK)
    assert responses(out) == [100] and len(requests(out, "INVITE")) == 1
    assert asked == ["dave"]  # every trunk call asks the owner's account state
    states["dave"] = AccountState(False, "password locked (usermod -L)")
    # The same call is challenged like any caller claiming a local From...
    assert responses(net.send(invite(f"sip:bob@{REALM}", frm=frm, extra=pai),
                              TRUNK)) == [100, 407]
    # ...and a call from outside through it is a stranger's: accepted for a
    # local user, with nothing of what the PBX asserted.
    out = net.send(invite(f"sip:bob@{REALM}", frm="sip:+4930123456@carrier.example",
                          extra=pai), TRUNK)
    (req, _), = requests(out, "INVITE")
    assert "P-Asserted-Identity" not in req
    # An owner who is no user at all trusts nothing either.
    del states["dave"]
    assert responses(net.send(invite(f"sip:bob@{REALM}", frm=frm), TRUNK)) == [100, 407]


def test_a_trunk_found_allowed_before_stays_trusted_while_the_directory_fails() -> None:
    net = itsp_net()
    net.bind("bob", BOB1)
    failing = False
    states = {"dave": AccountState(True)}

    def state_of(name: str) -> AccountState | None:
        if failing:
            raise DirectoryUnavailable(errno.ETIMEDOUT, "getpwnam_r")
        return states.get(name)

    net.proxy.account_state = state_of
    frm = f"sip:+441727238471@{REALM}"
    failing = True
    # Never found: the call cannot be decided, 503 with Retry-After.
    out = net.send(invite(f"sip:bob@{REALM}", frm=frm), TRUNK)
    assert responses(out) == [100, 503]
    failing = False
    assert responses(net.send(invite(f"sip:bob@{REALM}", frm=frm), TRUNK)) == [100]
    failing = True
    out = net.send(invite(f"sip:bob@{REALM}", frm=frm), TRUNK)
    assert responses(out) == [100] and len(requests(out, "INVITE")) == 1
    assert net.proxy.auth.health.down
    # The directory says otherwise: the last good answer goes.
    failing = False
    states["dave"] = AccountState(False, "account expired")
    assert responses(net.send(invite(f"sip:bob@{REALM}", frm=frm), TRUNK)) == [100, 407]
    failing = True
    assert responses(net.send(invite(f"sip:bob@{REALM}", frm=frm), TRUNK)) == [100, 503]


# ------------------------------------------------------------ caller ID


def test_untrusted_asserted_identity_is_removed() -> None:
    net = itsp_net()
    net.bind("bob", BOB1)
    pai = "P-Asserted-Identity: <sip:ceo@example.com>\r\n"
    out = net.send(invite(f"sip:bob@{REALM}", extra=pai), STRANGER)
    (req, _), = requests(out, "INVITE")
    assert "P-Asserted-Identity" not in req


def test_a_local_caller_is_asserted_to_a_local_callee_unless_private() -> None:
    net = itsp_net()
    net.bind("bob", BOB1)
    uri = f"sip:bob@{REALM}"
    out = authed(net, uri, f"sip:1003@{REALM}", "P-Preferred-Identity: <sip:1003@sip.test>\r\n")
    (req, _), = requests(out, "INVITE")  # type: ignore[arg-type]
    assert req.get_all("P-Asserted-Identity") == [f"<sip:1003@{REALM}>"]
    assert "P-Preferred-Identity" not in req
    assert str(req.from_.uri) == f"sip:1003@{REALM}"
    out = authed(net, uri, f"sip:alice@{REALM}", "Privacy: id\r\n")
    (req, _), = requests(out, "INVITE")  # type: ignore[arg-type]
    assert "P-Asserted-Identity" not in req
    assert req.get("Privacy") == "id"


def test_toward_the_gateway_from_and_pai_are_the_caller_id() -> None:
    net = itsp_net(outbound=GATEWAY)
    net.users.configs["alice"] = "caller_id = 01727221221\n"
    uri = "sip:+15551234@example.org"
    out = authed(net, uri, f"sip:alice@{REALM}")
    (req, peer), = requests(out, "INVITE")  # type: ignore[arg-type]
    assert (peer.host, peer.port) == ("192.0.2.99", 5080)
    assert str(req.from_.uri) == f"sip:01727221221@{REALM}"
    assert req.from_.tag == "caller1"
    assert req.get_all("P-Asserted-Identity") == [f"<sip:01727221221@{REALM}>"]
    # The gateway is trusted: it gets the identity with the privacy request.
    out = authed(net, uri, f"sip:alice@{REALM}", "Privacy: id\r\n")
    (req, _), = requests(out, "INVITE")  # type: ignore[arg-type]
    assert req.get_all("P-Asserted-Identity") == [f"<sip:01727221221@{REALM}>"]
    assert req.get("Privacy") == "id"


def test_a_caller_id_the_user_does_not_own_is_ignored() -> None:
    net = itsp_net(outbound=GATEWAY)
    net.users.configs["alice"] = "caller_id = +441727238471\n"
    out = authed(net, "sip:+15551234@example.org", f"sip:1003@{REALM}")
    (req, _), = requests(out, "INVITE")  # type: ignore[arg-type]
    assert req.get_all("P-Asserted-Identity") == [f"<sip:1003@{REALM}>"]


def test_from_policy_reject_or_rewrite() -> None:
    net = itsp_net()
    net.bind("bob", BOB1)
    uri = f"sip:bob@{REALM}"
    assert responses(authed(net, uri, f"sip:+441727238471@{REALM}")) == [100, 403]  # type: ignore[arg-type]
    net = itsp_net(from_policy="rewrite")
    net.bind("bob", BOB1)
    out = authed(net, uri, f"sip:+441727238471@{REALM}")
    (req, _), = requests(out, "INVITE")  # type: ignore[arg-type]
    assert str(req.from_.uri) == f"sip:alice@{REALM}"
    assert req.get_all("P-Asserted-Identity") == [f"<sip:alice@{REALM}>"]


def presenting_net(present: str = "present=any", outbound: str = GATEWAY) -> Net:
    net = itsp_net(outbound=outbound)
    own = net.proxy.ownership
    assert own is not None
    own.plan = NumberPlan("44", "0")
    own.trunks, problems = parse_trunks(f"dave: 203.0.113.7/32 {present}\n")
    assert not problems
    return net


def test_a_trunk_that_may_present_keeps_an_outside_from_and_asserts_its_customer() -> None:
    net = presenting_net()
    out = net.send(invite("sip:+15551234@example.org", frm="sip:+4930123456@carrier.example"),
                   TRUNK)
    (req, peer), = requests(out, "INVITE")
    assert (peer.host, peer.port) == ("192.0.2.99", 5080)
    assert str(req.from_.uri) == "sip:+4930123456@carrier.example"
    assert req.get_all("P-Asserted-Identity") == [f"<sip:+441727238471@{REALM}>"]
    assert req.get_all("Diversion") == [f"<sip:+441727238471@{REALM}>;reason=unknown;counter=1"]
    # To a local user, the same.
    net.bind("bob", BOB1)
    out = net.send(invite(f"sip:bob@{REALM}", frm="sip:+4930123456@carrier.example"), TRUNK)
    (req, peer), = requests(out, "INVITE")
    assert peer == BOB1 and str(req.from_.uri) == "sip:+4930123456@carrier.example"
    assert req.get_all("P-Asserted-Identity") == [f"<sip:+441727238471@{REALM}>"]


def test_what_the_pbx_said_of_the_diversion_travels_on() -> None:
    net = presenting_net()
    hi = "History-Info: <sip:+441727238471@pbx.example>;index=1\r\n"
    out = net.send(invite("sip:+15551234@example.org", frm="sip:+4930123456@carrier.example",
                          extra=hi), TRUNK)
    (req, _), = requests(out, "INVITE")
    assert "Diversion" not in req
    assert req.get_all("History-Info") == ["<sip:+441727238471@pbx.example>;index=1"]
    div = "Diversion: <sip:0800123@pbx.example>;reason=no-answer\r\n"
    out = net.send(invite("sip:+15551234@example.org", frm="sip:+4930123456@carrier.example",
                          extra=div), TRUNK)
    (req, _), = requests(out, "INVITE")
    assert req.get_all("Diversion") == ["<sip:0800123@pbx.example>;reason=no-answer"]


def test_the_pbx_may_choose_which_of_its_numbers_is_asserted() -> None:
    net = presenting_net()
    net.proxy.ownership.aliases = AliasMap.of(  # type: ignore[union-attr]
        {"+441727238471": "dave", "+441727238472": "dave", "1003": "alice"})
    ppi = f"P-Preferred-Identity: <sip:01727238472@{REALM}>\r\n"
    out = net.send(invite("sip:+15551234@example.org", frm="sip:+4930123456@carrier.example",
                          extra=ppi), TRUNK)
    (req, _), = requests(out, "INVITE")
    assert req.get_all("P-Asserted-Identity") == [f"<sip:+441727238472@{REALM}>"]
    assert "P-Preferred-Identity" not in req
    # One it does not own is not taken.
    ppi = f"P-Preferred-Identity: <sip:1003@{REALM}>\r\n"
    out = net.send(invite("sip:+15551234@example.org", frm="sip:+4930123456@carrier.example",
                          extra=ppi), TRUNK)
    (req, _), = requests(out, "INVITE")
    assert req.get_all("P-Asserted-Identity") == [f"<sip:+441727238471@{REALM}>"]


def test_presentation_patterns_and_what_is_never_presented() -> None:
    net = presenting_net("present=+4930*")
    frm = "sip:+4930123456@carrier.example"
    assert len(requests(net.send(invite("sip:+15551234@example.org", frm=frm), TRUNK),
                        "INVITE")) == 1
    # A national spelling matches the E.164 pattern through the number plan.
    net.proxy.ownership.plan = NumberPlan("49", "0")  # type: ignore[union-attr]
    assert len(requests(net.send(invite("sip:+15551234@example.org",
                                        frm="sip:030123456@carrier.example"), TRUNK),
                        "INVITE")) == 1
    # Outside the patterns: from_policy, as before.
    assert responses(net.send(invite("sip:+15551234@example.org",
                                     frm="sip:+4940123456@carrier.example"), TRUNK)) == [403]
    # At our own domain, a local user's name or someone's DID is never
    # presented: that is the trunk claiming to be them, challenged.
    net = presenting_net()
    net.bind("bob", BOB1)
    for frm in (f"sip:alice@{REALM}", f"sip:1003@{REALM}"):
        assert responses(net.send(invite(f"sip:bob@{REALM}", frm=frm), TRUNK)) == [407]
    # A number at our domain that is nobody's may be.
    out = net.send(invite(f"sip:bob@{REALM}", frm=f"sip:+4930123456@{REALM}"), TRUNK)
    (req, _), = requests(out, "INVITE")
    assert str(req.from_.uri) == f"sip:+4930123456@{REALM}"


def test_digest_callers_never_present() -> None:
    net = presenting_net()
    uri, frm = "sip:+15551234@example.org", f"sip:+4930123456@{REALM}"
    auth = credentials(challenge(net, uri, frm), uri, user="dave", password="secret-dave")
    out = net.send(invite(uri, frm=frm, extra=f"Proxy-Authorization: {auth}\r\n", cseq=2), CALLER)
    assert responses(out) == [100, 403]


def test_an_anonymous_from_is_the_callers_privacy_choice() -> None:
    net = itsp_net(outbound=GATEWAY)
    out = authed(net, "sip:+15551234@example.org",
                 "sip:anonymous@anonymous.invalid", "Privacy: id\r\n")
    (req, _), = requests(out, "INVITE")  # type: ignore[arg-type]
    assert str(req.from_.uri) == "sip:anonymous@anonymous.invalid"
    assert req.get_all("P-Asserted-Identity") == [f"<sip:alice@{REALM}>"]

"""Brute-force protection that never locks out an honest user, and the digest uri check.

Sans-IO with explicit time: the Harness of test_registrar drives the real
endpoint, server and authenticator.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from sipd.auth.authenticator import AUTH_FAILURE_DELAY
from sipd.auth.throttle import Throttle
from sipd.core.peer import Peer
from sipd.sip.digest import ha1, response
from sipd.sip.message import Response
from srfs.accounts.directory import Account
from tests.unit.sipd.registrar.test_registrar import REALM, Harness, challenge_params

NAT = Peer("udp", "203.0.113.5", 5060, conn=1)
ELSEWHERE = Peer("udp", "198.51.100.20", 5060, conn=1)


def attempt(h: Harness, user: str, password: str, source: Peer,
            uri: str = f"sip:{REALM}") -> Response:
    """A REGISTER from ``source`` answered with credentials; the final answer."""
    first = h.send(h._request(user, None, 600, None, "", None, None), source)
    if first.status != 401:
        return first
    p = challenge_params(first, "MD5")
    r = response(ha1(user, REALM, password, "MD5"), p["nonce"], "REGISTER", uri, "MD5",
                 qop="auth", nc="00000001", cnonce="c0ffee")
    auth = (f'Authorization: Digest username="{user}", realm="{REALM}", nonce="{p["nonce"]}", '
            f'uri="{uri}", response="{r}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"')
    return h.send(h._request(user, None, 600, None, auth, None, None), source)


def add_user(h: Harness, name: str, password: str) -> None:
    model = h.directory.accounts["bob"]
    user = replace(model.user, name=name)
    hashes = {alg: ha1(name, REALM, password, alg) for alg in ("MD5", "SHA-256")}
    h.directory.accounts[name] = Account(user, True, "", hashes)


def test_failures_from_one_address_never_refuse_the_user_elsewhere() -> None:
    h = Harness()
    for _ in range(20):
        h.now += 1
        attempt(h, "alice", "wrong", NAT)
    assert attempt(h, "alice", "secret-a", NAT).status == 403
    # The same user with the right password from an address with no failures.
    assert attempt(h, "alice", "secret-a", ELSEWHERE).status == 200


def test_a_stale_phone_behind_a_nat_does_not_lock_out_the_office() -> None:
    """50 phones behind one address; one keeps a stale password for an hour."""
    h = Harness()
    office = [f"user{i}" for i in range(50)]
    for name in office:
        add_user(h, name, "secret-b")
    # Every phone registered once, as phones do.
    for name in office:
        assert attempt(h, name, "secret-b", NAT).status == 200
    start = h.now
    while h.now < start + 3600:
        h.now += 20  # the stale phone retries every 20 s
        attempt(h, "alice", "wrong", NAT)
        if int(h.now - start) % 600 == 0:
            for name in office[:5]:
                assert attempt(h, name, "secret-b", NAT).status == 200, (name, h.now - start)
    # And a user who had not registered from there yet, with the right password.
    assert attempt(h, "user49", "secret-b", NAT).status == 200


def test_a_guesser_behind_a_phones_nat_does_not_lock_out_that_phones_user() -> None:
    """The guesser and bob's phone share an address; the NAT gives each its own port."""
    h = Harness()
    phone = Peer("udp", NAT.host, 40000, conn=1)
    guesser = Peer("udp", NAT.host, 51234, conn=1)
    assert attempt(h, "bob", "secret-b", phone).status == 200
    for _ in range(12):
        h.now += 1
        attempt(h, "bob", "000000", guesser)
    assert attempt(h, "bob", "secret-b", guesser).status == 403  # slowed, even when right
    assert attempt(h, "bob", "secret-b", phone).status == 200


def test_names_sprayed_from_one_address_are_slowed_but_known_phones_there_keep_working() -> None:
    h = Harness()
    assert attempt(h, "bob", "secret-b", NAT).status == 200  # bob's phone, behind the NAT
    refused = 0
    for i in range(200):
        h.now += 1
        answer = attempt(h, f"guess{i}", "123456", NAT)
        refused += answer.status == 403
    assert refused > 150
    assert attempt(h, "bob", "secret-b", NAT).status == 200


@pytest.mark.parametrize(("user", "password"), [("alice", "secret-a"), ("alice", "wrong"),
                                                ("nobody", "x"), ("carol", "secret-c")])
def test_a_throttled_source_gets_one_answer_for_every_name_and_password(
        user: str, password: str) -> None:
    h = Harness()
    for i in range(40):
        h.now += 1
        attempt(h, f"guess{i}", "123456", NAT)
    answer = attempt(h, user, password, NAT)
    assert (answer.status, answer.reason) == (403, "Too many failed attempts")
    assert not answer.get_all("WWW-Authenticate")


def test_stale_nonces_and_replays_are_never_failures() -> None:
    h = Harness()
    for _ in range(20):
        chal = h.send(h._request("alice", None, 600, None, "", None, None), NAT)
        assert h.register(challenge=chal, nc=1).status == 200
        h.now += 301  # the nonce expires: the next answer with it is stale
        stale = h.register(challenge=chal, nc=2)
        assert stale.status == 401 and "stale=true" in (stale.get("WWW-Authenticate") or "")
    assert h.auth.stats.failed == 0
    assert attempt(h, "alice", "secret-a", NAT).status == 200


def test_trusted_addresses_are_never_throttled() -> None:
    h = Harness()
    h.auth.throttle = Throttle(trusted=lambda host: host == NAT.host)
    for _ in range(50):
        h.now += 1
        assert attempt(h, "alice", "wrong", NAT).status == 401
    assert attempt(h, "alice", "secret-a", NAT).status == 200


def guesses_per_minute(minutes: int, t: Throttle) -> list[int]:
    """What a guesser trying once a second gets through, minute by minute."""
    counts = [0] * minutes
    for second in range(minutes * 60):
        if not t.blocked("alice", NAT.host, second):
            counts[second // 60] += 1
            t.failure("alice", NAT.host, second)
    return counts


def test_a_guesser_gets_fewer_tries_each_hour_and_an_honest_retry_after_a_minute() -> None:
    counts = guesses_per_minute(120, Throttle())
    assert counts[0] == 5  # then a minute's rest
    assert counts[1] <= 1  # the first retry after the minute is answered...
    assert sum(counts[9:11]) <= 1  # ...by minute ten, one every few minutes...
    assert sum(counts[60:120]) <= 1  # ...and in the second hour one an hour.
    print("guesses per minute at minutes 1, 10, 60:", counts[0], counts[9], counts[59])


def test_an_honest_phone_fixed_after_a_block_is_answered_after_a_minute() -> None:
    h = Harness()
    for _ in range(5):
        attempt(h, "alice", "wrong", NAT)
    assert attempt(h, "alice", "secret-a", NAT).status == 403
    h.now += 60 + AUTH_FAILURE_DELAY
    assert attempt(h, "alice", "secret-a", NAT).status == 200
    # A success clears the pair: the next mistake starts from scratch.
    for _ in range(4):
        assert attempt(h, "alice", "wrong", NAT).status == 401
    assert attempt(h, "alice", "secret-a", NAT).status == 200


# ------------------------------------------------------- digest uri


@pytest.mark.parametrize("uri", [f"sip:{REALM}", f"sip:{REALM}:5060", "sip:192.0.2.1",
                                 "sip:192.0.2.1:5060"])
def test_the_servers_own_address_with_or_without_its_port_is_the_request_uri(uri: str) -> None:
    h = Harness()
    req_uri = uri if "192.0.2.1" not in uri else uri
    h_request = h._request

    def request(*args: object, **kw: object) -> bytes:
        return h_request(*args, **kw).replace(f"REGISTER sip:{REALM} ".encode(),  # type: ignore[arg-type]
                                              f"REGISTER {req_uri} ".encode(), 1)

    h._request = request  # type: ignore[method-assign]
    alt = uri.replace(":5060", "") if ":5060" in uri else uri + ":5060"
    assert attempt(h, "alice", "secret-a", NAT, uri=alt).status == 200


@pytest.mark.parametrize("uri", ["sip:elsewhere.example", f"sip:bob@{REALM}", "sip:192.0.2.99",
                                 f"sip:{REALM}:5999", "sips:" + REALM, "not a uri",
                                 f"sip:alice@{REALM}"])
def test_credentials_for_another_request_uri_are_a_failure(uri: str) -> None:
    h = Harness()
    answer = attempt(h, "alice", "secret-a", NAT, uri=uri)
    assert answer.status == 401
    assert h.auth.stats.failed == 1  # counted, like a wrong password
    assert not h.store.lookup("alice")


def test_a_captured_invite_credential_does_not_reach_another_callee() -> None:
    """The toll-fraud case: a Proxy-Authorization for bob, replayed to call carol."""
    from tests.unit.sipd.proxy.test_proxy import (
        BOB1,
        CALLER,
        Net,
        challenge,
        credentials,
        invite,
        requests,
    )

    net = Net()
    net.bind("bob", BOB1)
    net.bind("carol", Peer("udp", "192.0.2.30", 5070, conn=0))
    resp = challenge(net, f"sip:bob@{REALM}", f"sip:alice@{REALM}")
    captured = "Proxy-Authorization: " + credentials(resp, f"sip:bob@{REALM}") + "\r\n"
    out = net.send(invite(f"sip:carol@{REALM}", frm=f"sip:alice@{REALM}", extra=captured,
                          cseq=2), CALLER)
    assert requests(out, "INVITE") == []
    out += net.tick(net.now + AUTH_FAILURE_DELAY)
    finals = [m.status for m, _ in out if isinstance(m, Response) and m.cseq.seq == 2]
    # The failure is held AUTH_FAILURE_DELAY: a 100 goes first meanwhile.
    assert finals == [100, 407]
    assert net.proxy.auth.stats.failed == 1

"""REGISTER end to end through the sans-IO endpoint: auth, RFC 3261 §10.3 rules.

The directory is an in-memory double here (the real one, on NSS, PAM and
~/.sr/passwd, is exercised against a running sipd in test_register_e2e).
"""

from __future__ import annotations

import email.utils
import re
import secrets
from dataclasses import dataclass, field

import pytest

from sipd.auth.authenticator import AUTH_FAILURE_DELAY, Authenticator
from sipd.auth.challenges import ChallengePolicy
from sipd.auth.throttle import Throttle
from sipd.core.identity import LocalIdentity
from sipd.core.peer import Outgoing, Peer
from sipd.core.work import Job, run_inline
from sipd.endpoint import Endpoint
from sipd.registrar.admission import BindingRules
from sipd.registrar.register import Registrar, RegistrarPolicy
from sipd.registrar.server import Registration, Server
from sipd.sip.digest import NonceManager, ha1, parse_credentials, response
from sipd.sip.message import Request, Response, parse
from srfs.accounts.directory import Account
from srfs.state.location import LocationStore
from srfs.user import User

REALM = "sip.test"
SRC = Peer("udp", "192.0.2.7", 5062, conn=1)


@dataclass
class Directory:
    """alice and bob (passwords "secret-a", "secret-b"); carol outside the group."""

    accounts: dict[str, Account] = field(default_factory=dict)
    lookups: int = 0

    def __post_init__(self) -> None:
        for i, (name, pw, allowed) in enumerate(
            [("alice", "secret-a", True), ("bob", "secret-b", True), ("carol", "secret-c", False)]
        ):
            user = User(name, 60001 + i, 60001 + i, f"/home/{name}")
            hashes = {alg: ha1(name, REALM, pw, alg) for alg in ("MD5", "SHA-256")}
            self.accounts[name] = Account(user, allowed, "" if allowed else "not in group", hashes)

    def account(self, name: str, rhost: str | None = None) -> Account | None:
        self.lookups += 1
        return self.accounts.get(name)


class Harness:
    def __init__(self, **policy: object) -> None:
        self.store = LocationStore()
        self.directory = Directory()
        identity = LocalIdentity(frozenset({REALM, "192.0.2.1"}), frozenset({5060}))
        self.auth = Authenticator(REALM, NonceManager(secrets.token_bytes(32), lifetime=300),
                                  throttle=Throttle(), identity=identity,
                                  lookup=self.directory.account)
        self.rules = BindingRules(identity)
        registration = Registration(
            registrar=Registrar(RegistrarPolicy(**policy), self.store,  # type: ignore[arg-type]
                                self.rules),
            auth=self.auth,
        )
        self.endpoint = Endpoint(Server(identity, registration), max_message_size=65535,
                                 store=self.store)
        self.endpoint.wall_offset = 1_800_000_000.0
        self.now = 0.0
        self.cseq = 0
        self.call_id = secrets.token_hex(6)

    @property
    def wall(self) -> float:
        return self.endpoint.wall(self.now)

    def send(self, data: bytes, source: Peer = SRC) -> Response:
        out = run_inline(self.endpoint.receive(data, source, self.now), self.now)
        responses = [parse(o.data) for o in out if isinstance(o, Outgoing)]
        if not responses:
            # A failed authentication is answered AUTH_FAILURE_DELAY later, not before.
            early = self.now + AUTH_FAILURE_DELAY - 0.001
            assert not run_inline(self.endpoint.handle_timer(early), early)
            self.now += AUTH_FAILURE_DELAY
            out = run_inline(self.endpoint.handle_timer(self.now), self.now)
            responses = [parse(o.data) for o in out if isinstance(o, Outgoing)]
        assert len(responses) == 1, responses
        resp = responses[0]
        assert isinstance(resp, Response)
        return resp

    def register(
        self,
        user: str = "alice",
        *,
        contacts: list[str] | None = None,
        expires: int | None = 600,
        aor: str | None = None,
        password: str | None = None,
        algorithm: str = "MD5",
        extra: str = "",
        call_id: str | None = None,
        cseq: int | None = None,
        challenge: Response | None = None,
        nc: int = 1,
    ) -> Response:
        """REGISTER, answer the 401 with credentials, return the final answer."""
        password = password if password is not None else f"secret-{user[0]}"
        first = self.send(self._request(user, contacts, expires, aor, extra, call_id, cseq))
        if first.status != 401:
            return first
        chal = challenge or first
        return self.send(self._request(user, contacts, expires, aor, extra, call_id, cseq,
                                       auth=(chal, password, algorithm, nc)))

    def _request(
        self,
        user: str,
        contacts: list[str] | None,
        expires: int | None,
        aor: str | None,
        extra: str,
        call_id: str | None,
        cseq: int | None,
        auth: tuple[Response, str, str, int] | None = None,
    ) -> bytes:
        self.cseq += 1
        aor = aor or user
        contacts = [f"<sip:{user}@192.0.2.7:5062>"] if contacts is None else contacts
        lines = [
            f"REGISTER sip:{REALM} SIP/2.0",
            f"Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK{secrets.token_hex(6)};rport",
            "Max-Forwards: 70",
            f"From: <sip:{aor}@{REALM}>;tag=f{secrets.token_hex(3)}",
            f"To: <sip:{aor}@{REALM}>",
            f"Call-ID: {call_id or self.call_id}",
            f"CSeq: {cseq if cseq is not None else self.cseq} REGISTER",
            *(f"Contact: {c}" for c in contacts),
        ]
        if expires is not None:
            lines.append(f"Expires: {expires}")
        if auth is not None:
            chal, password, algorithm, nc = auth
            lines.append("Authorization: " + credentials(chal, user, password, algorithm, nc))
        if extra:
            lines.append(extra.rstrip("\r\n"))
        return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()


def challenge_params(resp: Response, algorithm: str) -> dict[str, str]:
    for value in resp.get_all("WWW-Authenticate"):
        params = dict(re.findall(r'(\w+)="?([^",]*)"?', value))
        if params.get("algorithm") == algorithm:
            return params
    raise AssertionError(f"no {algorithm} challenge in {resp.get_all('WWW-Authenticate')}")


def credentials(chal: Response, user: str, password: str, algorithm: str, nc: int = 1) -> str:
    p = challenge_params(chal, algorithm)
    uri = f"sip:{REALM}"
    cnonce = "0a4f113b"
    ncs = f"{nc:08x}"
    resp = response(ha1(user, REALM, password, algorithm), p["nonce"], "REGISTER", uri,
                    algorithm, qop="auth", nc=ncs, cnonce=cnonce)
    return (f'Digest username="{user}", realm="{REALM}", nonce="{p["nonce"]}", uri="{uri}", '
            f'response="{resp}", algorithm={algorithm}, qop=auth, nc={ncs}, cnonce="{cnonce}"')


def contact_expiries(resp: Response) -> dict[str, int]:
    out = {}
    for c in resp.contacts:
        out[str(c.uri)] = int(c.param("expires") or -1)
    return out


# ---------------------------------------------------------------- auth


def offered(resp: Response) -> list[str]:
    return [re.search(r"algorithm=([\w-]+)", v).group(1)  # type: ignore[union-attr]
            for v in resp.get_all("WWW-Authenticate")]


LINPHONE = "User-Agent: Linphone-Desktop/5.1.2 (belle-sip/5.1.64)"


def test_an_unknown_phone_is_offered_md5_alone() -> None:
    """Every phone answers MD5; a second challenge breaks some (libre under baresip 1.0)."""
    h = Harness()
    first = h.send(h._request("alice", None, 600, None, "User-Agent: baresip v1.0.0", None, None))
    assert first.status == 401
    assert offered(first) == ["MD5"]
    assert all('qop="auth"' in v and f'realm="{REALM}"' in v for v in first.get_all("WWW-Authenticate"))
    assert h.directory.lookups == 0  # no lookup before credentials arrive


def test_the_challenge_keeps_no_transaction() -> None:
    """Kamailio's www_challenge: the 401 is stateless; the registration is not."""
    h = Harness()
    layer = h.endpoint.transactions
    data = h._request("alice", None, 600, None, "", None, None)
    first = h.send(data)
    assert first.status == 401 and first.to.tag
    assert layer.statistics().server_created == 0
    # A retransmission (the 401 was lost) gets a challenge of its own.
    again = h.send(data)
    assert again.status == 401 and again.get("WWW-Authenticate") is not None
    assert layer.statistics().server_created == 0
    # What the RFC refuses before authentication is refused in a transaction.
    foreign = data.replace(b"REGISTER sip:sip.test", b"REGISTER sip:elsewhere.example")
    assert h.send(foreign).status == 403
    assert layer.statistics().server_created == 1
    # So is the registration itself (its 401 was stateless again).
    assert h.register("alice").status == 200
    assert layer.statistics().server_created == 2
    assert h.endpoint.server.stats.registers == 5


def test_a_register_in_a_transaction_is_not_challenged_statelessly() -> None:
    """A retransmission belongs to its transaction, whatever it would get today."""
    h = Harness()
    data = h._request("alice", None, 600, None, "", None, None)
    req = parse(data)
    assert isinstance(req, Request)
    # As if the first copy had been answered in a transaction (before a
    # reload added its domain, say): the copy now arriving is absorbed by
    # that transaction, which has no answer yet, and gets no challenge.
    h.endpoint.transactions.receive_request(req, SRC, False, h.now)
    assert not [o for o in run_inline(h.endpoint.receive(data, SRC, h.now), h.now)
                if isinstance(o, Outgoing)]
    assert h.endpoint.transactions.statistics().server_created == 1


def test_a_phone_known_to_choose_sha256_is_offered_it_first() -> None:
    h = Harness()
    first = h.send(h._request("alice", None, 600, None, LINPHONE, None, None))
    assert offered(first) == ["SHA-256", "MD5"]


def test_a_phone_is_offered_what_it_used_last() -> None:
    h = Harness()
    assert h.register(algorithm="SHA-256", extra=LINPHONE).status == 200
    again = h.send(h._request("alice", None, 600, None, LINPHONE, None, None))
    assert offered(again) == ["SHA-256", "MD5"]
    # Another phone of the same user is a phone of its own.
    other = h.send(h._request("alice", None, 600, None, "User-Agent: Other/1", None, None))
    assert offered(other) == ["MD5"]
    # A Linphone that chose MD5 keeps MD5.
    h2 = Harness()
    assert h2.register(algorithm="MD5", extra=LINPHONE).status == 200
    assert offered(h2.send(h2._request("alice", None, 600, None, LINPHONE, None, None))) == ["MD5"]


def test_only_accepted_algorithms_are_offered_or_taken() -> None:
    h = Harness()
    h.auth.algorithms = ("SHA-256",)
    h.auth.policy = ChallengePolicy(("SHA-256",))
    first = h.send(h._request("alice", None, 600, None, "", None, None))
    assert offered(first) == ["SHA-256"]
    assert h.register(algorithm="SHA-256").status == 200
    # MD5 credentials (for a challenge of another server, say) are a failure.
    h.auth.policy = ChallengePolicy(("MD5", "SHA-256"))
    md5 = h.send(h._request("alice", None, 600, None, "", None, None))
    h.auth.policy = ChallengePolicy(("SHA-256",))
    refused = h.send(h._request("alice", None, 600, None, "", None, None,
                                auth=(md5, "secret-a", "MD5", 1)))
    assert refused.status == 401


@pytest.mark.parametrize(("algorithm", "agent"), [("MD5", ""), ("SHA-256", LINPHONE)])
def test_register_with_digest(algorithm: str, agent: str) -> None:
    h = Harness()
    ok = h.register(algorithm=algorithm, extra=agent)
    assert ok.status == 200
    assert contact_expiries(ok) == {"sip:alice@192.0.2.7:5062": 600}
    (b,) = h.store.lookup("alice")
    assert b.user == "alice" and b.received == "udp:192.0.2.7:5062"
    assert b.expires == pytest.approx(h.wall + 600)


def test_the_200_ok_carries_the_date_of_the_second_it_was_made() -> None:
    h = Harness()
    h.now = 0.999  # the wall clock's second, not rounded up
    first = h.register()
    assert first.get("Date") == email.utils.formatdate(h.wall // 1, usegmt=True)
    h.now += 1.5
    later = h.register(call_id="another")
    assert later.get("Date") == email.utils.formatdate(h.wall // 1, usegmt=True)
    assert later.get("Date") != first.get("Date")


@pytest.mark.parametrize(
    ("user", "password"),
    [("alice", "wrong"), ("nobody", "secret-n"), ("carol", "secret-c")],
    ids=["wrong-password", "unknown-user", "not-in-group"],
)
def test_refusals_look_alike(user: str, password: str) -> None:
    h = Harness()
    resp = h.register(user, password=password)
    assert resp.status == 401
    assert resp.reason == "Unauthorized"
    values = resp.get_all("WWW-Authenticate")
    assert len(values) == 1 and not any("stale" in v for v in values)
    assert h.store.lookup(user) == []


def test_a_crafted_user_name_cannot_forge_the_address_fail2ban_reads(
        caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    chal = h.send(h._request("alice", None, 600, None, "", None, None))
    nonce = re.search(r'nonce="([^"]+)"', chal.get("WWW-Authenticate") or "")
    assert nonce
    forged = 'jan\\" from 203.0.113.66 port 5060 (REGISTER): wrong password'
    creds = parse_credentials(
        f'Digest username="{forged}", realm="{REALM}", nonce="{nonce.group(1)}", '
        f'uri="sip:{REALM}", response="{"0" * 32}", algorithm=MD5', "Authorization")
    req = parse(h._request("alice", None, 600, None, "", None, None))
    assert isinstance(req, Request)
    with caplog.at_level("WARNING", logger="sipd.auth"):
        h.auth.check(creds, req, None, SRC, h.wall)
    (line,) = [r.getMessage() for r in caplog.records if "auth failed" in r.getMessage()]
    # One quoted field, the real source after it: a filter that takes the
    # address after '" from ' finds 192.0.2.7 only.
    assert line.startswith('auth failed: user "jan\\x22 from 203.0.113.66 port 5060')
    assert re.findall(r'" from (\S+) port', line) == [SRC.host]


def test_stale_nonce_with_right_password_gets_stale_true() -> None:
    h = Harness()
    old = h.send(h._request("alice", None, 600, None, "", None, None))
    h.now += 301  # past the nonce lifetime
    resp = h.send(h._request("alice", None, 600, None, "", None, None,
                             auth=(old, "secret-a", "MD5", 1)))
    assert resp.status == 401
    assert all("stale=true" in v for v in resp.get_all("WWW-Authenticate"))
    # ...but with a wrong password it is a plain failure.
    wrong = h.send(h._request("alice", None, 600, None, "", None, None,
                              auth=(old, "nope", "MD5", 1)))
    assert not any("stale" in v for v in wrong.get_all("WWW-Authenticate"))


def test_nonce_count_replay_is_stale() -> None:
    h = Harness()
    chal = h.send(h._request("alice", None, 600, None, "", None, None))
    assert h.register(challenge=chal, nc=1).status == 200
    again = h.register(challenge=chal, nc=1)
    assert again.status == 401 and "stale=true" in again.get("WWW-Authenticate")  # type: ignore[operator]
    assert h.register(challenge=chal, nc=2).status == 200


def test_aor_of_another_user_is_forbidden() -> None:
    h = Harness()
    resp = h.register("alice", aor="bob")
    assert resp.status == 403
    assert h.store.lookup("bob") == []


def test_foreign_domain_refused() -> None:
    h = Harness()
    data = h._request("alice", None, 600, None, "", None, None).replace(
        b"REGISTER sip:sip.test", b"REGISTER sip:elsewhere.example")
    assert h.send(data).status == 403


def test_throttled_after_repeated_failures_but_not_for_stale() -> None:
    h = Harness()
    for _ in range(5):
        assert h.register(password="wrong").status == 401
    resp = h.register()  # even the right password is refused while banned
    assert resp.status == 403 and "Too many" in resp.reason
    other = Peer("udp", "198.51.100.9", 5060, conn=1)
    # Another user from another address is unaffected.
    first = h.send(h._request("bob", None, 600, None, "", None, None), other)
    ok = h.send(h._request("bob", None, 600, None, "", None, None, auth=(first, "secret-b", "MD5", 1)),
                other)
    assert ok.status == 200


# ------------------------------------------------------ RFC 3261 §10.3


def test_expires_parameter_wins_over_header_and_default_applies() -> None:
    h = Harness()
    resp = h.register(contacts=["<sip:alice@192.0.2.7:5062>;expires=120",
                                "<sip:alice@192.0.2.8:5062>"], expires=900)
    assert contact_expiries(resp) == {"sip:alice@192.0.2.7:5062": 120,
                                      "sip:alice@192.0.2.8:5062": 900}
    h2 = Harness(default_expires=1800)
    resp = h2.register(expires=None)
    assert contact_expiries(resp) == {"sip:alice@192.0.2.7:5062": 1800}


def test_too_brief_gets_423_with_min_expires() -> None:
    h = Harness(min_expires=60)
    resp = h.register(expires=30)
    assert resp.status == 423 and resp.get("Min-Expires") == "60"
    assert h.store.lookup("alice") == []


def test_max_expires_caps() -> None:
    h = Harness(max_expires=3600)
    resp = h.register(expires=86400)
    assert contact_expiries(resp) == {"sip:alice@192.0.2.7:5062": 3600}


def test_q_values_order_the_listing() -> None:
    h = Harness()
    resp = h.register(contacts=["<sip:alice@192.0.2.7:1>;q=0.1", "<sip:alice@192.0.2.7:2>;q=0.9"])
    assert [str(c.uri) for c in resp.contacts] == ["sip:alice@192.0.2.7:2", "sip:alice@192.0.2.7:1"]
    assert [c.param("q") for c in resp.contacts] == ["0.9", "0.1"]
    assert h.register(contacts=["<sip:alice@192.0.2.7:3>;q=1.5"]).status == 400


def test_star_removes_everything_and_needs_expires_zero() -> None:
    h = Harness()
    h.register(contacts=["<sip:alice@192.0.2.7:1>", "<sip:alice@192.0.2.7:2>"])
    assert len(h.store.lookup("alice")) == 2
    assert h.register(contacts=["*"], expires=600).status == 400
    assert h.register(contacts=["*", "<sip:alice@192.0.2.7:1>"], expires=0).status == 400
    resp = h.register(contacts=["*"], expires=0)
    assert resp.status == 200 and resp.contacts == []
    assert h.store.lookup("alice") == []


def test_expires_zero_removes_one() -> None:
    h = Harness()
    h.register(contacts=["<sip:alice@192.0.2.7:1>", "<sip:alice@192.0.2.7:2>"])
    resp = h.register(contacts=["<sip:alice@192.0.2.7:1>"], expires=0)
    assert list(contact_expiries(resp)) == ["sip:alice@192.0.2.7:2"]


def test_stale_cseq_does_not_update() -> None:
    h = Harness()
    h.register(call_id="c1", cseq=10, expires=600)
    resp = h.register(call_id="c1", cseq=5, expires=0)
    assert resp.status == 400 and "CSeq" in resp.reason
    assert len(h.store.lookup("alice")) == 1
    # A new Call-ID (another phone, a reboot) may update at any CSeq.
    resp = h.register(call_id="c2", cseq=1, expires=300)
    assert contact_expiries(resp) == {"sip:alice@192.0.2.7:5062": 300}


@pytest.mark.parametrize("overflow", ["replace-oldest", "reject"])
def test_max_contacts(overflow: str) -> None:
    h = Harness(max_contacts=2, overflow=overflow)
    h.register(contacts=["<sip:alice@192.0.2.7:1>"])
    h.now += 1
    h.register(contacts=["<sip:alice@192.0.2.7:2>"])
    h.now += 1
    resp = h.register(contacts=["<sip:alice@192.0.2.7:3>"])
    if overflow == "reject":
        assert resp.status == 403
        assert sorted(b.contact for b in h.store.lookup("alice")) == [
            "sip:alice@192.0.2.7:1", "sip:alice@192.0.2.7:2"]
    else:
        assert resp.status == 200
        assert sorted(b.contact for b in h.store.lookup("alice")) == [
            "sip:alice@192.0.2.7:2", "sip:alice@192.0.2.7:3"]


def test_instance_and_reg_id_update_the_same_binding() -> None:
    h = Harness()
    inst = '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    h.register(contacts=[f"<sip:alice@192.0.2.7:5062;transport=tcp>;+sip.instance={inst};reg-id=1"])
    resp = h.register(contacts=[f"<sip:alice@203.0.113.4:7000>;+sip.instance={inst};reg-id=1"])
    (b,) = h.store.lookup("alice")
    assert b.contact == "sip:alice@203.0.113.4:7000"
    assert b.instance == "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"
    (c,) = resp.contacts
    assert c.param("+sip.instance") == inst and c.param("reg-id") == "1"
    h.register(contacts=[f"<sip:alice@203.0.113.4:7001>;+sip.instance={inst};reg-id=2"])
    assert len(h.store.lookup("alice")) == 2


OB_INSTANCE = '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
OB_CONTACT = f"<sip:alice@192.0.2.7:5062;ob>;+sip.instance={OB_INSTANCE};reg-id=1"


def test_outbound_registration_gets_require_outbound() -> None:
    """RFC 5626 §6: a flow asked for with Supported: outbound is confirmed in the 200."""
    h = Harness()
    resp = h.register(contacts=[OB_CONTACT], extra="Supported: path, outbound")
    assert resp.status == 200
    assert resp.tokens("Require") == ["outbound"]
    # The flow over UDP: the phone's address, and the socket of ours it came in on.
    assert h.endpoint.flows is not None
    assert h.endpoint.flows.udp_socket(f"udp:{SRC.host}:{SRC.port}") == SRC.conn
    (b,) = h.store.lookup("alice")
    assert (b.instance, b.reg_id) == ("<urn:uuid:00000000-0000-1000-8000-000A95A0E128>", 1)
    # Without the option tag, or without reg-id, it is an ordinary registration.
    assert "Require" not in h.register(contacts=[OB_CONTACT])
    plain = f"<sip:alice@192.0.2.7:5063>;+sip.instance={OB_INSTANCE}"
    assert "Require" not in h.register(contacts=[plain], extra="Supported: outbound")
    # A phone may require it too: sipd supports it.
    resp = h.register(contacts=[OB_CONTACT], extra="Require: outbound")
    assert resp.status == 200 and resp.tokens("Require") == ["outbound"]


def test_outbound_through_a_proxy_needs_ob_on_the_first_hop() -> None:
    h = Harness()
    through = "Supported: path, outbound\r\nPath: <sip:core.example;lr>\r\nPath: <sip:edge.example;lr>"
    resp = h.register(contacts=[OB_CONTACT], extra=through)
    assert (resp.status, resp.reason) == (439, "First Hop Lacks Outbound Support")
    assert h.store.lookup("alice") == []
    # The edge proxy (the last Path, next to the phone) marks it: a flow.
    resp = h.register(contacts=[OB_CONTACT], extra=through.replace("edge.example;lr", "edge.example;lr;ob"))
    assert resp.status == 200 and resp.tokens("Require") == ["outbound"]


def test_path_is_stored_and_echoed_when_supported() -> None:
    h = Harness()
    resp = h.register(extra="Path: <sip:edge.example;lr>\r\nSupported: path")
    (b,) = h.store.lookup("alice")
    assert b.path == ("<sip:edge.example;lr>",)
    assert resp.get("Path") == "<sip:edge.example;lr>"
    assert h.register(extra="Require: frobnicate").status == 420


def test_fetch_lists_without_changing() -> None:
    h = Harness()
    h.register(expires=600)
    h.now += 100
    resp = h.register(contacts=[])
    assert resp.status == 200
    assert contact_expiries(resp) == {"sip:alice@192.0.2.7:5062": 500}


def test_bindings_expire_on_the_timer() -> None:
    h = Harness()
    h.register(expires=60)
    deadline = h.endpoint.get_timer()
    assert deadline is not None and deadline <= h.now + 60
    h.endpoint.handle_timer(h.now + 59)
    assert len(h.store.lookup("alice")) == 1
    h.endpoint.handle_timer(h.now + 60.5)
    assert h.store.lookup("alice") == []


def test_bad_contact_refused_whole() -> None:
    h = Harness()
    resp = h.register(contacts=["<sip:alice@192.0.2.7:1>", "<mailto:alice@example.org>"])
    assert resp.status == 400
    assert h.store.lookup("alice") == []


def test_lookup_job_runs_before_the_answer() -> None:
    h = Harness()
    first = h.send(h._request("alice", None, 600, None, "", None, None))
    data = h._request("alice", None, 600, None, "", None, None, auth=(first, "secret-a", "MD5", 1))
    actions = h.endpoint.receive(data, SRC, h.now)
    # Nothing is sent until the directory lookup (a worker-thread job) is done.
    assert [type(a) for a in actions] == [Job]
    # A retransmission meanwhile is absorbed by the transaction, not re-run.
    assert h.endpoint.receive(data, SRC, h.now + 0.5) == []
    out = run_inline(actions, h.now + 0.6)
    assert [parse(o.data).status for o in out] == [200]  # type: ignore[union-attr]


# ------------------------------------------------ first registration time


def test_a_refresh_keeps_each_bindings_first_registration_time() -> None:
    h = Harness()
    assert h.register(contacts=["<sip:alice@192.0.2.7:5062>"]).status == 200
    first = h.wall
    h.now += 30
    assert h.register(contacts=["<sip:alice@192.0.2.7:5062>",
                                "<sip:alice@192.0.2.8:5062>"]).status == 200
    second = h.wall
    h.now += 30
    # The same text, another spelling of it (the host's case), and the
    # same contact URI with an instance, which is another binding.
    instance = '<sip:alice@192.0.2.8:5062>;+sip.instance="<urn:uuid:00000000-0000-0000-0000-000000000001>"'
    assert h.register(contacts=["<sip:alice@192.0.2.7:5062>", "<sip:alice@192.0.2.8:5062>",
                                instance]).status == 200
    h.now += 30
    assert h.register(contacts=["<sip:alice@192.0.2.7:5062>", "<sip:alice@192.0.2.8:5062>",
                                instance.replace("192.0.2.8", "192.0.2.9")]).status == 200
    h.now += 30
    assert h.register(contacts=["<sip:alice@192.0.2.7:5062>",
                                "<sip:alice@EXAMPLE-HOST.invalid:5062>"]).status == 200
    h.now += 30
    assert h.register(contacts=["<sip:alice@example-host.invalid:5062>"]).status == 200
    by_contact = {(b.contact, b.instance): b.registered for b in h.store.lookup("alice")}
    assert by_contact == {
        ("sip:alice@192.0.2.7:5062", None): first,
        ("sip:alice@192.0.2.8:5062", None): second,
        ("sip:alice@192.0.2.9:5062", "<urn:uuid:00000000-0000-0000-0000-000000000001>"):
            second + 30,
        ("sip:alice@example-host.invalid:5062", None): second + 90,
    }

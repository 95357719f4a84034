"""The proxy, sans-IO: bytes and time in, bytes and peers out, jobs run inline."""

from __future__ import annotations

import gc
import re
import secrets
from dataclasses import dataclass, field

import pytest

from sipd.auth.authenticator import AUTH_FAILURE_DELAY, Authenticator
from sipd.core.identity import LocalIdentity
from sipd.core.peer import Outgoing, Peer
from sipd.core.work import Job, run_inline
from sipd.endpoint import Endpoint
from sipd.proxy.context import TIMER_C, CallHooks, ProxyPolicy
from sipd.proxy.proxy import Proxy
from sipd.proxy.routing import branch_key as _branch_key
from sipd.proxy.targets import LocalAddresses
from sipd.registrar.server import Server
from sipd.sip.digest import NonceManager, ha1, response
from sipd.sip.message import Request, Response, make_response, parse
from sipd.sip.transaction import TransactionLayer
from srfs.accounts.directory import Account
from srfs.files.userconfig import EMPTY, UserConfig
from srfs.files.userconfig import parse as parse_config
from srfs.state.location import Binding, LocationStore, Reach, Reachability
from srfs.user import User
from tests.sipclient import without_flow_tokens

ME = ("192.0.2.1", 5060)
CALLER = Peer("udp", "198.51.100.7", 5062, conn=1)
BOB1 = Peer("udp", "192.0.2.20", 5070, conn=0)
BOB2 = Peer("udp", "192.0.2.21", 5071, conn=0)
CAROL = Peer("udp", "192.0.2.30", 5080, conn=0)
REALM = "sip.test"
PASSWORD = "secret-alice"


@dataclass
class Users:
    """Fake NSS and ~/.sr/config: who exists and their settings."""

    known: set[str] = field(default_factory=lambda: {"alice", "bob", "carol", "dave"})
    configs: dict[str, str] = field(default_factory=dict)
    calls: int = 0

    def find(self, name: str) -> tuple[bool, UserConfig]:
        self.calls += 1
        if name not in self.known:
            return False, EMPTY
        return True, parse_config(self.configs.get(name, ""))

    def find_cached(self, name: str) -> tuple[bool, UserConfig] | None:
        # Nothing is ever known without a look-up: every call takes the job path.
        return None

    def forget(self, name: str | None = None) -> None:
        pass


def account(name: str, rhost: str | None = None) -> Account | None:
    if name not in ("alice", "bob", "carol", "dave"):
        return None
    return Account(User(name, 1000, 1000, f"/home/{name}"), True, "",
                   {"MD5": ha1(name, REALM, f"secret-{name}", "MD5")})


@dataclass
class Hooks:
    seen: list[tuple[object, ...]] = field(default_factory=list)

    def call_started(self, call_id: str, caller_user: str | None, callee_user: str | None,
                     from_uri: str, to_uri: str, wall: float) -> None:
        self.seen.append(("started", call_id, caller_user, callee_user, from_uri, to_uri))

    def call_answered(self, call_id: str, wall: float) -> None:
        self.seen.append(("answered", call_id))

    def call_failed(self, call_id: str, status: int, wall: float) -> None:
        self.seen.append(("failed", call_id, status))

    def call_ended(self, call_id: str, wall: float) -> None:
        self.seen.append(("ended", call_id))

    def call_forwarded(self, call_id: str, callee_user: str | None, status: int,
                       wall: float) -> None:
        self.seen.append(("forwarded", call_id, callee_user, status))


class Net:
    """One proxy and the phones around it; time moves only when told."""

    def __init__(self, outbound: str = "", users: Users | None = None,
                 hooks: CallHooks | None = None,
                 listeners: dict[tuple[str, int], tuple[str, int]] | None = None) -> None:
        identity = LocalIdentity(frozenset({REALM, "192.0.2.1"}), frozenset({5060}))
        self.store = LocationStore()
        self.users = users or Users()
        self.hooks = Hooks()
        self.call_hooks: CallHooks = hooks or self.hooks
        auth = Authenticator(REALM, NonceManager(secrets.token_bytes(32)), algorithms=("MD5",),
                             identity=identity, lookup=account)
        addresses = LocalAddresses({("udp", 4): ME, ("tcp", 4): ME, **(listeners or {})})
        layer = TransactionLayer()
        self.proxy = Proxy(identity, addresses, layer, self.store, auth,
                           self.users, ProxyPolicy(outbound_proxy=outbound), self.call_hooks)
        self.ep = Endpoint(Server(identity, proxying=True), max_message_size=65535,
                           transactions=layer, store=self.store, proxy=self.proxy)
        self.now = 1000.0

    def bind(self, aor: str, peer: Peer, q: float = 1.0) -> None:
        self.store.upsert(Binding(aor, aor, f"sip:{aor}@{peer.host}:{peer.port}", 1e12, q=q,
                                  received=f"udp:{peer.host}:{peer.port}"))

    def send(self, data: bytes | Request | Response, peer: Peer) -> list[tuple[Request | Response, Peer]]:
        raw = data if isinstance(data, bytes) else data.to_bytes()
        return self._parse(run_inline(self.ep.receive(raw, peer, self.now), self.now))

    def tick(self, to: float) -> list[tuple[Request | Response, Peer]]:
        self.now = to
        return self._parse(run_inline(self.ep.handle_timer(to), to))

    @staticmethod
    def _parse(out: list[Outgoing]) -> list[tuple[Request | Response, Peer]]:
        return [(parse(o.data), o.peer) for o in out]


def invite(uri: str = f"sip:bob@{REALM}", frm: str = "sip:zed@example.com", method: str = "INVITE",
           extra: str = "", call_id: str | None = None, cseq: int = 1, to_tag: str = "",
           mf: int = 70, branch: str | None = None) -> bytes:
    branch = branch or "z9hG4bK" + secrets.token_hex(6)
    to = f"<{uri}>" if not to_tag else f"<{uri}>;tag={to_tag}"
    return (
        f"{method} {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 198.51.100.7:5062;branch={branch};rport\r\n"
        f"Max-Forwards: {mf}\r\n"
        f"From: <{frm}>;tag=caller1\r\n"
        f"To: {to}\r\n"
        f"Call-ID: {call_id or secrets.token_hex(6)}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        f"Contact: <sip:zed@198.51.100.7:5062>\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def answer(req: Request, status: int, tag: str = "uas1", extra: tuple[tuple[str, str], ...] = ()) -> Response:
    headers = list(extra)
    if 200 <= status < 300:
        headers.append(("Contact", "<sip:bob@192.0.2.20:5070>"))
    return make_response(req, status, None, headers, to_tag=tag)


def responses(out: list[tuple[Request | Response, Peer]]) -> list[int]:
    return [m.status for m, _ in out if isinstance(m, Response)]


def requests(out: list[tuple[Request | Response, Peer]], method: str | None = None) -> list[tuple[Request, Peer]]:
    return [(m, p) for m, p in out if isinstance(m, Request) and (method is None or m.method == method)]


def start_call(net: Net, data: bytes | None = None) -> list[tuple[Request, Peer]]:
    out = net.send(data or invite(), CALLER)
    assert responses(out) == [100]
    return requests(out, "INVITE")


# ------------------------------------------------------------------ forking


def test_invite_forks_to_every_binding_with_via_record_route_and_max_forwards() -> None:
    net = Net()
    net.bind("bob", BOB1)
    net.bind("bob", BOB2)
    sent = start_call(net)
    assert {p for _, p in sent} == {BOB1, BOB2}
    for req, peer in sent:
        assert req.uri_text == f"sip:bob@{peer.host}:{peer.port}"
        assert req.top_via.host == "192.0.2.1" and req.top_via.port == 5060
        assert req.top_via.branch and req.top_via.branch.startswith("z9hG4bK")
        (rr,) = req.values("Record-Route")
        assert re.fullmatch(r"<sip:[A-Za-z0-9_-]+@192\.0\.2\.1:5060;lr>", rr), rr
        assert req.max_forwards == 69
        assert len(req.vias) == 2
    assert sent[0][0].top_via.branch != sent[1][0].top_via.branch


def _mark(net: Net, peer: Peer, state: Reach) -> None:
    b = next(b for b in net.store.lookup("bob") if b.received == f"udp:{peer.host}:{peer.port}")
    net.store.set_reachability("bob", b.key, Reachability(state, None))


def test_calls_skip_contacts_known_unreachable_but_try_all_when_none_answers() -> None:
    net = Net()
    net.bind("bob", BOB1)
    net.bind("bob", BOB2, q=0.5)
    _mark(net, BOB1, Reach.NO)
    # Not tried at all, not even as a later q group: it did not answer.
    sent = start_call(net)
    assert [p for _, p in sent] == [BOB2]
    assert responses(net.send(answer(sent[0][0], 486, "t2"), BOB2)) == [486]
    # Unknown (never probed) is not unreachable.
    _mark(net, BOB2, Reach.UNKNOWN)
    assert [p for _, p in start_call(net)] == [BOB2]
    # All unreachable: a probe can be lost, so all are tried rather than none.
    _mark(net, BOB2, Reach.NO)
    assert [p for _, p in start_call(net)] == [BOB1]
    _mark(net, BOB1, Reach.YES)
    assert [p for _, p in start_call(net)] == [BOB1]


def test_provisional_forwarded_and_2xx_cancels_the_other_branch() -> None:
    net = Net()
    net.bind("bob", BOB1)
    net.bind("bob", BOB2)
    sent = dict((p, r) for r, p in start_call(net))
    ring = net.send(answer(sent[BOB1], 180, "t1"), BOB1)
    assert responses(ring) == [180]
    (resp, peer), = ring
    assert peer.host == CALLER.host and peer.port == CALLER.port
    assert len(resp.vias) == 1  # ours removed
    net.send(answer(sent[BOB2], 180, "t2"), BOB2)
    ok = net.send(answer(sent[BOB2], 200, "t2"), BOB2)
    assert responses(ok) == [200]
    cancels = requests(ok, "CANCEL")
    assert [p for _, p in cancels] == [BOB1]
    assert cancels[0][0].top_via.branch == sent[BOB1].top_via.branch
    # The cancelled branch's 487 is absorbed, not forwarded after the 200.
    assert responses(net.send(answer(sent[BOB1], 487, "t1"), BOB1)) == []


def test_every_2xx_is_forwarded() -> None:
    net = Net()
    net.bind("bob", BOB1)
    net.bind("bob", BOB2)
    sent = dict((p, r) for r, p in start_call(net))
    assert responses(net.send(answer(sent[BOB1], 200, "t1"), BOB1)) == [200]
    assert responses(net.send(answer(sent[BOB2], 200, "t2"), BOB2)) == [200]


def test_lower_q_group_tried_after_the_first_fails() -> None:
    net = Net()
    net.bind("bob", BOB1, q=1.0)
    net.bind("bob", BOB2, q=0.5)
    sent = start_call(net)
    assert [p for _, p in sent] == [BOB1]
    out = net.send(answer(sent[0][0], 486, "t1"), BOB1)
    assert responses(out) == []
    assert [p for _, p in requests(out, "INVITE")] == [BOB2]


@pytest.mark.parametrize(
    ("finals", "best"),
    [((486, 503), 486), ((503, 408), 408), ((302, 486), 302), ((500, 503), 500), ((407, 404), 407)],
)
def test_best_response_is_the_lowest_class(finals: tuple[int, int], best: int) -> None:
    net = Net()
    net.bind("bob", BOB1)
    net.bind("bob", BOB2)
    sent = dict((p, r) for r, p in start_call(net))
    extra = (("Proxy-Authenticate", 'Digest realm="x", nonce="1"'),)
    first = net.send(answer(sent[BOB1], finals[0], "t1", extra if finals[0] == 407 else ()), BOB1)
    assert responses(first) == []
    out = net.send(answer(sent[BOB2], finals[1], "t2"), BOB2)
    assert responses(out) == [best]
    if best == 407:
        resp = next(m for m, _ in out if isinstance(m, Response))
        assert resp.get("Proxy-Authenticate") == 'Digest realm="x", nonce="1"'


def test_6xx_wins_at_once_and_cancels_the_rest() -> None:
    net = Net()
    net.bind("bob", BOB1)
    net.bind("bob", BOB2)
    sent = dict((p, r) for r, p in start_call(net))
    net.send(answer(sent[BOB1], 180, "t1"), BOB1)
    out = net.send(answer(sent[BOB2], 603, "t2"), BOB2)
    assert responses(out) == [603]
    assert [p for _, p in requests(out, "CANCEL")] == [BOB1]


def test_a_branch_that_times_out_counts_as_408() -> None:
    net = Net()
    net.bind("bob", BOB1)
    start_call(net)
    out = net.tick(net.now + 33)
    assert responses(out) == [408]


# ------------------------------------------------------------------ CANCEL, Timer C


def test_cancel_is_answered_fanned_out_and_the_invite_gets_487() -> None:
    net = Net()
    net.bind("bob", BOB1)
    net.bind("bob", BOB2)
    data = invite(branch="z9hG4bKcancelme", call_id="c1")
    sent = dict((p, r) for r, p in start_call(net, data))
    net.send(answer(sent[BOB1], 180, "t1"), BOB1)
    cancel = data.replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL")
    out = net.send(cancel, CALLER)
    assert responses(out) == [200]
    # Only the branch that rang can be cancelled now; the other when it rings.
    assert [p for _, p in requests(out, "CANCEL")] == [BOB1]
    late = net.send(answer(sent[BOB2], 180, "t2"), BOB2)
    assert responses(late) == []  # the call is going away
    assert [p for _, p in requests(late, "CANCEL")] == [BOB2]
    assert responses(net.send(answer(sent[BOB1], 487, "t1"), BOB1)) == []
    final = net.send(answer(sent[BOB2], 487, "t2"), BOB2)
    assert responses(final) == [487]


def test_cancel_for_an_unknown_invite_gets_481() -> None:
    net = Net()
    data = invite(method="CANCEL")
    assert responses(net.send(data, CALLER)) == [481]


def test_timer_c_cancels_a_branch_that_rings_too_long() -> None:
    net = Net()
    net.bind("bob", BOB1)
    (req, _), = start_call(net)
    t0 = net.now
    net.send(answer(req, 180, "t1"), BOB1)
    net.tick(t0 + 100)
    # A provisional resets Timer C.
    net.send(answer(req, 183, "t1"), BOB1)
    assert requests(net.tick(t0 + TIMER_C + 1), "CANCEL") == []
    out = net.tick(t0 + 100 + TIMER_C + 1)
    assert [p for _, p in requests(out, "CANCEL")] == [BOB1]
    assert responses(net.send(answer(req, 487, "t1"), BOB1)) == [487]


# ------------------------------------------------------------------ loops, hops


def test_max_forwards_zero_gets_483() -> None:
    net = Net()
    net.bind("bob", BOB1)
    assert responses(net.send(invite(mf=0), CALLER)) == [483]


def test_a_request_that_comes_back_unchanged_is_a_loop() -> None:
    net = Net()
    net.bind("bob", BOB1)
    (fwd, _), = start_call(net)
    # The same request, as if a binding pointed back at us.
    back = fwd.copy()
    back.uri_text = f"sip:bob@{REALM}"
    back._uri = None
    assert _branch_key(back) == fwd.top_via.branch.split("sr", 1)[1].split(".")[0]  # type: ignore[union-attr]
    out = net.send(back, Peer("udp", "192.0.2.1", 5060, conn=1))
    assert responses(out) == [482]


def test_a_spiral_to_another_user_is_not_a_loop() -> None:
    net = Net()
    net.bind("bob", BOB1)
    net.bind("alice", Peer("udp", "192.0.2.21", 5070, conn=0))
    (fwd, _), = start_call(net)
    # Back with a new Request-URI (a service at bob's contact sent it on to alice).
    fwd.uri_text = f"sip:alice@{REALM}"
    fwd._uri = None
    out = net.send(fwd, Peer("udp", "192.0.2.1", 5060, conn=1))
    assert 482 not in responses(out)
    assert any(req.uri_text.startswith("sip:alice@") for req, _ in requests(out))


def test_a_spiral_back_to_the_same_user_is_a_loop() -> None:
    """RFC 5393 §4.2: a request routed here to bob that comes back for bob would
    fork again on every pass; the first return is refused."""
    net = Net()
    net.bind("bob", BOB1)
    (fwd, _), = start_call(net)
    fwd.uri_text = f"sip:bob@{REALM};spiral=1"
    fwd._uri = None
    out = net.send(fwd, Peer("udp", "192.0.2.1", 5060, conn=1))
    assert responses(out) == [100, 482]


# ------------------------------------------------------------------ Route


def bye(uri: str, routes: list[str]) -> bytes:
    extra = "".join(f"Route: {r}\r\n" for r in routes)
    return invite(uri, method="BYE", extra=extra, to_tag="callee1", cseq=2)


def test_in_dialog_request_follows_its_route_set_without_auth() -> None:
    net = Net()
    data = bye("sip:bob@192.0.2.20:5070", ["<sip:192.0.2.1:5060;lr>", "<sip:203.0.113.5:5090;lr>"])
    data = data.replace(b"zed@example.com", b"alice@sip.test")  # a local user: still no 407
    out = net.send(data, CALLER)
    (req, peer), = requests(out, "BYE")
    assert (peer.host, peer.port) == ("203.0.113.5", 5090)
    assert req.values("Route") == ["<sip:203.0.113.5:5090;lr>"]
    assert req.uri_text == "sip:bob@192.0.2.20:5070"
    assert "Record-Route" not in req


def test_our_realms_credentials_on_a_bye_end_here() -> None:
    """Phones repeat their Proxy-Authorization on in-dialog requests (§22.3)."""
    net = Net()
    tail = f'nonce="n", uri="sip:bob@{REALM}", response="{"0" * 32}", algorithm=MD5'
    ours = f'Digest username="alice", realm="{REALM}", {tail}'
    theirs = f'Digest username="alice", realm="elsewhere.example", {tail}'
    data = bye("sip:bob@192.0.2.20:5070", ["<sip:192.0.2.1:5060;lr>", "<sip:203.0.113.5:5090;lr>"])
    data = data.replace(b"Content-Length:", (f"Proxy-Authorization: {ours}\r\n"
                                             f"Proxy-Authorization: {theirs}\r\n"
                                             "Content-Length:").encode())
    (req, _), = requests(net.send(data, CALLER), "BYE")
    assert req.get_all("Proxy-Authorization") == [theirs]


def test_route_to_our_address_on_another_port_is_not_ours() -> None:
    net = Net()
    out = net.send(bye("sip:bob@192.0.2.20:5070", ["<sip:192.0.2.1:5070;lr>"]), CALLER)
    assert responses(out) == [403]
    assert requests(out) == []


def test_strict_router_request_uri_is_replaced_by_the_last_route() -> None:
    net = Net()
    out = net.send(bye("sip:192.0.2.1:5060", ["<sip:bob@192.0.2.20:5070>"]), CALLER)
    (req, peer), = requests(out, "BYE")
    assert req.uri_text == "sip:bob@192.0.2.20:5070"
    assert "Route" not in req
    assert (peer.host, peer.port) == ("192.0.2.20", 5070)


def test_bye_through_the_proxy_and_ack_for_2xx_end_to_end() -> None:
    net = Net()
    net.bind("bob", BOB1)
    (req, _), = start_call(net, invite(call_id="call-ack"))
    ok = net.send(answer(req, 200, "t1"), BOB1)
    assert responses(ok) == [200]
    assert net.hooks.seen[-1] == ("answered", "call-ack")
    ack = bye("sip:bob@192.0.2.20:5070", ["<sip:192.0.2.1:5060;lr>"])
    ack = ack.replace(b"BYE", b"ACK").replace(b"2 ACK", b"1 ACK")
    out = net.send(ack, CALLER)
    (fwd, peer), = requests(out, "ACK")
    assert (peer.host, peer.port) == (BOB1.host, BOB1.port)
    assert fwd.top_via.host == "192.0.2.1"
    data = bye("sip:bob@192.0.2.20:5070", ["<sip:192.0.2.1:5060;lr>"]).replace(
        b"Call-ID: ", b"Call-ID: call-ack\r\nX-Old: ")
    out = net.send(data, CALLER)
    (fwd_bye, _), = requests(out, "BYE")
    assert net.hooks.seen[-1] == ("ended", "call-ack")
    assert responses(net.send(answer(fwd_bye, 200, "callee1"), BOB1)) == [200]


def test_preloaded_route_on_an_initial_request_is_refused() -> None:
    net = Net()
    net.bind("bob", BOB1)
    out = net.send(invite(extra="Route: <sip:203.0.113.5;lr>\r\n"), CALLER)
    assert responses(out) == [403]


# ------------------------------------------------------------------ users


def test_a_stranger_gets_the_same_answer_for_unknown_users_and_users_without_phones() -> None:
    net = Net()
    assert responses(net.send(invite(f"sip:nobody@{REALM}"), CALLER)) == [100, 480]
    assert responses(net.send(invite(f"sip:dave@{REALM}"), CALLER)) == [100, 480]
    assert not [s for s in net.hooks.seen if s[0] == "started"]


def test_a_local_caller_learns_404_for_unknown_users_and_480_for_users_without_phones() -> None:
    net = Net()
    for target, status in (("nobody", 404), ("dave", 480)):
        uri = f"sip:{target}@{REALM}"
        resp = challenge(net, uri, f"sip:alice@{REALM}")
        auth = "Proxy-Authorization: " + credentials(resp, uri) + "\r\n"
        out = net.send(invite(uri, frm=f"sip:alice@{REALM}", extra=auth, cseq=2), CALLER)
        assert responses(out) == [100, status]


def test_strangers_asking_for_users_who_are_not_there_are_rate_limited() -> None:
    """A scan of names from one address: after the burst, answered without a look-up."""
    net = Net()
    net.bind("bob", BOB1)
    burst = int(net.proxy.unknown_budget.burst)
    for i in range(burst):
        assert responses(net.send(invite(f"sip:name{i}@{REALM}"), CALLER)) == [100, 480]
    lookups = net.users.calls
    assert responses(net.send(invite(f"sip:another@{REALM}"), CALLER)) == [480]
    assert net.users.calls == lookups
    # Even bob, who is there, gets the same answer from that source now ...
    assert responses(net.send(invite(), CALLER)) == [480]
    # ... while another source still reaches him.
    (_, peer), = requests(net.send(invite(), Peer("udp", "203.0.113.9", 5060, conn=1)), "INVITE")
    assert peer == BOB1


def test_dnd_gets_486() -> None:
    net = Net()
    net.bind("bob", BOB1)
    net.users.configs["bob"] = "dnd = yes\n"
    assert responses(net.send(invite(), CALLER)) == [100, 486]


def test_settings_are_read_on_every_call() -> None:
    net = Net()
    net.bind("bob", BOB1)
    net.users.configs["bob"] = "dnd = yes\n"
    assert responses(net.send(invite(), CALLER)) == [100, 486]
    net.users.configs["bob"] = "dnd = no\n"
    assert [p for _, p in start_call(net)] == [BOB1]


def test_forward_sends_the_call_to_the_target_bindings() -> None:
    net = Net()
    net.bind("bob", BOB1)
    net.bind("carol", CAROL)
    net.users.configs["bob"] = f"forward = sip:carol@{REALM}\n"
    (req, peer), = start_call(net)
    assert peer == CAROL
    assert req.uri_text == "sip:carol@192.0.2.30:5080"


def test_forward_to_another_domain_needs_outbound_proxy() -> None:
    net = Net()
    net.users.configs["bob"] = "forward = sip:someone@example.org\n"
    assert responses(net.send(invite(), CALLER)) == [100, 403]
    net = Net(outbound="sip:192.0.2.99:5080")
    net.users.configs["bob"] = "forward = sip:someone@example.org\n"
    (req, peer), = start_call(net)
    assert (peer.host, peer.port) == ("192.0.2.99", 5080)
    assert req.uri_text == "sip:someone@example.org"
    assert req.values("Route") == ["<sip:192.0.2.99:5080;lr>"]


def test_forward_noanswer_after_ring_timeout() -> None:
    net = Net()
    net.bind("bob", BOB1)
    net.bind("carol", CAROL)
    net.users.configs["bob"] = f"forward_noanswer = sip:carol@{REALM}\nring_timeout = 5\n"
    (req, _), = start_call(net, invite(call_id="fna"))
    t0 = net.now
    assert responses(net.send(answer(req, 180, "t1"), BOB1)) == [180]
    assert net.tick(t0 + 4.9) == []
    out = net.tick(t0 + 5.0)
    assert [p for _, p in requests(out, "CANCEL")] == [BOB1]
    (to_carol, peer), = requests(out, "INVITE")
    assert peer == CAROL
    assert to_carol.max_forwards == 69
    # The cancelled branch's 487 is not the caller's answer.
    assert responses(net.send(answer(req, 487, "t1"), BOB1)) == []
    assert responses(net.send(answer(to_carol, 200, "t3"), CAROL)) == [200]
    assert ("answered", "fna") in net.hooks.seen


def test_forward_noanswer_default_ring_timeout_is_20_seconds() -> None:
    net = Net()
    net.bind("bob", BOB1)
    net.bind("carol", CAROL)
    net.users.configs["bob"] = f"forward_noanswer = sip:carol@{REALM}\n"
    start_call(net)
    t0 = net.now
    assert CAROL not in [p for _, p in requests(net.tick(t0 + 19.5), "INVITE")]
    assert CAROL in [p for _, p in requests(net.tick(t0 + 20), "INVITE")]


def test_answered_before_ring_timeout_is_not_forwarded() -> None:
    net = Net()
    net.bind("bob", BOB1)
    net.bind("carol", CAROL)
    net.users.configs["bob"] = f"forward_noanswer = sip:carol@{REALM}\nring_timeout = 5\n"
    (req, _), = start_call(net)
    t0 = net.now
    assert responses(net.send(answer(req, 200, "t1"), BOB1)) == [200]
    assert requests(net.tick(t0 + 6), "INVITE") == []


# ------------------------------------------------------------------ auth


def credentials(challenge: Response, uri: str, user: str = "alice", password: str = PASSWORD,
                method: str = "INVITE") -> str:
    m = re.search(r'nonce="([^"]+)"', challenge.get("Proxy-Authenticate") or "")
    assert m
    nonce = m.group(1)
    r = response(ha1(user, REALM, password, "MD5"), nonce, method, uri, "MD5",
                 qop="auth", nc="00000001", cnonce="c0ffee")
    return (f'Digest username="{user}", realm="{REALM}", nonce="{nonce}", uri="{uri}", '
            f'response="{r}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"')


def challenge(net: Net, uri: str, frm: str) -> Response:
    out = net.send(invite(uri, frm=frm), CALLER)
    assert responses(out) == [407]
    resp = out[-1][0]
    assert isinstance(resp, Response)
    return resp


def test_local_caller_is_challenged_then_forwarded_without_our_credentials() -> None:
    net = Net()
    net.bind("bob", BOB1)
    uri = f"sip:bob@{REALM}"
    resp = challenge(net, uri, f"sip:alice@{REALM}")
    auth = "Proxy-Authorization: " + credentials(resp, uri) + "\r\n"
    out = net.send(invite(uri, frm=f"sip:alice@{REALM}", extra=auth, cseq=2, call_id="auth1"), CALLER)
    (req, peer), = requests(out, "INVITE")
    assert peer == BOB1
    assert "Proxy-Authorization" not in req
    assert ("started", "auth1", "alice", "bob", f"sip:alice@{REALM}", uri) in net.hooks.seen


def test_100_trying_only_when_the_answer_is_left_to_later() -> None:
    """§16.2, §17.2.1: a 100 first for an INVITE sent on; none before an answer made at once."""
    net = Net()
    net.bind("bob", BOB1)
    uri = f"sip:bob@{REALM}"
    out = net.send(invite(uri, frm=f"sip:alice@{REALM}"), CALLER)
    (challenged, _), = out
    assert isinstance(challenged, Response) and challenged.status == 407
    auth = "Proxy-Authorization: " + credentials(challenged, uri) + "\r\n"
    out = net.send(invite(uri, frm=f"sip:alice@{REALM}", extra=auth, cseq=2), CALLER)
    # The 100 to the caller comes before the INVITE to the callee.
    assert [(m.status if isinstance(m, Response) else m.method, p) for m, p in out] == [
        (100, CALLER), ("INVITE", BOB1)]
    assert responses(net.send(invite(mf=0), CALLER)) == [483]


def test_the_challenge_keeps_no_state() -> None:
    """Kamailio's auth_challenge: a stateless 407, its ACK known by the To tag."""
    net = Net()
    net.bind("bob", BOB1)
    uri = f"sip:bob@{REALM}"
    layer = net.proxy.transactions
    first = invite(uri, frm=f"sip:alice@{REALM}", call_id="sl1", branch="z9hG4bKsl1")
    (challenged, peer), = net.send(first, CALLER)
    assert isinstance(challenged, Response) and challenged.status == 407
    assert peer == CALLER
    tag = challenged.to.tag
    assert tag
    stats = layer.statistics()
    assert (stats.server_transactions, stats.server_created) == (0, 0)
    assert net.proxy.statistics()["calls_pending"] == 0
    # Nothing to retransmit: no timer is armed for it.
    assert net.tick(net.now + 40) == []
    # A retransmission gets a challenge of its own, with the same To tag.
    (again, _), = net.send(first, CALLER)
    assert isinstance(again, Response) and again.status == 407 and again.to.tag == tag

    def ack(to_tag: str) -> bytes:
        # With a Route of ours and a Request-URI of a registered phone, an
        # ACK not absorbed would be forwarded to it.
        return (f"ACK sip:bob@{BOB1.host}:{BOB1.port} SIP/2.0\r\n"
                "Via: SIP/2.0/UDP 198.51.100.7:5062;branch=z9hG4bKsl1;rport\r\n"
                "Max-Forwards: 70\r\n"
                f"Route: <sip:{ME[0]};lr>\r\n"
                f"From: <sip:alice@{REALM}>;tag=caller1\r\n"
                f"To: <{uri}>;tag={to_tag}\r\n"
                "Call-ID: sl1\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n").encode()

    assert net.send(ack(tag), CALLER) == []
    assert layer.statistics().server_created == 0
    # The control: an ACK with another To tag is a 2xx's, passed on.
    assert [p for _, p in requests(net.send(ack("uas1"), CALLER), "ACK")] == [BOB1]


def test_a_request_in_a_transaction_is_not_challenged_statelessly() -> None:
    """A retransmission belongs to its transaction, whatever it would get today."""
    net = Net()
    data = invite(f"sip:bob@{REALM}", frm=f"sip:alice@{REALM}")
    req = parse(data)
    assert isinstance(req, Request)
    assert net.proxy.stateless_challenge(req, CALLER, net.now) is not None
    # As if a copy had been routed before a reload: the copy now arriving
    # is a retransmission, which its transaction absorbs (no answer yet).
    net.proxy.transactions.receive_request(req, CALLER, False, net.now)
    assert net.send(data, CALLER) == []
    # From another domain, or with credentials (even another realm's
    # alone), it is routed in a transaction.
    other = parse(invite(f"sip:bob@{REALM}", frm="sip:zed@example.com"))
    assert isinstance(other, Request)
    assert net.proxy.stateless_challenge(other, CALLER, net.now) is None
    foreign = ('Proxy-Authorization: Digest username="alice", realm="other.example", '
               f'nonce="n", uri="sip:bob@{REALM}", response="{"0" * 32}", algorithm=MD5\r\n')
    created = net.proxy.transactions.statistics().server_created
    assert responses(net.send(invite(f"sip:bob@{REALM}", frm=f"sip:alice@{REALM}",
                                     extra=foreign), CALLER)) == [407]
    assert net.proxy.transactions.statistics().server_created == created + 1


@pytest.mark.parametrize("user", ["alice", "nosuchuser"])
def test_wrong_password_is_challenged_again_after_the_same_delay(user: str) -> None:
    """A failure is answered AUTH_FAILURE_DELAY after the request, known user or not."""
    net = Net()
    net.bind("bob", BOB1)
    uri = f"sip:bob@{REALM}"
    resp = challenge(net, uri, f"sip:{user}@{REALM}")
    auth = "Proxy-Authorization: " + credentials(resp, uri, user=user, password="wrong") + "\r\n"
    out = net.send(invite(uri, frm=f"sip:{user}@{REALM}", extra=auth, cseq=2), CALLER)
    assert responses(out) == [100]

    def second(out: list[tuple[Request | Response, Peer]]) -> list[int]:
        # The first 407, never ACKed here, is retransmitted meanwhile.
        return [m.status for m, _ in out if isinstance(m, Response) and m.cseq.seq == 2]

    assert second(net.tick(net.now + AUTH_FAILURE_DELAY - 0.01)) == []
    assert second(net.tick(net.now + 0.01)) == [407]


def test_from_must_be_the_authenticated_user() -> None:
    net = Net()
    net.bind("bob", BOB1)
    uri = f"sip:bob@{REALM}"
    resp = challenge(net, uri, f"sip:carol@{REALM}")
    auth = "Proxy-Authorization: " + credentials(resp, uri) + "\r\n"
    out = net.send(invite(uri, frm=f"sip:carol@{REALM}", extra=auth, cseq=2), CALLER)
    assert responses(out) == [100, 403]


def test_display_name_of_the_caller_fills_from() -> None:
    net = Net()
    net.bind("bob", BOB1)
    net.users.configs["alice"] = "display_name = Alice Liddell\n"
    uri = f"sip:bob@{REALM}"
    resp = challenge(net, uri, f"sip:alice@{REALM}")
    auth = "Proxy-Authorization: " + credentials(resp, uri) + "\r\n"
    out = net.send(invite(uri, frm=f"sip:alice@{REALM}", extra=auth, cseq=2), CALLER)
    (req, _), = requests(out, "INVITE")
    assert req.from_.display_text == "Alice Liddell"
    assert req.from_.tag == "caller1"


def test_relaying_is_refused_without_outbound_proxy() -> None:
    net = Net()
    # A stranger to a stranger: refused without even a challenge.
    assert responses(net.send(invite("sip:x@example.org"), CALLER)) == [403]
    uri = "sip:x@example.org"
    resp = challenge(net, uri, f"sip:alice@{REALM}")
    auth = "Proxy-Authorization: " + credentials(resp, uri) + "\r\n"
    out = net.send(invite(uri, frm=f"sip:alice@{REALM}", extra=auth, cseq=2), CALLER)
    assert responses(out) == [100, 403]
    assert requests(out) == []


def test_outbound_proxy_takes_calls_to_other_domains() -> None:
    net = Net(outbound="sip:192.0.2.99:5080")
    uri = "sip:x@example.org"
    assert responses(net.send(invite(uri), CALLER)) == [403]  # still no open relay
    resp = challenge(net, uri, f"sip:alice@{REALM}")
    auth = "Proxy-Authorization: " + credentials(resp, uri) + "\r\n"
    out = net.send(invite(uri, frm=f"sip:alice@{REALM}", extra=auth, cseq=2), CALLER)
    (req, peer), = requests(out, "INVITE")
    assert (peer.host, peer.port) == ("192.0.2.99", 5080)
    assert req.uri_text == uri
    assert req.values("Route") == ["<sip:192.0.2.99:5080;lr>"]


def test_message_is_proxied_without_record_route() -> None:
    net = Net()
    net.bind("bob", BOB1)
    out = net.send(invite(method="MESSAGE"), CALLER)
    (req, peer), = requests(out, "MESSAGE")
    assert peer == BOB1 and "Record-Route" not in req
    assert responses(net.send(answer(req, 200, "m1"), BOB1)) == [200]


def test_an_error_in_the_proxy_is_a_500_not_a_crash() -> None:
    net = Net()
    net.bind("bob", BOB1)

    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    net.hooks.call_started = broken  # type: ignore[method-assign]
    assert responses(net.send(invite(), CALLER)) == [100, 500]
    # The next request is served as usual.
    net.hooks.call_started = Hooks.call_started.__get__(net.hooks)  # type: ignore[method-assign]
    assert [p for _, p in start_call(net)] == [BOB1]


def test_failed_call_is_reported_to_hooks() -> None:
    net = Net()
    net.bind("bob", BOB1)
    (req, _), = start_call(net, invite(call_id="busy1"))
    assert responses(net.send(answer(req, 486, "t1"), BOB1)) == [486]
    assert net.hooks.seen[-1] == ("failed", "busy1", 486)


def test_contexts_are_forgotten_when_done() -> None:
    net = Net()
    net.bind("bob", BOB1)
    (req, _), = start_call(net)
    net.send(answer(req, 486, "t1"), BOB1)
    net.tick(net.now + 64)
    assert net.proxy.statistics()["calls_pending"] == 0


def test_an_answered_call_waits_out_its_timers_with_few_objects_for_the_collector() -> None:
    # For 32 s after the 2xx (RFC 6026 Timers L and M) the proxy keeps each
    # call's context and transactions. Their messages drop their parsed
    # fields after the step, so every full collection walks a few dozen
    # objects per call, not the hundred-odd the parsed fields made.
    net = Net()
    net.bind("bob", BOB1)

    def answered(n: int) -> None:
        for i in range(n):
            (req, _), = start_call(net, invite(call_id=f"held{i}-{secrets.token_hex(4)}"))
            assert responses(net.send(answer(req, 180), BOB1)) == [180]
            assert responses(net.send(answer(req, 200), BOB1)) == [200]

    answered(5)  # caches and first-use allocations out of the count
    gc.collect()
    before = len(gc.get_objects())
    answered(100)
    gc.collect()
    per_call = (len(gc.get_objects()) - before) / 100
    assert net.proxy.statistics()["calls_pending"] == 105
    assert per_call <= 40, per_call
    ctx = next(iter(net.proxy.forker.contexts.values()))
    assert ctx.request._index is None and not gc.is_tracked(ctx.request._cache)


def test_endpoint_keeps_the_transaction_layer_it_is_given() -> None:
    # The proxy and the endpoint must share one layer, empty as it starts.
    layer = TransactionLayer()
    identity = LocalIdentity(frozenset({REALM}), frozenset({5060}))
    assert Endpoint(Server(identity), max_message_size=65535, transactions=layer).transactions is layer


def test_tcp_binding_uses_the_live_connection_else_the_contact() -> None:
    net = Net()
    conn = Peer("tcp", "192.0.2.40", 40123, conn=77)
    net.store.upsert(Binding("bob", "bob", "sip:bob@192.0.2.40:5090;transport=tcp", 1e12,
                             received="tcp:192.0.2.40:40123"))
    # No live connection: a new one to the contact.
    (_, peer), = start_call(net)
    assert peer == Peer("tcp", "192.0.2.40", 5090, 0)
    # The phone's connection is alive (it has sent something on it): reused.
    net.send(b"\r\n\r\n", conn)
    net.send(invite(method="OPTIONS", uri="sip:192.0.2.1"), conn)
    (req, peer), = start_call(net)
    assert peer == conn
    assert req.top_via.transport == "TCP"
    # Caller on UDP, callee on TCP: one Record-Route for each side.
    outer, inner = req.values("Record-Route")
    assert re.fullmatch(r"<sip:[A-Za-z0-9_-]+@192\.0\.2\.1:5060;transport=tcp;lr>", outer)
    assert re.fullmatch(r"<sip:[A-Za-z0-9_-]+@192\.0\.2\.1:5060;lr>", inner)
    net.ep.connection_closed(conn, net.now)
    (_, peer), = start_call(net)
    assert peer.conn == 0


def test_a_call_sent_on_a_connection_that_closes_unanswered_fails_at_once() -> None:
    net = Net()
    conn = Peer("tcp", "192.0.2.40", 40123, conn=77)
    net.store.upsert(Binding("bob", "bob", "sip:bob@192.0.2.40:5090;transport=tcp", 1e12,
                             received="tcp:192.0.2.40:40123"))
    net.send(invite(method="OPTIONS", uri="sip:192.0.2.1"), conn)
    # The phone closed its connection as the INVITE went out on it: it
    # never read it, so the caller hears now, not after Timer B (32 s).
    (_, peer), = start_call(net)
    assert peer == conn
    out = net._parse(run_inline(net.ep.connection_closed(conn, net.now), net.now))
    assert responses(out) == [503]
    # One that got a provisional answer waits on: the callee may answer
    # over a new connection (RFC 3261 §18.2.2).
    net.send(invite(method="OPTIONS", uri="sip:192.0.2.1"), conn)
    (req, _), = start_call(net)
    assert responses(net.send(answer(req, 180), conn)) == [180]
    assert net._parse(run_inline(net.ep.connection_closed(conn, net.now), net.now)) == []
    # Its transactions over, no branch is left on the index a closed
    # connection is looked up by.
    # Timer C, then the timers after its CANCEL, end the ringing one.
    for _ in range(8):
        net.tick(net.now + 64.0)
    assert net.proxy.forker.branches == {} and net.proxy.forker._by_dest == {}


def test_a_closed_connection_fails_only_the_branches_sent_on_it() -> None:
    net = Net()
    conns = [Peer("tcp", f"192.0.2.{40 + n}", 40123, conn=70 + n) for n in range(3)]
    for n, conn in enumerate(conns):
        net.store.upsert(Binding(f"u{n}", f"u{n}", f"sip:u{n}@192.0.2.{40 + n}:5090;transport=tcp",
                                 1e12, received=f"tcp:192.0.2.{40 + n}:40123"))
        net.send(invite(method="OPTIONS", uri="sip:192.0.2.1"), conn)
    for n, conn in enumerate(conns):
        (_, peer), = start_call(net, invite(uri=f"sip:u{n}@{REALM}"))
        assert peer == conn
    out = net._parse(run_inline(net.ep.connection_closed(conns[1], net.now), net.now))
    assert responses(out) == [503]
    assert sorted(net.proxy.forker._by_dest) == [
        ("tcp", "192.0.2.40", 40123), ("tcp", "192.0.2.42", 40123)]


def test_cancel_while_the_callee_is_looked_up() -> None:
    net = Net()
    net.bind("bob", BOB1)
    data = invite(branch="z9hG4bKearly", call_id="early")
    pending = net.ep.receive(data, CALLER, net.now)
    cancel = data.replace(b"INVITE sip", b"CANCEL sip").replace(b"1 INVITE", b"1 CANCEL")
    out = net.send(cancel, CALLER)
    assert responses(out) == [200, 487]
    late = net._parse(run_inline(pending, net.now))
    assert responses(late) == [100]
    assert requests(late, "INVITE") == []
    assert not [s for s in net.hooks.seen if s[0] == "started"]


def test_sips_and_transport_tls_targets_go_over_tls() -> None:
    net = Net(listeners={("tls", 4): (ME[0], 5061)})
    net.store.upsert(Binding("bob", "bob", "sips:bob@192.0.2.40", 1e12))
    (req, peer), = start_call(net)
    # RFC 5630: a sips: URI is TLS to its host, on 5061 without a port.
    assert peer == Peer("tls", "192.0.2.40", 5061, 0)
    assert req.top_via.transport == "TLS"
    assert req.top_via.port == 5061
    # The caller came over UDP: each side gets the Record-Route of its transport.
    assert without_flow_tokens(req.values("Record-Route")) == [
        "<sip:192.0.2.1:5061;transport=tls;lr>", "<sip:192.0.2.1:5060;lr>"]
    net = Net(listeners={("tls", 4): (ME[0], 5061)})
    net.store.upsert(Binding("bob", "bob", "sip:bob@192.0.2.40:5071;transport=tls", 1e12))
    (_, peer), = start_call(net)
    assert peer == Peer("tls", "192.0.2.40", 5071, 0)


def test_tls_binding_uses_the_live_connection_else_the_contact() -> None:
    net = Net(listeners={("tls", 4): (ME[0], 5061)})
    conn = Peer("tls", "192.0.2.40", 40123, conn=78)
    net.store.upsert(Binding("bob", "bob", "sip:bob@192.0.2.40:5091;transport=tls", 1e12,
                             received="tls:192.0.2.40:40123"))
    (_, peer), = start_call(net)
    assert peer == Peer("tls", "192.0.2.40", 5091, 0)
    net.send(b"\r\n\r\n", conn)
    net.send(invite(method="OPTIONS", uri="sip:192.0.2.1"), conn)
    (req, peer), = start_call(net)
    assert peer == conn
    # A TCP connection from the same address and port is not the TLS one.
    net.ep.connection_closed(Peer("tcp", "192.0.2.40", 40123, conn=79), net.now)
    (_, peer), = start_call(net)
    assert peer == conn


@pytest.mark.parametrize("kind", ["ws", "wss"])
def test_websocket_binding_is_reached_only_over_its_connection(kind: str) -> None:
    net = Net(listeners={(kind, 4): (ME[0], 8443)})
    conn = Peer(kind, "192.0.2.41", 50000, conn=80)
    net.store.upsert(Binding("bob", "bob", f"sip:b0b@df7jal23ls0d.invalid;transport={kind}", 1e12,
                             received=f"{kind}:192.0.2.41:50000"))
    net.send(invite(method="OPTIONS", uri="sip:192.0.2.1"), conn)
    (req, peer), = start_call(net)
    assert peer == conn
    assert req.top_via.transport == kind.upper()
    assert without_flow_tokens(req.values("Record-Route")) == [
        f"<sip:192.0.2.1:8443;transport={kind};lr>", "<sip:192.0.2.1:5060;lr>"]
    # The connection is gone: nothing is sent to the .invalid host; 480 at once.
    net.ep.connection_closed(conn, net.now)
    out = net.send(invite(), CALLER)
    assert responses(out) == [100, 480]
    assert requests(out, "INVITE") == []


@pytest.mark.parametrize("bad", ["bob", "sips:192.0.2.9", "sip:192.0.2.9;transport=tls", "tel:+123"])
def test_outbound_proxy_setting_is_checked(bad: str) -> None:
    from sipd.config import ConfigError, check_values

    assert check_values({"outbound_proxy": "sip:gw.example.org:5080;transport=tcp"}, "test")
    with pytest.raises(ConfigError, match="outbound_proxy"):
        check_values({"outbound_proxy": bad}, "test")


def test_a_next_hop_by_name_is_resolved_off_the_loop() -> None:
    net = Net(outbound="sip:localhost:5080;transport=tcp")
    net.users.configs["bob"] = "forward = sip:someone@example.org\n"
    (req, peer), = start_call(net)
    assert (peer.transport, peer.host, peer.port) == ("tcp", "127.0.0.1", 5080)
    assert req.top_via.transport == "TCP"
    assert req.values("Route") == ["<sip:localhost:5080;transport=tcp;lr>"]


def test_in_dialog_requests_reach_a_phone_behind_nat_at_its_register_source() -> None:
    net = Net()
    nat = Peer("udp", "203.0.113.50", 40000, conn=0)
    net.store.upsert(Binding("bob", "bob", "sip:bob@10.0.0.5:5070", 1e12,
                             received="udp:203.0.113.50:40000"))
    data = bye("sip:bob@10.0.0.5:5070", ["<sip:192.0.2.1:5060;lr>"])
    (req, peer), = requests(net.send(data, CALLER), "BYE")
    assert peer == nat
    assert req.uri_text == "sip:bob@10.0.0.5:5070"
    ack = data.replace(b"BYE", b"ACK").replace(b"2 ACK", b"1 ACK")
    (_, peer), = requests(net.send(ack, CALLER), "ACK")
    assert peer == nat
    # Once the binding is gone the contact itself is used.
    from srfs.state.location import RemoveReason

    key = net.store.lookup("bob")[0].key
    net.store.remove("bob", key, RemoveReason.UNREGISTERED)
    data = bye("sip:bob@10.0.0.5:5070", ["<sip:192.0.2.1:5060;lr>"]).replace(b"2 BYE", b"3 BYE")
    (_, peer), = requests(net.send(data, CALLER), "BYE")
    assert (peer.host, peer.port) == ("10.0.0.5", 5070)


def test_allow_lists_every_proxied_method_once() -> None:
    from sipd.proxy.context import PROXY_METHODS
    from sipd.registrar.server import PROXY_ORDER

    assert sorted(PROXY_ORDER) == sorted(PROXY_METHODS)
    identity = LocalIdentity(frozenset({REALM}), frozenset({5060}))
    allowed = Server(identity, proxying=True).allowed_methods
    assert len(allowed) == len(set(allowed)) and PROXY_METHODS <= set(allowed)


def test_finished_calls_leave_no_cyclic_garbage() -> None:
    # Cycles wait for a full collection, which stops the event loop for as
    # long as it takes: under load that was a second at a time. Nothing in
    # the proxy breaks cycles by hand: a branch names its request by key,
    # and timers are data in the Deadlines, so there are none to break.
    import gc

    net = Net()
    net.bind("bob", BOB1)
    uri = f"sip:bob@{REALM}"
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for i in range(20):
            resp = challenge(net, uri, f"sip:alice@{REALM}")
            auth = "Proxy-Authorization: " + credentials(resp, uri) + "\r\n"
            out = net.send(invite(uri, frm=f"sip:alice@{REALM}", extra=auth, cseq=2,
                                  call_id=f"g{i}"), CALLER)
            (req, _), = requests(out, "INVITE")
            net.send(answer(req, 486 if i % 2 else 200), BOB1)
            if i % 5 == 0:
                # A failed authentication held for later, and one CANCELled.
                net.send(invite(uri, frm=f"sip:alice@{REALM}", cseq=3, call_id=f"h{i}",
                                extra="Proxy-Authorization: " + credentials(
                                    resp, uri, password="wrong") + "\r\n"), CALLER)
        net.tick(net.now + 100)
        net.tick(net.now + 100)
        assert not net.proxy.forker.contexts
        gc.collect()
        kinds = sorted({type(o).__name__ for o in gc.garbage})
        assert gc.garbage == [], kinds
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


# ------------------------------------------------------------------ users known lately


@dataclass
class KnownUsers(Users):
    """Users whose answers are all known without a look-up (as HomeUsers keeps them)."""

    def find_cached(self, name: str) -> tuple[bool, UserConfig] | None:
        return self.find(name)


def test_a_call_to_users_known_lately_needs_no_job() -> None:
    net = Net(users=KnownUsers())
    net.bind("bob", BOB1)
    net.bind("carol", CAROL)
    net.users.configs["bob"] = f"forward = sip:carol@{REALM}\n"
    actions = net.ep.receive(invite(), CALLER, net.now)
    assert not [a for a in actions if isinstance(a, Job)]
    sent = [(parse(a.data), a.peer) for a in actions if isinstance(a, Outgoing)]
    assert responses(sent) == [100]
    assert [p for _, p in requests(sent, "INVITE")] == [CAROL]  # bob's forward, followed
    assert net.proxy.stats.proxy_users_cached == 1


def test_a_call_to_a_user_not_known_lately_is_looked_up_in_a_job() -> None:
    net = Net()  # find_cached knows nothing
    net.bind("bob", BOB1)
    actions = net.ep.receive(invite(), CALLER, net.now)
    assert [a.name for a in actions if isinstance(a, Job)] == ["user bob"]
    assert net.proxy.stats.proxy_users_cached == 0

"""SIP over WebSocket (RFC 7118) on a real sipd, ws and wss, as browser phones use it.

The phones here speak through the ``websockets`` package, a WebSocket
implementation independent of sipd's, and behave as JsSIP or SIP.js do:
``Sec-WebSocket-Protocol: sip``, an Origin header, Via ``SIP/2.0/WS`` or
``WSS`` and a contact at an ``.invalid`` host that only the connection
reaches. A wss phone calls a ws phone; a ws phone calls a UDP phone.
What a browser cannot do wrong but anyone else can is refused: no sip
subprotocol, an Origin that is not allowed, plain HTTP, a message over
max_message_size (which closes that connection alone).
"""

from __future__ import annotations

import functools
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.e2e.test_baresip import bindings
from tests.sipclient import (
    Daemon,
    TcpClient,
    options,
    running_sipd,
    status_of,
    wait_for,
    without_flow_tokens,
)
from tests.tlshelper import (
    Certs,
    SipUA,
    UdpChannel,
    WsClient,
    free_ports,
    in_background,
    make_certs,
)
from tests.unixusers import FakeUnix, give_passwords

REALM = "test.invalid"
ORIGIN = "https://phone.test.invalid"
#: What sipd's max_message_size is here.
MAX_MESSAGE = 4096


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("alice", "bob"))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("ws-certs"))


@pytest.fixture(scope="module")
def sipd(tmp_path_factory: pytest.TempPathFactory, unix: FakeUnix, certs: Certs,
         passwords: dict[str, str]) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("ws-sipd")
    conf = tmp / "sipd.toml"
    conf.write_text(certs.conf(f'ws_allowed_origins = ["{ORIGIN}"]\n'
                               f"max_message_size = {MAX_MESSAGE}\n"))
    ws, wss = free_ports(2)
    with running_sipd(tmp, "-c", str(conf), "-l", f"ws:127.0.0.1:{ws}",
                      "-l", f"wss:127.0.0.1:{wss}", unix=unix) as daemon:
        daemon.ws_port, daemon.wss_port = ws, wss  # type: ignore[attr-defined]
        yield daemon
    for name in ("alice", "bob"):
        (unix[name].home / ".sr" / "usrloc").unlink(missing_ok=True)


def ports(daemon: Daemon) -> tuple[int, int]:
    return daemon.ws_port, daemon.wss_port  # type: ignore[attr-defined]


def ws_client(daemon: Daemon, kind: str, certs: Certs, **kw: object) -> WsClient:
    ws, wss = ports(daemon)
    if kind == "ws":
        return WsClient(f"ws://127.0.0.1:{ws}", origin=kw.pop("origin", ORIGIN), **kw)  # type: ignore[arg-type]
    return WsClient(f"wss://127.0.0.1:{wss}", ctx=certs.client_context(),
                    origin=kw.pop("origin", ORIGIN), **kw)  # type: ignore[arg-type]


def browser_phone(client: WsClient, kind: str, user: str, password: str) -> SipUA:
    """A phone as JsSIP makes it: a random .invalid host in Via and Contact."""
    host = f"{secrets.token_hex(6)}.invalid"
    return SipUA(client, user, password, via_transport=kind.upper(), sent_by=host,
                 contact=f"<sip:{secrets.token_hex(4)}@{host};transport={kind}>")


def test_a_wss_phone_calls_a_ws_phone(sipd: Daemon, certs: Certs, unix: FakeUnix,
                                      passwords: dict[str, str]) -> None:
    ws_port, wss_port = ports(sipd)
    bob_ws = ws_client(sipd, "ws", certs)
    alice_ws = ws_client(sipd, "wss", certs)
    try:
        bob = browser_phone(bob_ws, "ws", "bob", passwords["bob"])
        alice = browser_phone(alice_ws, "wss", "alice", passwords["alice"])
        for ua, kind, client in ((bob, "ws", bob_ws), (alice, "wss", alice_ws)):
            ok = ua.register()
            assert ok.status == 200, ok.to_bytes()
            wait_for(functools.partial(bound_over, unix, ua.user, kind, client.port),
                     f"{ua.user}'s binding with received={kind}:")
        with in_background(lambda: alice.invite("bob")) as call:
            invite = bob.recv_request("INVITE")
            # Over bob's WebSocket, with sipd's Via for it and a Record-Route
            # for each side: ws towards bob, wss towards alice.
            top = invite.values("Via")[0]
            assert top.startswith(f"SIP/2.0/WS 127.0.0.1:{ws_port};"), top
            assert without_flow_tokens(invite.values("Record-Route")) == [
                f"<sip:127.0.0.1:{ws_port};transport=ws;lr>",
                f"<sip:127.0.0.1:{wss_port};transport=wss;lr>"]
            assert invite.uri_text == bob.contact.strip("<>")
            bob.answer(invite, 180, "Ringing")
            bob.answer(invite, 200, "OK")
        final, call_id = call.result()
        # The answer came back over alice's secure WebSocket.
        assert final.status == 200
        assert final.call_id == call_id
        assert final.values("Record-Route") == invite.values("Record-Route")
        for ua in (alice, bob):
            assert ua.register(expires=0).status == 200
    finally:
        bob_ws.close()
        alice_ws.close()
    assert sipd.alive()


def bound_over(unix: FakeUnix, user: str, kind: str, port: int) -> bool:
    """``user`` has a binding of ``kind`` made over the connection from ``port``."""
    return any(b.attrs.get("received") == f"{kind}:127.0.0.1:{port}" and b.transport == kind
               for b in bindings(unix, user))


def test_a_ws_phone_calls_a_udp_phone(sipd: Daemon, certs: Certs,
                                      passwords: dict[str, str]) -> None:
    ws_port, _ = ports(sipd)
    udp = UdpChannel("127.0.0.1", sipd.port, timeout=5)
    client = ws_client(sipd, "ws", certs)
    try:
        bob = SipUA(udp, "bob", passwords["bob"], via_transport="UDP",
                    sent_by=f"127.0.0.1:{udp.port}", contact=f"<sip:bob@127.0.0.1:{udp.port}>")
        alice = browser_phone(client, "ws", "alice", passwords["alice"])
        assert bob.register().status == 200
        assert alice.register().status == 200
        with in_background(lambda: alice.invite("bob")) as call:
            invite = bob.recv_request("INVITE")
            assert invite.values("Via")[0].startswith(f"SIP/2.0/UDP 127.0.0.1:{sipd.port};")
            assert without_flow_tokens(invite.values("Record-Route")) == [
                f"<sip:127.0.0.1:{sipd.port};lr>",
                f"<sip:127.0.0.1:{ws_port};transport=ws;lr>"]
            bob.answer(invite, 486, "Busy Here")
        final, _ = call.result()
        assert final.status == 486
        for ua in (alice, bob):
            assert ua.register(expires=0).status == 200
    finally:
        client.close()
        udp.close()


def test_a_ws_phone_whose_connection_closed_is_not_called_elsewhere(
        sipd: Daemon, certs: Certs, passwords: dict[str, str]) -> None:
    gone = ws_client(sipd, "ws", certs)
    bob = browser_phone(gone, "ws", "bob", passwords["bob"])
    assert bob.register().status == 200
    gone.close()
    client = ws_client(sipd, "wss", certs)
    try:
        alice = browser_phone(client, "wss", "alice", passwords["alice"])
        started = time.monotonic()
        # The binding is still there (it has not expired), but its connection is not.
        final, _ = alice.invite("bob")
        assert final.status == 480, final.to_bytes()
        # At once: nothing was sent to the .invalid host to wait for.
        assert time.monotonic() - started < 3
    finally:
        client.close()
    assert sipd.alive()


# ------------------------------------------------------------------ refusals


def test_an_upgrade_without_the_sip_subprotocol_is_refused(sipd: Daemon, certs: Certs) -> None:
    with pytest.raises(InvalidStatus) as refused:
        ws_client(sipd, "ws", certs, subprotocols=())
    assert refused.value.response.status_code == 400
    assert b"sip subprotocol" in refused.value.response.body
    with pytest.raises(InvalidStatus) as refused:
        ws_client(sipd, "wss", certs, subprotocols=("chat",))
    assert refused.value.response.status_code == 400


def test_a_page_from_another_origin_is_refused(sipd: Daemon, certs: Certs) -> None:
    for kind in ("ws", "wss"):
        with pytest.raises(InvalidStatus) as refused:
            ws_client(sipd, kind, certs, origin="https://evil.test.invalid")
        assert refused.value.response.status_code == 403
    assert "Origin 'https://evil.test.invalid' is not in ws_allowed_origins" in sipd.log


def test_plain_http_and_garbage_get_an_http_error(sipd: Daemon) -> None:
    ws_port, _ = ports(sipd)
    plain = TcpClient("127.0.0.1", ws_port, timeout=5)
    try:
        plain.send(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = plain.read_until_closed(wait=5)
        assert answer is not None and answer.startswith(b"HTTP/1.1 426 "), answer
    finally:
        plain.close()
    # A Host the WebSocket library cannot decode is a bad request, not a crash.
    bad = TcpClient("127.0.0.1", ws_port, timeout=5)
    try:
        bad.send(b"GET / HTTP/1.1\r\nHost: xn--zz\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n")
        answer = bad.read_until_closed(wait=5)
        assert answer is not None and answer.startswith(b"HTTP/1.1 400 "), answer
    finally:
        bad.close()
    sip = TcpClient("127.0.0.1", ws_port, timeout=5)
    try:
        sip.send(b"OPTIONS sip:127.0.0.1 SIP/2.0\r\n\r\n")
        answer = sip.read_until_closed(wait=5)
        assert answer is not None and answer.startswith(b"HTTP/1.1 400 "), answer
    finally:
        sip.close()
    assert sipd.ping() == 200


def test_an_oversize_message_closes_that_connection_only(sipd: Daemon, certs: Certs,
                                                        passwords: dict[str, str]) -> None:
    other = ws_client(sipd, "ws", certs)
    big = ws_client(sipd, "wss", certs)
    try:
        big.send("OPTIONS sip:127.0.0.1 SIP/2.0\r\n" + "X-Pad: " + "a" * MAX_MESSAGE + "\r\n\r\n")
        with pytest.raises(ConnectionClosed) as closed:
            big.recv_message()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        # The other connection and the daemon go on.
        ua = browser_phone(other, "ws", "alice", passwords["alice"])
        assert ua.register().status == 200
        assert ua.register(expires=0).status == 200
    finally:
        big.close()
        other.close()
    wait_for(lambda: "a message over max_message_size" in sipd.log, "the close logged")
    assert sipd.alive()


def test_pings_and_crlf_keepalives_are_answered(sipd: Daemon, certs: Certs) -> None:
    client = ws_client(sipd, "ws", certs)
    try:
        # A WebSocket ping gets its pong.
        assert client.ws.ping(b"hi").wait(5)
        # RFC 5626 keep-alive as SIP.js sends it: a message of CRLF CRLF, answered with CRLF.
        client.send("\r\n\r\n")
        assert client.recv_message() == b"\r\n"
    finally:
        client.close()


def test_a_silent_client_is_closed_and_a_quiet_phone_is_pinged(
        tmp_path: Path, unix: FakeUnix) -> None:
    conf = tmp_path / "sipd.toml"
    conf.write_text("tcp_message_timeout = 1\ntcp_idle_timeout = 2\n")
    (port,) = free_ports(1)
    with running_sipd(tmp_path, "-c", str(conf), "-l", f"ws:127.0.0.1:{port}", unix=unix) as daemon:
        with socket.create_connection(("127.0.0.1", port)) as silent:
            silent.settimeout(6)
            assert silent.recv(100) == b""
        wait_for(lambda: "WebSocket upgrade failed: not done within 1 s" in daemon.log,
                 "the deadline logged")
        # A phone that says nothing for longer than tcp_idle_timeout, as a
        # browser between registrations: sipd's pings keep it (the client
        # library answers them as browsers do).
        quiet = WsClient(f"ws://127.0.0.1:{port}")
        try:
            deadline = time.monotonic() + 3.5
            while time.monotonic() < deadline:
                with pytest.raises(TimeoutError):
                    quiet.recv_message(timeout=0.5)
            quiet.send(options(transport="WS", via_port=quiet.port))
            assert status_of(quiet.recv_message()) == 200
        finally:
            quiet.close()
        assert "no traffic" not in daemon.log

"""SIP over TLS on a real sipd: phones register and call, bad clients cost a slot briefly.

The certificates are made by the test (trustme): a CA, and a server
certificate for 127.0.0.1, ::1 and localhost that sipd reads from
``tls_certificate`` and ``tls_private_key``. Clients trust that CA alone,
so every connection here is verified as a phone would verify it.

Two baresip softphones register over TLS (``sip_cafile`` names the CA;
baresip 1.0.0 registers even with a CA that did not sign sipd's
certificate, so that verification is proved by the tests' own clients)
and call each other through sipd; small clients of the tests check what
sipd records (``received=tls:``), what it answers to bytes that are not
TLS and to a handshake that never comes, the connection caps, client
certificates, and SIGHUP with a renewed certificate.
"""

from __future__ import annotations

import re
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_baresip import Baresip, baresip_install, bindings, running_baresip
from tests.e2e.test_baresip_call import wait_for as wait_phone
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
    TlsClient,
    UdpChannel,
    free_ports,
    in_background,
    make_certs,
    peer_certificate,
)
from tests.unixusers import FakeUnix, give_passwords, own_stderr

REALM = "test.invalid"
#: How long sipd gives a TLS handshake here (tcp_message_timeout).
HANDSHAKE = 2


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls-certs"))


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("alice", "bob"))


@pytest.fixture(scope="module")
def sipd(tmp_path_factory: pytest.TempPathFactory, unix: FakeUnix, certs: Certs,
         passwords: dict[str, str]) -> Iterator[Daemon]:
    """sipd with a TLS listener beside UDP and TCP; handshakes get HANDSHAKE seconds."""
    tmp = tmp_path_factory.mktemp("tls-sipd")
    conf = tmp / "sipd.toml"
    conf.write_text(certs.conf(f"tcp_message_timeout = {HANDSHAKE}\n"))
    (tls_port,) = free_ports(1)
    with running_sipd(tmp, "-c", str(conf), "-l", f"tls:127.0.0.1:{tls_port}",
                      "-l", f"tls:[::1]:{tls_port}", unix=unix) as daemon:
        daemon.tls_port = tls_port  # type: ignore[attr-defined]
        yield daemon
    for name in ("alice", "bob"):
        (unix[name].home / ".sr" / "usrloc").unlink(missing_ok=True)


def tls_port(daemon: Daemon) -> int:
    return int(daemon.tls_port)  # type: ignore[attr-defined]


def tls_ua(daemon: Daemon, certs: Certs, user: str, password: str,
           host: str = "127.0.0.1") -> tuple[TlsClient, SipUA]:
    client = TlsClient(host, tls_port(daemon), certs.client_context())
    hostport = f"[{host}]:{client.port}" if ":" in host else f"{host}:{client.port}"
    ua = SipUA(client, user, password, via_transport="TLS", sent_by=hostport,
               contact=f"<sip:{user}@{hostport};transport=tls>")
    return client, ua


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_a_phone_registers_over_tls_and_its_connection_is_the_flow(
        sipd: Daemon, certs: Certs, unix: FakeUnix, passwords: dict[str, str], host: str) -> None:
    client, ua = tls_ua(sipd, certs, "alice", passwords["alice"], host)
    where = f"[{host}]:{client.port}" if ":" in host else f"{host}:{client.port}"
    try:
        assert client.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[attr-defined]
        ok = ua.register()
        assert ok.status == 200, ok.to_bytes()
        assert ok.values("Via")[0].startswith(f"SIP/2.0/TLS {where.rsplit(':', 1)[0]}:")
        wait_for(lambda: any(b.attrs.get("received") == f"tls:{where}"
                             for b in bindings(unix, "alice")), "received=tls: in usrloc")
        # RFC 5626 keep-alives work over TLS as over TCP.
        client.send(b"\r\n\r\n")
        assert client.recv_raw() == b"\r\n"
        assert ua.register(expires=0).status == 200
    finally:
        client.close()
    assert sipd.alive()


def test_a_call_from_udp_reaches_a_tls_phone_on_its_connection(
        sipd: Daemon, certs: Certs, passwords: dict[str, str]) -> None:
    client, bob = tls_ua(sipd, certs, "bob", passwords["bob"])
    udp = UdpChannel("127.0.0.1", sipd.port, timeout=5)
    alice = SipUA(udp, "alice", passwords["alice"], via_transport="UDP",
                  sent_by=f"127.0.0.1:{udp.port}", contact=f"<sip:alice@127.0.0.1:{udp.port}>")
    try:
        assert bob.register().status == 200
        with in_background(lambda: alice.invite("bob")) as call:
            # bob's phone is reached over the TLS connection it registered on.
            invite = bob.recv_request("INVITE")
            top = invite.values("Via")[0]
            assert top.startswith(f"SIP/2.0/TLS 127.0.0.1:{tls_port(sipd)};"), top
            # Two sides, two transports: a Record-Route for each.
            assert without_flow_tokens(invite.values("Record-Route")) == [
                f"<sip:127.0.0.1:{tls_port(sipd)};transport=tls;lr>",
                f"<sip:127.0.0.1:{sipd.port};lr>"]
            bob.answer(invite, 486, "Busy Here")
        final, _ = call.result()
        assert final.status == 486
        assert bob.register(expires=0).status == 200
    finally:
        client.close()
        udp.close()


def test_plain_tcp_bytes_to_the_tls_port_close_that_connection_only(sipd: Daemon) -> None:
    plain = TcpClient("127.0.0.1", tls_port(sipd), timeout=5)
    try:
        plain.send(options(transport="TCP", via_port=plain.port))
        # No SIP answer: the bytes are not a TLS record; the connection closes.
        data = plain.read_until_closed(wait=5)
        assert data is not None, "sipd kept a connection that does not speak TLS"
        assert b"SIP/2.0" not in data
    finally:
        plain.close()
    assert sipd.alive()
    assert sipd.ping() == 200
    wait_for(lambda: "TLS handshake failed" in sipd.log, "the failed handshake logged")
    assert "Traceback" not in sipd.log


def test_a_handshake_that_never_comes_is_closed_after_the_deadline(sipd: Daemon) -> None:
    silent = TcpClient("127.0.0.1", tls_port(sipd), timeout=HANDSHAKE + 5)
    started = time.monotonic()
    try:
        assert silent.is_closed(wait=HANDSHAKE + 5), "a silent client kept its slot"
    finally:
        silent.close()
    took = time.monotonic() - started
    assert HANDSHAKE - 0.5 < took < HANDSHAKE + 3, took
    wait_for(lambda: f"not done within {HANDSHAKE} s" in sipd.log, "the deadline logged")


def test_a_client_that_does_not_trust_the_certificate_fails_and_sipd_goes_on(
        sipd: Daemon, tmp_path: Path) -> None:
    other = make_certs(tmp_path / "other")
    with pytest.raises(ssl.SSLCertVerificationError):
        TlsClient("127.0.0.1", tls_port(sipd), other.client_context())
    assert sipd.ping() == 200


# ------------------------------------------------------------------ baresip


def test_baresip_registers_over_tls_and_calls_baresip(
        sipd: Daemon, certs: Certs, unix: FakeUnix, passwords: dict[str, str],
        tmp_path: Path) -> None:
    baresip_install()
    cafile = f"sip_cafile\t{certs.ca_file}\n"
    with running_baresip(tmp_path, tls_port(sipd), "tls", user="bob", password=passwords["bob"],
                         account_params=";answermode=auto", modules=("menu.so",),
                         config=cafile) as bob, \
         running_baresip(tmp_path, tls_port(sipd), "tls", user="alice",
                         password=passwords["alice"], modules=("menu.so",),
                         config=cafile) as alice:
        for user, phone in (("bob", bob), ("alice", alice)):
            wait_tls_binding(unix, user, phone)
        alice.command(f"/dial sip:bob@{REALM}")
        wait_phone(bob, r"^INVITE sip:", "bob's phone got the INVITE")
        wait_phone(alice, r"established", "alice's call established")
        wait_phone(bob, r"established", "bob's call established")
        # The INVITE came to bob over TLS with sipd's Via and one Record-Route
        # for the TLS side (both sides are TLS: one entry).
        invite = bob.log[bob.log.index("INVITE sip:"):]
        assert re.search(rf"^Via: SIP/2\.0/TLS 127\.0\.0\.1:{tls_port(sipd)};", invite,
                         re.MULTILINE), invite[:2000]
        # (Its user part is sipd's flow token: see sipd(8), NAT AND KEEP-ALIVE.)
        assert re.search(rf"^Record-Route: <sip:(?:[A-Za-z0-9_-]+@)?127\.0\.0\.1:{tls_port(sipd)};"
                         r"transport=tls;lr>",
                         invite, re.MULTILINE | re.IGNORECASE), invite[:2000]
        alice.command("/hangup")
        wait_phone(bob, r"^BYE sip:", "bob's phone got the BYE")
        assert alice.quit() == 0, alice.tail()
        assert bob.quit() == 0, bob.tail()
    assert sipd.alive(), sipd.log
    assert "Traceback" not in sipd.log, sipd.log


def wait_tls_binding(unix: FakeUnix, user: str, phone: Baresip) -> None:
    deadline = time.monotonic() + 15
    while not [b for b in bindings(unix, user)
               if b.transport == "tls" and b.attrs.get("received", "").startswith("tls:127.0.0.1:")]:
        phone.check_alive()
        assert time.monotonic() < deadline, f"{user} did not register over TLS:\n{phone.tail()}"
        time.sleep(0.05)


# ------------------------------------------------------- caps, client certificates


@pytest.fixture
def strict(tmp_path: Path, unix: FakeUnix, certs: Certs) -> Iterator[Daemon]:
    """Client certificates required, two connections per source."""
    conf = tmp_path / "sipd.toml"
    conf.write_text(certs.conf('tls_verify_client = "required"\n'
                               "tcp_max_connections_per_source = 2\n"
                               f"tcp_message_timeout = {HANDSHAKE + 8}\n"))
    (port,) = free_ports(1)
    with running_sipd(tmp_path, "-c", str(conf), "-l", f"tls:127.0.0.1:{port}", unix=unix) as daemon:
        daemon.tls_port = port  # type: ignore[attr-defined]
        yield daemon


def test_client_certificates_when_required_and_the_caps_of_tcp(
        strict: Daemon, certs: Certs, tmp_path: Path) -> None:
    port = tls_port(strict)
    # Without a certificate the handshake fails (TLS 1.3 reports it at the first read).
    bare = TlsClient("127.0.0.1", port, certs.client_context())
    try:
        bare.send(options(transport="TLS", via_port=bare.port))
        with pytest.raises((ssl.SSLError, ConnectionError)):
            bare.recv_message()
    finally:
        bare.close()
    ctx = certs.client_context()
    client_cert = certs.ca.issue_cert("phone.test.invalid")
    client_cert.configure_cert(ctx)
    good = TlsClient("127.0.0.1", port, ctx)
    try:
        good.send(options(transport="TLS", via_port=good.port))
        assert status_of(good.recv_message()) == 200
        # Two from one source at most: the good one and a silent one; a third is refused.
        silent = socket.create_connection(("127.0.0.1", port))
        try:
            wait_for(lambda: refused(port), "the third connection refused")
        finally:
            silent.close()
        wait_for(lambda: "tcp_max_connections_per_source" in strict.log, "the refusal logged")
        good.send(options(transport="TLS", via_port=good.port))
        assert status_of(good.recv_message()) == 200
    finally:
        good.close()


def refused(port: int) -> bool:
    """Whether a connection to ``port`` is reset at once (a refusal by a cap)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
    except ConnectionResetError:
        # The reset can overtake connect() on a busy machine.
        return True
    with s:
        s.settimeout(2)
        try:
            return s.recv(1) == b""
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False


# ------------------------------------------------------------------ SIGHUP


def test_sighup_loads_a_renewed_certificate_and_keeps_connections(
        tmp_path: Path, unix: FakeUnix) -> None:
    certs = make_certs(tmp_path / "certs")
    conf = tmp_path / "sipd.toml"
    conf.write_text(certs.conf())
    (port,) = free_ports(1)
    with running_sipd(tmp_path, "-c", str(conf), "-l", f"tls:127.0.0.1:{port}", unix=unix) as daemon:
        ctx = certs.client_context()
        before = peer_certificate(port, ctx)
        up = TlsClient("127.0.0.1", port, ctx)
        try:
            up.send(options(transport="TLS", via_port=up.port))
            assert status_of(up.recv_message()) == 200
            certs.reissue()
            seen = daemon.log.count("reloaded")
            daemon.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: daemon.log.count(f"TLS certificate {certs.cert_file} reloaded") > 0
                     and daemon.log.count("reloaded") > seen, "the reload")
            after = peer_certificate(port, ctx)
            assert after != before, "a new connection still gets the old certificate"
            assert after == ssl.PEM_cert_to_DER_cert(
                certs.cert_file.read_text().split("-----END CERTIFICATE-----")[0]
                + "-----END CERTIFICATE-----\n")
            # The connection made before the reload goes on.
            up.send(options(transport="TLS", via_port=up.port))
            assert status_of(up.recv_message()) == 200
            # A broken renewal leaves the certificate in force.
            certs.key_file.write_text("not a key\n")
            daemon.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: "TLS certificate not reloaded, the one in force stays" in daemon.log,
                     "the failed reload")
            assert peer_certificate(port, ctx) == after
        finally:
            up.close()
        assert daemon.alive()


# ------------------------------------------------------------------ start-up


def test_bad_tls_settings_are_one_line_errors(tmp_path: Path, unix: FakeUnix) -> None:
    import subprocess

    from tests.sipclient import ROOT, SIPD

    certs = make_certs(tmp_path / "certs")
    other = make_certs(tmp_path / "other")
    (port,) = free_ports(1)
    cases = {
        "": "listen tls:127.0.0.1:{port} needs tls_certificate and tls_private_key",
        f'tls_certificate = "{certs.cert_file}"\ntls_private_key = "{tmp_path}/missing.pem"\n':
            "cannot read the TLS certificate or key",
        f'tls_certificate = "{certs.cert_file}"\ntls_private_key = "{other.key_file}"\n':
            "cannot use tls_certificate",
        'tls_certificate = "cert.pem"\n': "tls_certificate must be an absolute path",
    }
    for text, expected in cases.items():
        conf = tmp_path / "sipd.toml"
        conf.write_text(text)
        for check in (["--check-config"], []):
            p = subprocess.run(
                [*SIPD, "-c", str(conf), "-l", f"tls:127.0.0.1:{port}", "-r", REALM, "--no-pam",
                 "--no-mount", *check],
                capture_output=True, text=True, timeout=30, cwd=ROOT, env=unix.env)
            assert p.returncode == 1, (text, p.stderr)
            lines = own_stderr(p.stderr).strip().splitlines()
            assert len(lines) == 1 and expected.format(port=port) in lines[0], (text, p.stderr)


# ------------------------------------------------------------ sipd as a TLS client


class TlsPhoneServer:
    """A phone that takes TLS connections (as a contact with sips:), one at a time."""

    def __init__(self, certs: Certs, *names: str) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        certs.ca.issue_cert(*names).configure_cert(self.ctx)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]

    def accept(self) -> TcpClient:
        raw, _ = self.sock.accept()
        client = TcpClient.__new__(TcpClient)
        client.sock = self.ctx.wrap_socket(raw, server_side=True)
        client.sock.settimeout(10)
        client.buf = b""
        return client

    def handshake_refused(self) -> bool:
        """Whether the next connection's client gives up the TLS handshake."""
        try:
            self.accept().close()
        except (ssl.SSLError, ConnectionError):
            return True
        except TimeoutError:  # sipd never connected
            return False
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize(("names", "reached"), [(("localhost",), True),
                                                (("elsewhere.test.invalid",), False)])
def test_sipd_calls_a_sips_contact_over_tls_checking_its_certificate(
        sipd: Daemon, certs: Certs, passwords: dict[str, str], names: tuple[str, ...],
        reached: bool) -> None:
    server = TlsPhoneServer(certs, *names)
    udp = UdpChannel("127.0.0.1", sipd.port, timeout=15)
    alice = SipUA(udp, "alice", passwords["alice"], via_transport="UDP",
                  sent_by=f"127.0.0.1:{udp.port}", contact=f"<sip:alice@127.0.0.1:{udp.port}>")
    # bob registers over TLS with a sips: contact by name, then his connection
    # goes: sipd must open a new one, to the contact, and verify it is localhost.
    client, bob = tls_ua(sipd, certs, "bob", passwords["bob"])
    bob.contact = f"<sips:bob@localhost:{server.port}>"
    try:
        assert bob.register().status == 200
        client.close_cleanly()
        with in_background(lambda: alice.invite("bob")) as call:
            if reached:
                phone = server.accept()
                callee = SipUA(phone, "bob", passwords["bob"], via_transport="TLS",
                               sent_by=f"localhost:{server.port}", contact=bob.contact)
                invite = callee.recv_request("INVITE")
                assert invite.uri_text == f"sips:bob@localhost:{server.port}"
                assert invite.values("Via")[0].startswith(f"SIP/2.0/TLS 127.0.0.1:{tls_port(sipd)};")
                callee.answer(invite, 486, "Busy Here")
            else:
                # sipd aborts the handshake: the certificate does not name localhost.
                # The accept runs beside the call, so that if sipd never connects
                # the failure shows what sipd answered and logged instead.
                with in_background(lambda: server.handshake_refused()) as refused:
                    final, _ = call.result(timeout=15)
                    assert refused.result(timeout=15), sipd.log[-3000:]
        final, _ = call.result()
        # A certificate for another name fails the handshake: the branch fails (503).
        assert final.status == (486 if reached else 503), (final.to_bytes(), sipd.log[-3000:])
        if not reached:
            wait_for(lambda: "certificate verify failed: Hostname mismatch" in sipd.log,
                     "the failure logged")
    finally:
        udp.close()
        server.close()
        again, bob_again = tls_ua(sipd, certs, "bob", passwords["bob"])
        bob_again.contact = bob.contact
        bob_again.call_id = bob.call_id
        bob_again.cseq = bob.cseq
        assert bob_again.register(expires=0).status == 200
        again.close()


def test_a_call_to_a_phone_that_closes_its_connection_unanswered_fails_at_once(
        sipd: Daemon, certs: Certs, passwords: dict[str, str]) -> None:
    # The INVITE goes out on bob's connection, and bob hangs it up without
    # a word: the call fails when the connection does, not 32 s later.
    udp = UdpChannel("127.0.0.1", sipd.port, timeout=8)
    alice = SipUA(udp, "alice", passwords["alice"], via_transport="UDP",
                  sent_by=f"127.0.0.1:{udp.port}", contact=f"<sip:alice@127.0.0.1:{udp.port}>")
    client, bob = tls_ua(sipd, certs, "bob", passwords["bob"])
    try:
        assert bob.register().status == 200
        with in_background(lambda: alice.invite("bob")) as call:
            assert bob.recv_request("INVITE").method == "INVITE"
            client.close()
            started = time.monotonic()
            final, _ = call.result(timeout=10)
        assert final.status == 503, (final.to_bytes(), sipd.log[-3000:])
        assert time.monotonic() - started < 5
    finally:
        udp.close()
        again, bob_again = tls_ua(sipd, certs, "bob", passwords["bob"])
        bob_again.contact, bob_again.call_id, bob_again.cseq = bob.contact, bob.call_id, bob.cseq
        assert bob_again.register(expires=0).status == 200
        again.close()


# ------------------------------------------------------------------ linphone


def test_linphone_registers_over_tls_verifying_sipd(
        sipd: Daemon, certs: Certs, unix: FakeUnix, passwords: dict[str, str],
        tmp_path: Path) -> None:
    from tests.linphone import RegistrationFailed, running_linphone

    with running_linphone(tmp_path, tls_port(sipd), "tls", "bob", passwords["bob"],
                          domain=REALM, ca=certs.ca_file) as phone:
        phone.wait_registered("linphone over TLS")
        wait_for(lambda: any(b.transport == "tls" and b.attrs.get("received", "").startswith(
            "tls:") for b in bindings(unix, "bob")), "bob's TLS binding")
        assert phone.quit() == 0
    # A phone that trusts another CA refuses sipd's certificate; sipd logs it.
    other = make_certs(tmp_path / "other")
    with running_linphone(tmp_path, tls_port(sipd), "tls", "bob", passwords["bob"],
                          domain=REALM, ca=other.ca_file) as phone:
        with pytest.raises(RegistrationFailed):
            phone.wait_registered("linphone trusting another CA")
    wait_for(lambda: "TLS handshake failed: TLSV1_ALERT_UNKNOWN_CA" in sipd.log,
             "the refused certificate logged")
    assert sipd.alive()

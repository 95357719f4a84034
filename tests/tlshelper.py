"""Certificates made on the spot (trustme), and SIP clients over TLS and WebSocket.

:func:`make_certs` writes a CA, and a server certificate it signed for
127.0.0.1, ::1 and localhost, as PEM files sipd reads. :class:`TlsClient`
is :class:`~tests.sipclient.TcpClient` over a verified TLS connection.
:class:`WsClient` speaks SIP over a WebSocket of the ``websockets``
package, an implementation independent of sipd's (wsproto), one SIP
message per WebSocket message.
"""

from __future__ import annotations

import re
import secrets
import socket
import ssl
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trustme
from websockets.sync.client import ClientConnection, connect

from sipd.sip.digest import ha1, response
from sipd.sip.message import Request, Response, parse
from tests.sipclient import TcpClient, UdpClient, free_port

T = TypeVar("T")

NAMES = ("127.0.0.1", "::1", "localhost")


@dataclass
class Certs:
    """A CA and the files of one server certificate it issued."""

    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA alone and checks host names."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def reissue(self, *names: str) -> trustme.LeafCert:
        """A new certificate for ``names`` written over the old files (as a renewal would)."""
        leaf = self.ca.issue_cert(*(names or NAMES))
        write_leaf(leaf, self.cert_file, self.key_file)
        return leaf

    def conf(self, extra: str = "") -> str:
        """sipd.conf lines naming these files."""
        return (f'tls_certificate = "{self.cert_file}"\n'
                f'tls_private_key = "{self.key_file}"\n'
                f'tls_ca_certificates = "{self.ca_file}"\n' + extra)


def write_leaf(leaf: trustme.LeafCert, cert_file: Path, key_file: Path) -> None:
    # Written whole, then renamed: sipd never reads half a file.
    tmp = cert_file.with_suffix(".new")
    tmp.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    tmp.replace(cert_file)
    tmp = key_file.with_suffix(".new")
    tmp.write_bytes(leaf.private_key_pem.bytes())
    tmp.chmod(0o600)
    tmp.replace(key_file)


def make_certs(where: Path, *names: str) -> Certs:
    where.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    certs = Certs(ca, where / "ca.pem", where / "cert.pem", where / "key.pem")
    ca.cert_pem.write_to_path(str(certs.ca_file))
    certs.reissue(*names)
    return certs


def peer_certificate(port: int, ctx: ssl.SSLContext, host: str = "127.0.0.1") -> bytes:
    """The DER certificate sipd presents on a new TLS connection to ``port``."""
    with socket.create_connection((host, port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


class TlsClient(TcpClient):
    """A SIP client over TLS: the server's certificate verified against ``ctx``."""

    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, timeout: float = 5.0) -> None:
        super().__init__(host, port, timeout)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=host)

    def close_cleanly(self) -> None:
        """Close as a phone that hangs up its connection: returns once the server closed too.

        The server's close_notify comes after it has stopped using the
        connection, so what follows cannot race sipd's view of it.
        """
        try:
            self.sock.unwrap()  # type: ignore[attr-defined]
        finally:
            self.sock.close()


def free_ports(n: int) -> list[int]:
    """``n`` different ports free for TCP (and UDP) on 127.0.0.1 and ::1."""
    found: list[int] = []
    while len(found) < n:
        port = free_port()
        if port not in found:
            found.append(port)
    return found


class WsClient:
    """SIP over one WebSocket connection: each send and each recv is one SIP message."""

    def __init__(self, url: str, *, ctx: ssl.SSLContext | None = None, origin: str | None = None,
                 subprotocols: tuple[str, ...] = ("sip",), timeout: float = 5.0) -> None:
        kw: dict[str, Any] = {"subprotocols": list(subprotocols), "open_timeout": timeout,
                              "close_timeout": 2}
        if ctx is not None:
            kw["ssl"] = ctx
        if origin is not None:
            kw["origin"] = origin
        # Entered as the context manager it is (the direct use is deprecated).
        self.ws: ClientConnection = connect(url, **kw).__enter__()
        self.timeout = timeout
        self.host, self.port = self.ws.socket.getsockname()[:2]

    def send(self, data: bytes | str) -> None:
        self.ws.send(data.decode() if isinstance(data, bytes) else data)

    def recv_message(self, timeout: float | None = None) -> bytes:
        got = self.ws.recv(timeout if timeout is not None else self.timeout)
        return got.encode() if isinstance(got, str) else got

    def close(self) -> None:
        self.ws.close()


# ---------------------------------------------------------------- a small UA

REALM = "test.invalid"
_CHALLENGE = re.compile(r'Digest realm="([^"]+)", nonce="([^"]+)", algorithm=MD5')


class Channel(Protocol):
    def send(self, data: bytes) -> None: ...
    def recv_message(self) -> bytes: ...


class SipUA:
    """One user's phone on one connection: REGISTER, INVITE with digest, answers.

    ``via_transport`` and ``contact`` are what the phone puts in its
    messages: a browser phone says ``WS``/``WSS`` and names an ``.invalid``
    host it cannot be reached at (RFC 7118 §5).
    """

    def __init__(self, channel: Channel, user: str, password: str, *, via_transport: str,
                 contact: str, sent_by: str) -> None:
        self.channel, self.user, self.password = channel, user, password
        self.via_transport, self.contact, self.sent_by = via_transport, contact, sent_by
        self.call_id = secrets.token_hex(8)
        self.cseq = 0
        self.tag = secrets.token_hex(4)

    def via(self) -> str:
        return f"Via: SIP/2.0/{self.via_transport} {self.sent_by};branch=z9hG4bK{secrets.token_hex(6)};rport"

    def _request(self, method: str, uri: str, to: str, extra: list[str], body: str = "",
                 call_id: str | None = None, cseq: int | None = None) -> bytes:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        lines = [
            f"{method} {uri} SIP/2.0", self.via(), "Max-Forwards: 70",
            f"From: <sip:{self.user}@{REALM}>;tag={self.tag}", f"To: {to}",
            f"Call-ID: {call_id or self.call_id}", f"CSeq: {cseq} {method}",
            f"Contact: {self.contact}", *extra,
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        return ("\r\n".join(lines) + f"\r\nContent-Length: {len(body.encode())}\r\n\r\n"
                + body).encode()

    def _credentials(self, challenge: bytes, method: str, uri: str, header: str) -> str:
        m = _CHALLENGE.search(challenge.decode("utf-8", "replace"))
        assert m, challenge
        realm, nonce = m.group(1), m.group(2)
        r = response(ha1(self.user, realm, self.password, "MD5"), nonce, method, uri, "MD5",
                     qop="auth", nc="00000001", cnonce="c0ffee")
        return (f'{header}: Digest username="{self.user}", realm="{realm}", nonce="{nonce}", '
                f'uri="{uri}", response="{r}", algorithm=MD5, qop=auth, nc=00000001, '
                'cnonce="c0ffee"')

    def recv(self) -> Request | Response:
        return parse(self.channel.recv_message())

    def recv_request(self, method: str) -> Request:
        """The next request of ``method`` (anything else before it skipped)."""
        while True:
            msg = self.recv()
            if isinstance(msg, Request) and msg.method == method:
                return msg

    def recv_final(self) -> Response:
        """The next final response (provisional ones skipped)."""
        while True:
            msg = self.recv()
            if isinstance(msg, Response) and msg.status >= 200:
                return msg

    def register(self, expires: int = 600) -> Response:
        uri = f"sip:{REALM}"
        to = f"<sip:{self.user}@{REALM}>"
        self.channel.send(self._request("REGISTER", uri, to, [f"Expires: {expires}"]))
        first = self.recv_final()
        if first.status != 401:
            return first
        auth = self._credentials(first.to_bytes(), "REGISTER", uri, "Authorization")
        self.channel.send(self._request("REGISTER", uri, to, [f"Expires: {expires}", auth]))
        return self.recv_final()

    def invite(self, callee: str) -> tuple[Response, str]:
        """INVITE ``callee``'s AOR, answering the 407; (final response, Call-ID)."""
        uri = f"sip:{callee}@{REALM}"
        to = f"<{uri}>"
        call_id = secrets.token_hex(8)
        sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n" \
              "m=audio 4000 RTP/AVP 0\r\n"
        self.channel.send(self._request("INVITE", uri, to, [], sdp, call_id=call_id))
        first = self.recv_final()
        if first.status != 407:
            return first, call_id
        self._ack(first, uri, call_id)
        auth = self._credentials(first.to_bytes(), "INVITE", uri, "Proxy-Authorization")
        self.channel.send(self._request("INVITE", uri, to, [auth], sdp, call_id=call_id))
        return self.recv_final(), call_id

    def _ack(self, final: Response, uri: str, call_id: str) -> None:
        # The ACK of a non-2xx: the INVITE's branch and CSeq number (§17.1.1.3).
        via = final.values("Via")[0]
        lines = [f"ACK {uri} SIP/2.0", f"Via: {via}", "Max-Forwards: 70",
                 f"From: {final.get('From')}", f"To: {final.get('To')}",
                 f"Call-ID: {call_id}", f"CSeq: {final.cseq.seq} ACK", "Content-Length: 0"]
        self.channel.send(("\r\n".join(lines) + "\r\n\r\n").encode())

    def answer(self, request: Request, status: int, reason: str, *, tag: str = "callee") -> None:
        """Answer ``request`` as a phone does: its Vias, Record-Route, From, To with our tag."""
        lines = [f"SIP/2.0 {status} {reason}"]
        lines += [f"Via: {v}" for v in request.values("Via")]
        lines += [f"Record-Route: {r}" for r in request.values("Record-Route")]
        to = request.get("To") or ""
        if status > 100 and ";tag=" not in to:
            to += f";tag={tag}"
        lines += [f"From: {request.get('From')}", f"To: {to}",
                  f"Call-ID: {request.call_id}", f"CSeq: {request.get('CSeq')}",
                  f"Contact: {self.contact}", "Content-Length: 0"]
        self.channel.send(("\r\n".join(lines) + "\r\n\r\n").encode())


class UdpChannel(UdpClient):
    """A UDP socket as a :class:`Channel`: each datagram one message."""

    def recv_message(self) -> bytes:
        return self.recv()


@contextmanager
def in_background(work: Callable[[], T]) -> Iterator[Future[T]]:
    """Run ``work`` in a thread while the block plays the other phone; waits for it after."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(work)
        yield future
        future.result(timeout=20)

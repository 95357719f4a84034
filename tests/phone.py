"""A phone for tests: REGISTER with digest over UDP or TCP, from a chosen source address.

Loopback is all of 127.0.0.0/8 on Linux, so a test that needs a second
"host" binds its sockets to 127.0.0.2 and up.
"""

from __future__ import annotations

import re
import secrets
import socket

from sipd.sip.digest import ha1, response
from tests.sipclient import status_of

REALM = "test.invalid"


class Phone:
    """One phone with one socket; ``register()`` answers the 401 challenge itself."""

    def __init__(self, port: int, user: str, password: str, *, transport: str = "udp",
                 source: str = "127.0.0.1", server: str = "127.0.0.1",
                 timeout: float = 5.0) -> None:
        self.user, self.password, self.transport = user, password, transport
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        try:
            self.sock.settimeout(timeout)
            self.sock.bind((source, 0))
            self.server = (server, port)
            if transport == "tcp":
                self.sock.connect(self.server)
        except BaseException:
            self.sock.close()
            raise
        self.source = source
        self.port = self.sock.getsockname()[1]
        self.call_id = secrets.token_hex(8)
        self.cseq = 0
        self._buf = b""

    def __enter__(self) -> Phone:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def request(self, challenge: bytes | None = None, expires: int = 600) -> bytes:
        self.cseq += 1
        proto = self.transport.upper()
        lines = [
            f"REGISTER sip:{REALM} SIP/2.0",
            f"Via: SIP/2.0/{proto} {self.source}:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{REALM}>;tag={secrets.token_hex(4)}",
            f"To: <sip:{self.user}@{REALM}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} REGISTER",
            f"Contact: <sip:{self.user}@{self.source}:{self.port};transport={self.transport}>",
            f"Expires: {expires}",
        ]
        if challenge is not None:
            lines.append("Authorization: " + self._credentials(challenge))
        return ("\r\n".join(lines) + "\r\nContent-Length: 0\r\n\r\n").encode()

    def _credentials(self, challenge: bytes) -> str:
        m = re.search(rb'WWW-Authenticate: Digest realm="([^"]+)", nonce="([^"]+)", algorithm=MD5',
                      challenge)
        assert m, challenge
        realm, nonce = m.group(1).decode(), m.group(2).decode()
        uri = f"sip:{REALM}"
        r = response(ha1(self.user, realm, self.password, "MD5"), nonce, "REGISTER", uri, "MD5",
                     qop="auth", nc="00000001", cnonce="c0ffee")
        return (f'Digest username="{self.user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
                f'response="{r}", algorithm=MD5, qop=auth, nc=00000001, cnonce="c0ffee"')

    def exchange(self, data: bytes) -> bytes:
        if self.transport == "udp":
            self.sock.sendto(data, self.server)
            return self.sock.recv(65536)
        self.sock.sendall(data)
        return self.recv_message()

    def recv_message(self) -> bytes:
        """One framed message off the TCP stream (keep-alive CRLFs skipped)."""
        while True:
            self._buf = self._buf.lstrip(b"\r\n")
            end = self._buf.find(b"\r\n\r\n")
            if end >= 0:
                m = re.search(rb"\r\n(?:Content-Length|l)\s*:\s*(\d+)", self._buf[:end], re.I)
                total = end + 4 + (int(m.group(1)) if m else 0)
                if len(self._buf) >= total:
                    msg, self._buf = self._buf[:total], self._buf[total:]
                    return msg
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the server")
            self._buf += chunk

    def register(self, expires: int = 600) -> bytes:
        """The final answer to a REGISTER, after answering a challenge if one came."""
        first = self.exchange(self.request(expires=expires))
        if status_of(first) != 401:
            return first
        return self.exchange(self.request(first, expires=expires))

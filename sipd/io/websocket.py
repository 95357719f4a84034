"""SIP over WebSocket (RFC 7118), sans-IO on wsproto: an upgrade, then one SIP message per frame.

:class:`WsServer` is one accepted connection's WebSocket state. Bytes
from the stream go in (:meth:`WsServer.upgrade` until the HTTP upgrade is
settled, then :meth:`WsServer.feed`); what comes out is the bytes to send
back and, once upgraded, whole WebSocket messages, each of them exactly
one SIP message: unlike TCP there is no framing by Content-Length. A
message of only CRLFs is an RFC 5626 keep-alive, answered like one over
TCP. :meth:`WsServer.message` turns a SIP message of ours into a frame.

The upgrade must ask for the ``sip`` subprotocol (RFC 7118 §4.1): any
other request gets an HTTP error (400, or 426 for a WebSocket version we
do not speak) and the connection closes; so does a page from an Origin
that ``ws_allowed_origins`` does not name (403). A message over
``max_message_size``, a protocol error or a close ends the connection with
a close frame.

The transport (:mod:`sipd.io.transport`) owns the stream and the clock;
nothing here awaits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from sipd.sip.framing import Ping as SipPing
from sipd.sip.framing import Pong as SipPong

__all__ = ["SUBPROTOCOL", "Upgrade", "WsClosed", "WsServer"]

#: The subprotocol RFC 7118 registers for SIP.
SUBPROTOCOL = "sip"


class WsClosed(Exception):
    """The WebSocket connection is over: send ``reply`` (a close frame, maybe empty) and close."""

    def __init__(self, reason: str, reply: bytes = b"", *, normal: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.reply = reply
        #: The peer ended it as it may (a close frame, or the end of the stream).
        self.normal = normal


@dataclass
class Upgrade:
    """What one :meth:`WsServer.upgrade` call decided.

    ``done``: the upgrade is settled, accepted (``refused`` None) or
    refused (``refused`` says why, for the log; ``reply`` holds the HTTP
    error). ``reply``: bytes to send now (the 101 answer or the error).
    """

    done: bool = False
    reply: bytes = b""
    refused: str | None = None
    #: Messages that came in the same bytes as the upgrade request.
    frames: list[bytes] = field(default_factory=list)


def _http_error(ws: WSConnection, status: int, text: str,
                headers: list[tuple[bytes, bytes]] | None = None) -> bytes:
    body = (text + "\n").encode()
    head = [*(headers or []), (b"Content-Type", b"text/plain; charset=utf-8"),
            (b"Content-Length", str(len(body)).encode()), (b"Connection", b"close")]
    try:
        return ws.send(RejectConnection(status_code=status, headers=head, has_body=True)) + \
            ws.send(RejectData(data=body))
    except Exception:  # noqa: BLE001 - wsproto or h11 cannot answer now: close unanswered
        return b""


class WsServer:
    """The server end of one WebSocket connection carrying SIP."""

    def __init__(self, max_message_size: int, allowed_origins: tuple[str, ...] = ()) -> None:
        self.max_message_size = max_message_size
        self.allowed_origins = allowed_origins
        self._ws = WSConnection(ConnectionType.SERVER)
        self._parts: list[bytes] = []
        self._size = 0
        self.origin: str | None = None

    @property
    def pending(self) -> bool:
        """Part of a message has come, not all of it."""
        return bool(self._parts)

    # ------------------------------------------------------------ upgrade

    def upgrade(self, data: bytes) -> Upgrade:
        """Feed the bytes of the HTTP upgrade; b"" is the end of the stream."""
        ws = self._ws
        try:
            ws.receive_data(data if data else None)
            for event in ws.events():
                if isinstance(event, Request):
                    return self._answer(event)
        except RemoteProtocolError as exc:
            hint = exc.event_hint
            status = hint.status_code if isinstance(hint, RejectConnection) else 400
            headers = list(hint.headers) if isinstance(hint, RejectConnection) else []
            extra = [(k, v) for k, v in headers if k.lower() != b"content-length"]
            if status == 400 and b"upgrade" in str(exc).lower().encode():
                # A plain HTTP request: this resource speaks only WebSocket.
                status = 426
                extra.append((b"Upgrade", b"websocket"))
            return Upgrade(True, _http_error(ws, status, str(exc), extra), str(exc))
        except (UnicodeError, ValueError, LocalProtocolError) as exc:
            # wsproto trusts some header values (Host through the idna codec):
            # whatever it cannot read is a bad request, never a crash.
            why = f"unreadable upgrade request ({type(exc).__name__})"
            return Upgrade(True, _http_error(ws, 400, why), why)
        if not data:
            return Upgrade(True, b"", "closed before the upgrade")
        return Upgrade()

    def _answer(self, request: Request) -> Upgrade:
        ws = self._ws
        origin = next((v.decode("latin-1") for k, v in request.extra_headers
                       if k.lower() == b"origin"), None)
        self.origin = origin
        if self.allowed_origins and (origin is None
                                     or origin.rstrip("/").lower() not in self.allowed_origins):
            why = f"Origin {origin!r} is not in ws_allowed_origins" if origin else "no Origin"
            return Upgrade(True, _http_error(ws, 403, why), why)
        if not any(p.strip().lower() == SUBPROTOCOL for p in request.subprotocols):
            why = "the sip subprotocol is required (Sec-WebSocket-Protocol: sip)"
            return Upgrade(True, _http_error(ws, 400, why), why)
        reply = ws.send(AcceptConnection(subprotocol=next(
            p for p in request.subprotocols if p.strip().lower() == SUBPROTOCOL)))
        # Frames sent right behind the request are already in wsproto's buffer.
        try:
            frames, more = self._events()
        except WsClosed as closed:
            return Upgrade(True, reply + closed.reply, closed.reason)
        return Upgrade(True, reply + more, None, frames)

    # ------------------------------------------------------------ messages

    def feed(self, data: bytes) -> tuple[list[bytes], bytes]:
        """Bytes of the stream in; (whole SIP messages and keep-alives, bytes to send back).

        Keep-alives come as :class:`~sipd.sip.framing.Ping` or
        :class:`~sipd.sip.framing.Pong` values, as from the TCP framer.
        Raises :class:`WsClosed` when the connection must end (``data`` b"":
        the stream ended).
        """
        if not data:
            raise WsClosed("connection closed without a close frame", normal=True)
        try:
            self._ws.receive_data(data)
            return self._events()
        except LocalProtocolError:
            raise WsClosed("data after the close") from None
        except (UnicodeError, ValueError) as exc:
            raise WsClosed(f"unreadable frame ({type(exc).__name__})",
                           self._close(CloseReason.PROTOCOL_ERROR, "")) from None

    def _events(self) -> tuple[list[bytes], bytes]:
        frames: list[bytes] = []
        reply = b""
        ws = self._ws
        for event in ws.events():
            if isinstance(event, (TextMessage, BytesMessage)):
                raw = event.data.encode("utf-8") if isinstance(event, TextMessage) else \
                    bytes(event.data)
                self._size += len(raw)
                if self._size > self.max_message_size:
                    raise WsClosed(f"a message over max_message_size ({self.max_message_size})",
                                   reply + self._close(CloseReason.MESSAGE_TOO_BIG, "too big"))
                self._parts.append(raw)
                if event.message_finished:
                    message = b"".join(self._parts)
                    self._parts, self._size = [], 0
                    frames.append(_keepalive(message))
            elif isinstance(event, Ping):
                reply += ws.send(event.response())
            elif isinstance(event, Pong):
                continue
            elif isinstance(event, CloseConnection):
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    reply += ws.send(event.response())
                elif ws.state is ConnectionState.OPEN:
                    # A protocol error wsproto found: it leaves the close to us.
                    reply += self._close(event.code, event.reason or "")
                normal = event.code in (CloseReason.NORMAL_CLOSURE, CloseReason.GOING_AWAY)
                raise WsClosed(f"closed ({event.code}{': ' + event.reason if event.reason else ''})",
                               reply, normal=normal)
        return frames, reply

    def _close(self, code: int, reason: str) -> bytes:
        try:
            return self._ws.send(CloseConnection(code=code, reason=reason))
        except LocalProtocolError:
            return b""

    def message(self, data: bytes) -> bytes:
        """One SIP message (or keep-alive) of ours as a WebSocket frame.

        Text when it is UTF-8, as SIP messages nearly always are; binary
        otherwise (RFC 7118 §5.2 allows both). After the close, nothing.
        """
        if self._ws.state is not ConnectionState.OPEN:
            return b""
        try:
            return self._ws.send(TextMessage(data=data.decode("utf-8")))
        except UnicodeDecodeError:
            return self._ws.send(BytesMessage(data=data))

    def ping(self) -> bytes:
        """A ping of ours: any WebSocket peer answers it with a pong."""
        if self._ws.state is not ConnectionState.OPEN:
            return b""
        return self._ws.send(Ping(payload=b"sipd"))

    def close(self, code: int = CloseReason.GOING_AWAY, reason: str = "") -> bytes:
        """A close frame of ours (sipd closes the connection), or b"" when closing already."""
        if self._ws.state is not ConnectionState.OPEN:
            return b""
        return self._close(code, reason)


def _keepalive(message: bytes) -> bytes:
    """RFC 5626 keep-alives sent as messages: a double CRLF pings, one CRLF pongs."""
    if message.strip(b"\r\n"):
        return message
    return SipPing(message) if message == b"\r\n\r\n" else SipPong(message)

"""The WebSocket adapter, sans-IO: wsproto's own client on the other end of no socket."""

from __future__ import annotations

import pytest
from wsproto import ConnectionType, WSConnection
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

from sipd.io.websocket import WsClosed, WsServer
from sipd.sip.framing import Ping as SipPing
from sipd.sip.framing import Pong as SipPong

OPTIONS = b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n"


def client_request(subprotocols: list[str] | None = None, origin: str | None = None,
                   ) -> tuple[WSConnection, bytes]:
    client = WSConnection(ConnectionType.CLIENT)
    headers = [(b"Origin", origin.encode())] if origin else []
    data = client.send(Request(host="127.0.0.1", target="/", extra_headers=headers,
                               subprotocols=["sip"] if subprotocols is None else subprotocols))
    return client, data


def client_events(client: WSConnection, data: bytes) -> list[object]:
    client.receive_data(data)
    return list(client.events())


def upgraded(server: WsServer) -> WSConnection:
    client, data = client_request()
    up = server.upgrade(data)
    assert up.done and up.refused is None
    events = client_events(client, up.reply)
    assert isinstance(events[0], AcceptConnection) and events[0].subprotocol == "sip"
    return client


def test_an_upgrade_with_the_sip_subprotocol_is_accepted_and_messages_flow() -> None:
    server = WsServer(4096)
    client = upgraded(server)
    frames, reply = server.feed(client.send(TextMessage(data=OPTIONS.decode())))
    assert frames == [OPTIONS] and reply == b""
    # A binary message is a SIP message too; ours go back as text.
    frames, _ = server.feed(client.send(BytesMessage(data=OPTIONS)))
    assert frames == [OPTIONS]
    events = client_events(client, server.message(b"SIP/2.0 200 OK\r\n\r\n"))
    assert events == [TextMessage(data="SIP/2.0 200 OK\r\n\r\n")]
    # Bytes that are not UTF-8 go as binary.
    events = client_events(client, server.message(b"\xff\xfe"))
    assert events == [BytesMessage(data=bytearray(b"\xff\xfe"))]


def test_a_message_in_fragments_is_one_message_and_pending_meanwhile() -> None:
    server = WsServer(4096)
    client = upgraded(server)
    half = len(OPTIONS) // 2
    frames, _ = server.feed(client.send(TextMessage(data=OPTIONS[:half].decode(),
                                                    message_finished=False)))
    assert frames == [] and server.pending
    frames, _ = server.feed(client.send(TextMessage(data=OPTIONS[half:].decode())))
    assert frames == [OPTIONS] and not server.pending


def test_messages_sent_with_the_upgrade_request_are_not_lost() -> None:
    server = WsServer(4096)
    client, request = client_request()
    # A client that does not wait for the 101 (allowed once it is sure).
    up = server.upgrade(request)
    assert up.refused is None
    client_events(client, up.reply)
    assert server.feed(client.send(TextMessage(data=OPTIONS.decode())))[0] == [OPTIONS]


@pytest.mark.parametrize(("subprotocols", "origin", "allowed", "status"), [
    ([], None, (), 400),
    (["chat"], None, (), 400),
    (["sip"], "https://evil.example", ("https://phone.example",), 403),
    (["sip"], None, ("https://phone.example",), 403),
])
def test_refused_upgrades(subprotocols: list[str], origin: str | None,
                          allowed: tuple[str, ...], status: int) -> None:
    server = WsServer(4096, allowed)
    client, data = client_request(subprotocols, origin)
    up = server.upgrade(data)
    assert up.done and up.refused
    events = client_events(client, up.reply)
    assert isinstance(events[0], RejectConnection) and events[0].status_code == status
    assert any(isinstance(e, RejectData) for e in events)


def test_an_allowed_origin_passes_in_any_case() -> None:
    server = WsServer(4096, ("https://phone.example",))
    _, data = client_request(origin="HTTPS://Phone.Example")
    assert server.upgrade(data).refused is None


def test_plain_http_gets_426_and_garbage_400() -> None:
    up = WsServer(4096).upgrade(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert up.done and up.reply.startswith(b"HTTP/1.1 426 ")
    up = WsServer(4096).upgrade(b"\x16\x03\x01\x00\x05hello\r\n\r\n")
    assert up.done and up.reply.startswith(b"HTTP/1.1 400 ")


def test_a_partial_request_waits_and_the_end_of_stream_refuses() -> None:
    server = WsServer(4096)
    _, data = client_request()
    assert not server.upgrade(data[:10]).done
    up = server.upgrade(b"")
    assert up.done and up.refused


def test_an_oversize_message_closes_with_1009_even_in_fragments() -> None:
    server = WsServer(1024)
    client = upgraded(server)
    server.feed(client.send(TextMessage(data="a" * 600, message_finished=False)))
    with pytest.raises(WsClosed) as closed:
        server.feed(client.send(TextMessage(data="a" * 600)))
    assert "max_message_size" in closed.value.reason and not closed.value.normal
    events = client_events(client, closed.value.reply)
    assert isinstance(events[0], CloseConnection) and events[0].code == 1009


def test_ping_pong_close_and_keepalives() -> None:
    server = WsServer(4096)
    client = upgraded(server)
    _, reply = server.feed(client.send(Ping(payload=b"x")))
    assert client_events(client, reply) == [Pong(payload=bytearray(b"x"))]
    # RFC 5626 keep-alives as messages: the transport answers them like TCP's.
    frames, _ = server.feed(client.send(TextMessage(data="\r\n\r\n")))
    assert frames == [b"\r\n\r\n"] and isinstance(frames[0], SipPing)
    frames, _ = server.feed(client.send(TextMessage(data="\r\n")))
    assert isinstance(frames[0], SipPong)
    with pytest.raises(WsClosed) as closed:
        server.feed(client.send(CloseConnection(code=1000)))
    assert closed.value.normal
    assert isinstance(client_events(client, closed.value.reply)[0], CloseConnection)
    assert server.message(OPTIONS) == b""


def test_a_protocol_error_closes_and_the_end_of_stream_is_normal() -> None:
    server = WsServer(4096)
    upgraded(server)
    # An unmasked frame from a client is a protocol error (RFC 6455 §5.1).
    with pytest.raises(WsClosed) as closed:
        server.feed(b"\x81\x02hi")
    assert not closed.value.normal and closed.value.reply
    with pytest.raises(WsClosed) as ended:
        WsServer(4096).feed(b"")
    assert ended.value.normal


@pytest.mark.parametrize("host", [b"\xff\xfe", b"xn--zz"])
def test_an_unreadable_host_is_a_bad_request_not_an_exception(host: bytes) -> None:
    # wsproto reads Host through the idna codec, which raises on these.
    request = (b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: sip\r\n\r\n")
    up = WsServer(4096).upgrade(request)
    assert up.done and up.refused and up.reply.startswith(b"HTTP/1.1 400 ")

"""Listen forms for TLS and WebSocket, and the TLS and WebSocket settings' checks."""

from __future__ import annotations

import pytest

from sipd.config import ConfigError, build, check_values, parse_listen


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tls:127.0.0.1:5061", ["tls:127.0.0.1:5061"]),
        ("tls:0.0.0.0", ["tls:0.0.0.0:5061"]),
        ("TLS:[::1]", ["tls:[::1]:5061"]),
        ("tls:[::]:5071", ["tls:[::]:5071"]),
        ("ws:127.0.0.1:8080", ["ws:127.0.0.1:8080"]),
        ("wss:[::1]:8443", ["wss:[::1]:8443"]),
        ("WSS:0.0.0.0:443", ["wss:0.0.0.0:443"]),
        # The old forms mean what they meant.
        ("127.0.0.1:5060", ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]),
        ("tcp:127.0.0.1:5062", ["tcp:127.0.0.1:5062"]),
    ],
)
def test_listen_forms(text: str, expected: list[str]) -> None:
    assert [str(a) for a in parse_listen(text)] == expected


@pytest.mark.parametrize("text", [
    "ws:127.0.0.1",        # no default port for WebSocket
    "wss:[::1]",
    "udp:127.0.0.1",       # nor for UDP and TCP
    "tls:[::1",            # unclosed bracket
    "tls:[::1]x",
    "tls:::1",             # IPv6 without brackets
    "tls:localhost",       # names are not addresses to bind
    "tls:127.0.0.1:0",
    "sctp:127.0.0.1:5060",
])
def test_bad_listen_forms(text: str) -> None:
    with pytest.raises(ConfigError, match="bad listen address"):
        parse_listen(text)


def settings(**values: object) -> object:
    return build(check_values(dict(values), source="test"), {}, "test")


@pytest.mark.parametrize("listen", ["tls:127.0.0.1", "wss:127.0.0.1:8443"])
def test_a_secure_listener_needs_a_certificate_and_a_key(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"needs tls_certificate and tls_private_key"):
        settings(listen=[listen])
    with pytest.raises(ConfigError, match=r"needs tls_certificate and tls_private_key"):
        settings(listen=[listen], tls_certificate="/etc/ssl/sip.pem")
    assert settings(listen=[listen], tls_certificate="/etc/ssl/sip.pem",
                    tls_private_key="/etc/ssl/sip.key")


def test_ws_needs_no_certificate() -> None:
    assert settings(listen=["ws:127.0.0.1:8080"])


@pytest.mark.parametrize(("key", "value", "message"), [
    ("tls_certificate", "cert.pem", "must be an absolute path"),
    ("tls_private_key", 5, "must be a non-empty string"),
    ("tls_ca_certificates", "ca/bundle.pem", "must be an absolute path"),
    ("tls_verify_client", "yes", "must be one of no, optional, required"),
    ("ws_allowed_origins", ["phone.example.org"], "is not an origin"),
    ("ws_allowed_origins", ["https://phone.example.org/app"], "is not an origin"),
    ("ws_allowed_origins", "ftp://x", "is not an origin"),
])
def test_bad_tls_and_websocket_values(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_values({key: value}, source="test")


def test_origins_are_compared_as_browsers_send_them() -> None:
    values = check_values({"ws_allowed_origins": ["https://Phone.Example.org/",
                                                  "http://localhost:8080"]}, source="test")
    assert values["ws_allowed_origins"] == ("https://phone.example.org", "http://localhost:8080")


@pytest.mark.parametrize("listen", ["tls:127.0.0.1:9100", "ws:127.0.0.1:9100"])
def test_the_metrics_endpoint_cannot_take_a_stream_listeners_port(listen: str) -> None:
    extra = {"tls_certificate": "/c.pem", "tls_private_key": "/k.pem"}
    with pytest.raises(ConfigError, match="metrics_listen 127.0.0.1:9100 is taken"):
        settings(listen=[listen], metrics_listen="127.0.0.1:9100", **extra)
    assert settings(listen=["udp:127.0.0.1:9100"], metrics_listen="127.0.0.1:9100")

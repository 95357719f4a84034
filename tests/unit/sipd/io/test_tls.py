"""TLS contexts from the settings: what they accept, and a reload that fails changes nothing."""

from __future__ import annotations

import ssl
from dataclasses import replace
from pathlib import Path

import pytest

from sipd.config import ListenAddress, Settings
from sipd.io.tls import TlsContexts, TlsError, load_contexts
from tests.tlshelper import make_certs


def tls_settings(tmp: Path, **more: object) -> Settings:
    certs = make_certs(tmp)
    return replace(Settings(), listen=(ListenAddress("tls", "127.0.0.1", 5061),),
                   tls_certificate=str(certs.cert_file), tls_private_key=str(certs.key_file),
                   tls_ca_certificates=str(certs.ca_file), **more)  # type: ignore[arg-type]


def test_tls_1_2_at_least_and_client_certificates_as_configured(tmp_path: Path) -> None:
    tls = TlsContexts(tls_settings(tmp_path))
    assert tls.server is not None
    assert tls.server.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls.server.verify_mode == ssl.CERT_NONE
    for by_name in (True, False):
        client = tls.client(by_name=by_name)
        assert client.minimum_version == ssl.TLSVersion.TLSv1_2
        assert client.verify_mode == ssl.CERT_REQUIRED
        assert client.check_hostname is by_name
    required = TlsContexts(tls_settings(tmp_path / "r", tls_verify_client="required"))
    assert required.server is not None and required.server.verify_mode == ssl.CERT_REQUIRED
    optional = TlsContexts(tls_settings(tmp_path / "o", tls_verify_client="optional"))
    assert optional.server is not None and optional.server.verify_mode == ssl.CERT_OPTIONAL


def test_no_server_context_without_a_certificate() -> None:
    contexts = load_contexts(Settings())
    assert contexts.server is None
    assert contexts.by_name.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(("spoil", "message"), [
    ("key", "cannot use tls_certificate"),
    ("missing", "cannot read the TLS certificate or key"),
    ("ca", "cannot use tls_ca_certificates"),
])
def test_files_that_cannot_be_used_are_named(tmp_path: Path, spoil: str, message: str) -> None:
    settings = tls_settings(tmp_path / "good")
    other = make_certs(tmp_path / "other")
    if spoil == "key":
        settings = replace(settings, tls_private_key=str(other.key_file))
    elif spoil == "missing":
        settings = replace(settings, tls_certificate=str(tmp_path / "nothing.pem"))
    else:
        (tmp_path / "bad-ca.pem").write_text("not a certificate\n")
        settings = replace(settings, tls_ca_certificates=str(tmp_path / "bad-ca.pem"))
    with pytest.raises(TlsError, match=message):
        load_contexts(settings)


def test_a_reload_that_fails_keeps_the_contexts(tmp_path: Path) -> None:
    settings = tls_settings(tmp_path)
    tls = TlsContexts(settings)
    before = tls.server
    Path(settings.tls_private_key).write_text("garbage\n")
    assert tls.reload(settings) is False
    assert tls.server is before
    make_certs(tmp_path)  # a good pair again
    assert tls.reload(settings) is True
    assert tls.server is not before

"""TLS contexts for sipd's listeners and for the connections it opens (RFC 3261 §26, RFC 5630).

:class:`TlsContexts` owns the standard library's :class:`ssl.SSLContext`
objects: one for the ``tls:`` and ``wss:`` listeners, built from
``tls_certificate`` and ``tls_private_key``, and two for connections sipd
opens, which verify the server against ``tls_ca_certificates`` (or the
system's store) with the host name checked when the target is a name and
the chain alone when it is an address. TLS 1.2 is the least accepted.

SIGHUP builds new contexts from the files as they are then
(:meth:`TlsContexts.reload`); a handshake takes the context in force when
it starts, so connections already up keep theirs, and files that fail to
load leave the old contexts in force.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from sipd.config import SECURE_TRANSPORTS, Settings

__all__ = ["TlsContexts", "TlsError", "TlsFiles", "load_contexts"]

log = logging.getLogger("sipd.transport")

_VERIFY_CLIENT = {"no": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


class TlsError(Exception):
    """A certificate, key or CA file that cannot be used; the message is one line."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The settings the contexts are made of."""

    certificate: str
    private_key: str
    ca_certificates: str
    verify_client: str

    @classmethod
    def of(cls, settings: Settings) -> TlsFiles:
        return cls(settings.tls_certificate, settings.tls_private_key,
                   settings.tls_ca_certificates, settings.tls_verify_client)


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return str(exc.reason or exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _load_cas(ctx: ssl.SSLContext, files: TlsFiles, purpose: ssl.Purpose) -> None:
    if files.ca_certificates:
        try:
            ctx.load_verify_locations(cafile=files.ca_certificates)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"cannot use tls_ca_certificates {files.ca_certificates}: "
                           f"{_reason(exc)}") from None
    else:
        ctx.load_default_certs(purpose)


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The listeners' context (blocking: reads the files). Raises :class:`TlsError`."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # Renegotiation would let a client restart handshakes at will on a slot.
    ctx.options |= ssl.OP_NO_RENEGOTIATION
    for what, path in (("tls_certificate", files.certificate), ("tls_private_key", files.private_key)):
        if not path:
            raise TlsError(f"{what} is not set")
    try:
        ctx.load_cert_chain(files.certificate, files.private_key)
    except ssl.SSLError as exc:
        # KEY_VALUES_MISMATCH, PEM_LIB (not PEM, or a key with a passphrase).
        # Before OSError: ssl.SSLError is one.
        raise TlsError(f"cannot use tls_certificate {files.certificate} with tls_private_key "
                       f"{files.private_key}: {_reason(exc)}") from None
    except OSError as exc:
        path = exc.filename or f"{files.certificate} or {files.private_key}"
        raise TlsError(f"cannot read the TLS certificate or key {path}: {_reason(exc)}") from None
    ctx.verify_mode = _VERIFY_CLIENT[files.verify_client]
    if ctx.verify_mode != ssl.CERT_NONE:
        _load_cas(ctx, files, ssl.Purpose.CLIENT_AUTH)
    return ctx


def client_context(files: TlsFiles, *, check_hostname: bool) -> ssl.SSLContext:
    """A context for connections sipd opens: the server's certificate verified."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load_cas(ctx, files, ssl.Purpose.SERVER_AUTH)
    if files.certificate and files.private_key:
        # Servers that ask for a client certificate get ours.
        try:
            ctx.load_cert_chain(files.certificate, files.private_key)
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"cannot use the TLS certificate as a client: {_reason(exc)}") from None
    return ctx


@dataclass(frozen=True, slots=True)
class _Contexts:
    server: ssl.SSLContext | None
    by_name: ssl.SSLContext
    by_address: ssl.SSLContext


def load_contexts(settings: Settings) -> _Contexts:
    """Every context ``settings`` call for (blocking). Raises :class:`TlsError`.

    The listeners' context only when a ``tls:`` or ``wss:`` listener needs
    it, or when the certificate is set at all (so that a mistake in it is
    found at start, not at the first connection).
    """
    files = TlsFiles.of(settings)
    needed = any(a.transport in SECURE_TRANSPORTS for a in settings.listen)
    server = server_context(files) if needed or files.certificate or files.private_key else None
    return _Contexts(server, client_context(files, check_hostname=True),
                     client_context(files, check_hostname=False))


class TlsContexts:
    """The contexts in force; SIGHUP replaces them whole."""

    def __init__(self, settings: Settings) -> None:
        self._contexts = load_contexts(settings)
        self.files = TlsFiles.of(settings)

    @property
    def server(self) -> ssl.SSLContext | None:
        return self._contexts.server

    def client(self, *, by_name: bool) -> ssl.SSLContext:
        return self._contexts.by_name if by_name else self._contexts.by_address

    def reload(self, settings: Settings) -> bool:
        """Read the files again (blocking); False, logged, when they fail and the old stay."""
        try:
            self._contexts = load_contexts(settings)
        except TlsError as exc:
            log.error("TLS certificate not reloaded, the one in force stays: %s", exc)
            return False
        self.files = TlsFiles.of(settings)
        return True

"""HA1 values for HTTP/SIP digest authentication (RFC 7616 §3.4.2, RFC 8760).

HA1 = H(username ":" realm ":" password), hex-encoded in lower case, where H
is the digest algorithm's hash. Strings are encoded as UTF-8, the charset
RFC 7616 names and what phones use in practice. The ``-sess`` variants of
an algorithm start from the same HA1 and mix in the nonces per request, so
they are the protocol side's business, not the stored value's.
"""

from __future__ import annotations

import hashlib

__all__ = ["ALGORITHMS", "base_algorithm", "ha1", "hexdigest"]

#: Algorithm names as they appear in a digest challenge, with their hash.
ALGORITHMS: dict[str, str] = {"MD5": "md5", "SHA-256": "sha256"}


def base_algorithm(algorithm: str) -> str:
    """The canonical name ('MD5' or 'SHA-256') of ``algorithm``, ``-sess`` dropped.

    Case-insensitive, as RFC 7616 compares algorithm tokens. Raises
    ValueError for an algorithm we do not support.
    """
    name = algorithm.strip().upper()
    if name.endswith("-SESS"):
        name = name[: -len("-SESS")]
    if name not in ALGORITHMS:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return name


def hexdigest(algorithm: str, data: bytes) -> str:
    """H(data) in lower-case hex for a digest algorithm name."""
    return hashlib.new(ALGORITHMS[base_algorithm(algorithm)], data).hexdigest()


def ha1(user: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(user:realm:password) for ``algorithm`` ('MD5' or 'SHA-256')."""
    return hexdigest(algorithm, f"{user}:{realm}:{password}".encode())

"""What ``sipd`` and ``sippasswd`` must read alike in ``sipd.conf``: the realm and the group.

A password is stored for one realm (``~/.sr/passwd`` holds
``user:realm:HA1``) and checked against the realm sipd challenges with; if
the two commands picked the realm differently, ``sippasswd`` would report
success and the phone would never register. So the file is read, the two
values are checked and the default realm is chosen here, once, for both:
srfs never imports sipd, and sipd validates its other settings on top of
this (:mod:`sipd.config`).

The default realm is the host's fully qualified name, which asks the
resolver: :func:`host_realm` may block for as long as DNS takes, so sipd
calls it once at start, never while serving.
"""

from __future__ import annotations

import errno
import os
import socket
import tomllib
from typing import Any

from srfs.accounts.passwd import check_realm

__all__ = [
    "DEFAULT_GROUP",
    "DEFAULT_PATH",
    "ConfigError",
    "check_string",
    "effective_realm",
    "host_realm",
    "read_file",
    "realm_setting",
]

DEFAULT_PATH = "/etc/sipd/sipd.conf"
DEFAULT_GROUP = "sip"


class ConfigError(Exception):
    """A setting or a file that cannot be used; the message is one line for the user."""


def read_file(path: str, *, required: bool) -> dict[str, Any]:
    """The TOML table in ``path``; ``{}`` when an optional file does not exist.

    A file that exists but cannot be read or parsed is an error even when
    it is optional: falling back to defaults would quietly use another realm.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        if required:
            raise ConfigError(f"cannot read {path}: No such file or directory") from None
        return {}
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno == errno.EISDIR:
            reason = "Is a directory"
        raise ConfigError(f"cannot read {path}: {reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def check_string(name: str, value: Any) -> str:
    """A non-empty string setting, without surrounding spaces."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty string, not {value!r}")
    return value.strip()


def realm_setting(value: Any) -> str:
    """A realm given in the file or on a command line, checked.

    It must fit in ``~/.sr/passwd``: a realm nobody can hold a password
    for would refuse every user.
    """
    realm = check_string("realm", value)
    problem = check_realm(realm)
    if problem:
        raise ConfigError(problem)
    return realm


def host_realm() -> str:
    """The default realm: the host's FQDN, else its name. Blocking (DNS)."""
    return socket.getfqdn() or socket.gethostname() or "localhost"


def effective_realm(configured: str | None) -> str:
    """The realm in use: the one configured, else :func:`host_realm`."""
    return configured or host_realm()

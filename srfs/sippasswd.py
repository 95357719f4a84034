"""``sippasswd``: set or remove a user's SIP digest password in ``~/.sr/passwd``.

Works the same whether run by root for any user or by a user for
themselves: all file access goes through :mod:`srfs.files.home`, which acts with
the user's own file permissions in their home either way. It does not ask
for the old password: anyone running as the user can already write their
``~/.sr``, so asking would protect nothing.
"""

from __future__ import annotations

import argparse
import errno
import functools
import getpass
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from srfs import sipdconf
from srfs.accounts import passwd, users
from srfs.files import home
from srfs.user import User

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_GROUP",
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PASSWORD",
    "EXIT_UNKNOWN_USER",
    "EXIT_USAGE",
    "main",
]

PROG = "sippasswd"
DEFAULT_CONFIG = sipdconf.DEFAULT_PATH
DEFAULT_GROUP = sipdconf.DEFAULT_GROUP
PASSWD_FILE = "passwd"
#: Longest password accepted, in UTF-8 bytes.
MAX_PASSWORD = 1024

# Exit statuses, documented in sippasswd(1).
EXIT_OK = 0
EXIT_FAILURE = 1  # config file, home or ~/.sr unusable, I/O error
EXIT_USAGE = 2  # bad options; a user naming someone else
EXIT_UNKNOWN_USER = 3
EXIT_PASSWORD = 4  # empty, mismatched, unreadable or too long password
EXIT_INTERRUPTED = 130


class _Fail(Exception):
    """Stop with a one-line message and an exit status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _fail(status: int, message: str) -> NoReturn:
    raise _Fail(status, message)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Set or remove a user's SIP digest password in ~/.sr/passwd.",
    )
    p.add_argument("user", nargs="?", metavar="USER", help="whose password (default: yours)")
    p.add_argument(
        "-r", "--realm", help="digest realm (default: from the config file, else the FQDN)"
    )
    p.add_argument(
        "-g", "--group", help=f"the SIP group (default: from the config file, else {DEFAULT_GROUP})"
    )
    p.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        help=f"sipd configuration file (default: {DEFAULT_CONFIG})",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--stdin", action="store_true", help="read the password from one line of standard input"
    )
    mode.add_argument(
        "--delete", action="store_true", help="remove the user's password for the realm"
    )
    return p


class _Config:
    """The config file, read at most once and only when a value is needed from it.

    Its realm and group pass the checks sipd gives them (:mod:`srfs.sipdconf`);
    sipd's other settings are sipd's business.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.name = path or DEFAULT_CONFIG
        self._data: dict[str, Any] | None = None

    def value(self, key: str, check: Callable[[Any], str]) -> str | None:
        """The file's ``key`` as ``check`` returns it; None when the file does not set it."""
        if self._data is None:
            try:
                # The default file is optional; a file named with -c must exist.
                self._data = sipdconf.read_file(self.name, required=self.path is not None)
            except sipdconf.ConfigError as e:
                _fail(EXIT_FAILURE, str(e))
        raw = self._data.get(key)
        if raw is None:
            return None
        try:
            return check(raw)
        except sipdconf.ConfigError as e:
            _fail(EXIT_FAILURE, f"{self.name}: {e}")


def _realm(args: argparse.Namespace, config: _Config) -> str:
    """The realm as sipd would use it: -r, else the config file's, else the host's."""
    if args.realm is not None:
        try:
            return sipdconf.realm_setting(args.realm)
        except sipdconf.ConfigError as e:
            _fail(EXIT_USAGE, str(e))
    try:
        configured = config.value("realm", sipdconf.realm_setting)
    except _Fail as e:
        _fail(e.status, f"{e.message}; give the realm with -r")
    return sipdconf.effective_realm(configured)


def _group(args: argparse.Namespace, config: _Config) -> str | None:
    """The SIP group, or None when the config file that names it cannot be read."""
    if args.group:
        return str(args.group)
    try:
        group = config.value("group", functools.partial(sipdconf.check_string, "group"))
    except _Fail as e:
        # The group only feeds a warning: not a reason to refuse the change.
        _warn(f"{e.message}; group membership not checked")
        return None
    return group or DEFAULT_GROUP


def _target(args: argparse.Namespace) -> User:
    uid = os.getuid()
    if args.user is None:
        me = users.lookup_uid(uid)
        if me is None:
            _fail(EXIT_UNKNOWN_USER, f"uid {uid} has no user name")
        return me
    user = users.lookup(args.user)
    if user is None:
        _fail(EXIT_UNKNOWN_USER, f"unknown user {args.user!r}")
    if uid != 0 and user.uid != uid:
        _fail(EXIT_USAGE, "only root may change another user's SIP password")
    return user


def _read_password(use_stdin: bool, user: User, realm: str) -> str:
    if use_stdin:
        raw = sys.stdin.buffer.readline(MAX_PASSWORD + 2)
        if not raw:
            _fail(EXIT_PASSWORD, "no password on standard input")
        if raw.endswith(b"\n"):
            raw = raw[:-1]
            if raw.endswith(b"\r"):
                raw = raw[:-1]
        elif len(raw) > MAX_PASSWORD:
            _fail(EXIT_PASSWORD, f"password longer than {MAX_PASSWORD} bytes")
        try:
            password = raw.decode("utf-8")
        except UnicodeDecodeError:
            _fail(EXIT_PASSWORD, "password is not valid UTF-8")
    else:
        if not sys.stdin.isatty():
            _fail(EXIT_PASSWORD, "standard input is not a terminal; use --stdin in scripts")
        try:
            password = getpass.getpass(f"New SIP password for {user.name} (realm {realm}): ")
            again = getpass.getpass("Retype new SIP password: ")
        except EOFError:
            _fail(EXIT_PASSWORD, "no password entered")
        except UnicodeError:
            _fail(EXIT_PASSWORD, "password is not valid UTF-8")
        if password != again:
            _fail(EXIT_PASSWORD, "passwords differ; nothing changed")
    if not password:
        _fail(EXIT_PASSWORD, "empty password; nothing changed")
    try:
        size = len(password.encode("utf-8"))
    except UnicodeError:
        _fail(EXIT_PASSWORD, "password is not valid UTF-8")
    if size > MAX_PASSWORD:
        _fail(EXIT_PASSWORD, f"password longer than {MAX_PASSWORD} bytes")
    return password


def _check_membership(user: User, group: str) -> None:
    if not users.group_exists(group):
        _warn(f"group {group!r} does not exist; sipd accepts only its members")
    elif not users.is_sip_member(user, group):
        _warn(
            f"{user.name} is not in group {group!r}; sipd will refuse them until: "
            f"usermod -aG {group} {user.name}"
        )


def _update(user: User, realm: str, password: str | None) -> bool:
    """Write the new passwd file; False when --delete found nothing to delete."""
    label = f"~{user.name}/{home.SR_DIR}/{PASSWD_FILE}"
    try:
        sr = home.SrDir.open(user, create=password is not None)
    except home.HomeError as e:
        if password is None and e.errno == errno.ENOENT:
            return False
        raise
    with sr, sr.lock():
        pf = passwd.parse(sr.read(PASSWD_FILE) or b"")
        for problem in pf.problems:
            _warn(f"{label} {problem} (kept as it is)")
        if password is None:
            if pf.find(user.name, realm) is None:
                return False
            text = pf.delete(user.name, realm)
        else:
            text = pf.set(user.name, realm, password)
        sr.write(PASSWD_FILE, passwd.encode(text), fsync=True, mode=0o600)
    return True


def _run(args: argparse.Namespace) -> int:
    user = _target(args)
    config = _Config(args.config)
    realm = _realm(args, config)
    if passwd.check_user(user.name):
        _fail(EXIT_FAILURE, f"user name {user.name!r} cannot be stored in {PASSWD_FILE}")
    if args.delete:
        if _update(user, realm, None):
            print(f"password for {user.name} in realm {realm} removed")
        else:
            _warn(f"{user.name} has no password for realm {realm}; nothing removed")
        return EXIT_OK
    group = _group(args, config)
    # Before the prompt, so the administrator reads it before typing.
    if group is not None:
        _check_membership(user, group)
    password = _read_password(args.stdin, user, realm)
    _update(user, realm, password)
    print(f"password for {user.name} in realm {realm} updated")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except _Fail as e:
        print(f"{PROG}: {e.message}", file=sys.stderr)
        return e.status
    except home.HomeError as e:
        print(f"{PROG}: {e.reason}", file=sys.stderr)
        return EXIT_FAILURE
    except users.DirectoryUnavailable as e:
        # Not EXIT_UNKNOWN_USER: the user may well exist.
        print(f"{PROG}: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a traceback helps nobody who runs a password tool
        print(f"{PROG}: unexpected error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())

"""Fake UNIX users for tests, without touching /etc (nss_wrapper + pam_wrapper).

``fake_unix()`` builds a throw-away directory with ``passwd``, ``group``
and ``shadow`` files, a home per user owned by that user's (real, numeric) uid, and a
``pam.d`` directory holding a ``sipd`` service; it yields a
:class:`FakeUnix` whose ``env`` runs a *new* process under the wrappers
(they are preloaded libraries, so they never apply to the test process
itself). Everything is removed on exit, whatever happened.

Use it from a test module with a fixture of your own::

    @pytest.fixture
    def unix() -> Iterator[FakeUnix]:
        with fake_unix() as u:
            yield u

Needs root (homes are chowned to the fake uids and ``setpriv`` switches to
them) and Debian's libnss-wrapper and libpam-wrapper; the context manager
skips the test with the reason when something is missing. The wrappers'
pitfalls are worked around, with the reason, where they bite: a launcher
kept out of the wrappers (:meth:`FakeUnix.command`), ``*`` passwords, the
deep-bind switch and libpam loaded by name (:func:`fake_unix`).
"""

from __future__ import annotations

import ctypes.util
import grp
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from srfs.user import User

REPO = Path(__file__).resolve().parent.parent
FIRST_UID = 60001
FIRST_GID = 60100
PRELOAD = "libnss_wrapper.so:libpam_wrapper.so"

#: The account stack of the pam/sipd file shipped in the repository.
SHIPPED_PAM_SERVICE = REPO / "pam" / "sipd"


@dataclass(frozen=True)
class UserSpec:
    """A fake user: ``primary`` names the primary group (default: a group of its own)."""

    name: str
    groups: tuple[str, ...] = ()
    primary: str | None = None


#: alice is in "sip" as a supplementary group, bob has it as primary group,
#: carol is not in it.
DEFAULT_USERS: tuple[UserSpec, ...] = (
    UserSpec("alice", groups=("sip",)),
    UserSpec("bob", primary="sip"),
    UserSpec("carol"),
)

#: The test "sipd" PAM service: the shipped file's stack.
DEFAULT_PAM_SERVICE = (
    "account required pam_unix.so\n"
    "account required pam_succeed_if.so user ingroup sip quiet\n"
    "auth required pam_deny.so\n"
)


@dataclass(frozen=True)
class FakeUser:
    name: str
    uid: int
    gid: int
    home: Path
    groups: tuple[str, ...]

    @property
    def user(self) -> User:
        """The same user as srfs.accounts.users would report it under the wrappers."""
        return User(self.name, self.uid, self.gid, str(self.home))


@dataclass
class FakeUnix:
    root: Path
    passwd: Path
    group: Path
    pamd: Path
    users: dict[str, FakeUser]
    gids: dict[str, int]
    env: dict[str, str] = field(default_factory=dict)
    python: str = sys.executable
    shadow: Path | None = None

    def __getitem__(self, name: str) -> FakeUser:
        return self.users[name]

    @staticmethod
    def _replace(path: Path, text: str, mode: int) -> None:
        # As usermod and gpasswd do: a new file renamed over the old one.
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(3)}")
        tmp.write_text(text)
        tmp.chmod(mode)
        tmp.replace(path)

    def set_shadow(self, name: str, password: str = "*", expire: int | None = None) -> None:
        """``name``'s shadow entry: ``!...`` is locked, ``expire`` a day number (1: expired)."""
        assert self.shadow is not None
        lines = [line for line in self.shadow.read_text().splitlines()
                 if line.split(":", 1)[0] != name]
        day = "" if expire is None else str(expire)
        lines.append(f"{name}:{password}:19000:0:99999:7::{day}:")
        self._replace(self.shadow, "\n".join(lines) + "\n", 0o640)

    def set_groups(self, name: str, groups: Sequence[str]) -> None:
        """``name``'s supplementary groups become ``groups`` (as ``gpasswd -d`` and ``-a``)."""
        out = []
        for line in self.group.read_text().splitlines():
            gname, pw, gid, members = line.split(":", 3)
            names = [m for m in members.split(",") if m and m != name]
            if gname in groups:
                names.append(name)
            out.append(f"{gname}:{pw}:{gid}:{','.join(names)}")
        self._replace(self.group, "\n".join(out) + "\n", 0o644)

    def add_pam_service(self, name: str, text: str) -> Path:
        path = self.pamd / name
        path.write_text(text)
        path.chmod(0o644)
        return path

    def command(
        self, argv: Sequence[str], launcher: Sequence[str] = ()
    ) -> tuple[list[str], dict[str, str]]:
        """The command line and environment to run ``argv`` under the wrappers.

        A ``launcher`` (setpriv, setsid) is kept out of the wrappers and
        hands them to ``argv`` through env(1): pam_wrapper sets up a
        /tmp/pam.X directory in every process it is loaded into and removes
        it only at exit, which a launcher that execs never reaches.
        """
        if not launcher:
            return list(argv), dict(self.env)
        env = {k: v for k, v in self.env.items() if k != "LD_PRELOAD"}
        return [*launcher, "env", f"LD_PRELOAD={PRELOAD}", *argv], env

    def as_user_launcher(self, name: str) -> list[str]:
        u = self.users[name]
        return ["setpriv", f"--reuid={u.uid}", f"--regid={u.gid}", "--clear-groups", "--"]

    def run(
        self,
        argv: Sequence[str],
        *,
        as_user: str | None = None,
        input: str | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` under the wrappers, as root or as a fake user (setpriv)."""
        launcher = self.as_user_launcher(as_user) if as_user is not None else []
        cmd, env = self.command(argv, launcher)
        if as_user is not None:
            u = self.users[as_user]
            env.update(HOME=str(u.home), USER=u.name, LOGNAME=u.name)
        # run() kills the child when the timeout expires: no process is left.
        return subprocess.run(
            cmd,
            env=env,
            cwd=self.root,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def interpreter(self, as_user: str | None = None) -> str:
        """The Python to run srfs with, as root or as a fake user (skips if none)."""
        if as_user is None:
            return self.python
        found = _python_usable_by(self, as_user)
        if found is None:
            pytest.skip("no Python >= 3.11 that an unprivileged user can run with srfs importable")
        return found

    def sippasswd(
        self, *args: str, as_user: str | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``python -m srfs.sippasswd ARGS`` under the wrappers."""
        python = self.interpreter(as_user)
        return self.run([python, "-m", "srfs.sippasswd", *args], as_user=as_user, input=input)

    def python_json(self, code: str, *, as_user: str | None = None) -> object:
        """Run Python ``code`` that prints one JSON value; return the value."""
        proc = self.run([self.interpreter(as_user), "-c", code], as_user=as_user)
        if proc.returncode != 0:
            raise AssertionError(f"child failed ({proc.returncode}): {proc.stderr}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def account_check(
        self, user: str, service: str = "sipd", rhost: str | None = None
    ) -> tuple[int, str]:
        """srfs.accounts.pamcheck.account_check in a child under pam_wrapper."""
        code = (
            "import json\nfrom srfs.accounts.pamcheck import account_check\n"
            f"print(json.dumps(account_check({user!r}, {service!r}, {rhost!r})))\n"
        )
        result = self.python_json(code)
        assert isinstance(result, list) and len(result) == 2, result
        return int(result[0]), str(result[1])


def skip_reason() -> str | None:
    """Why fake users cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root: fake users' homes are chowned to their uids"
    for lib in ("nss_wrapper", "pam_wrapper"):
        if ctypes.util.find_library(lib) is None:
            return f"lib{lib}.so not found (Debian package lib{lib.replace('_', '-')})"
    if shutil.which("setpriv") is None:
        return "setpriv not found (util-linux)"
    return None


def _unused_ids(first: int, count: int, taken: set[int]) -> list[int]:
    found: list[int] = []
    candidate = first
    while len(found) < count:
        if candidate not in taken and not _host_id_exists(candidate):
            found.append(candidate)
        candidate += 1
    return found


def _host_id_exists(n: int) -> bool:
    # Runs in the test process, so this asks the host's real NSS.
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(n)
            return True
        except KeyError:
            pass
    return False


# The answer is the same for every unprivileged uid, so it is found once.
_python_cache: list[str | None] = []


def _python_usable_by(unix: FakeUnix, name: str) -> str | None:
    """A Python >= 3.11 that an unprivileged uid can run with srfs importable."""
    if _python_cache:
        return _python_cache[0]
    # The venv's interpreter may live under /root (pyenv), out of reach for
    # other users; Debian's python3 runs srfs from the source tree instead.
    for candidate in (sys.executable, "/usr/bin/python3"):
        if not os.path.exists(candidate):
            continue
        cmd, env = unix.command(
            [
                candidate,
                "-c",
                "import sys, tomllib, srfs.sippasswd; assert sys.version_info >= (3, 11)",
            ],
            unix.as_user_launcher(name),
        )
        proc = subprocess.run(
            cmd, env=env, cwd=unix.root, capture_output=True, timeout=30, check=False
        )
        if proc.returncode == 0:
            _python_cache.append(candidate)
            return candidate
    _python_cache.append(None)
    return None


@contextmanager
def fake_unix(
    users: Sequence[UserSpec] = DEFAULT_USERS,
    groups: Sequence[str] = ("sip",),
    pam_service: str | None = DEFAULT_PAM_SERVICE,
) -> Iterator[FakeUnix]:
    """Build fake users, homes and a PAM service dir; remove them all on exit."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="srfs-unix-"))
    try:
        # Fake users must be able to reach their homes and read the files.
        root.chmod(0o755)
        uids = _unused_ids(FIRST_UID, len(users), set())
        group_names = list(dict.fromkeys([*groups, *(g for s in users for g in s.groups)]))
        extra_gids = _unused_ids(FIRST_GID, len(group_names), set(uids))
        gids: dict[str, int] = dict(zip(group_names, extra_gids, strict=True))
        members: dict[str, list[str]] = {g: [] for g in gids}
        homes = root / "home"
        homes.mkdir(mode=0o755)
        homes.chmod(0o755)
        fakes: dict[str, FakeUser] = {}
        # root's home is in the sandbox too: a sippasswd run as root for
        # itself must not write into the real /root.
        root_home = homes / "root"
        root_home.mkdir(mode=0o700)
        passwd_lines = [f"root:*:0:0:root:{root_home}:/bin/sh"]
        group_lines = ["root:x:0:"]
        for spec, uid in zip(users, uids, strict=True):
            if spec.primary is None:
                gid = uid
                group_lines.append(f"{spec.name}:x:{gid}:")
            else:
                gid = gids[spec.primary]
            for g in spec.groups:
                members[g].append(spec.name)
            home = homes / spec.name
            home.mkdir(mode=0o700)
            os.chown(home, uid, gid)
            home.chmod(0o700)
            # "*" in the password field: pam_unix then needs no shadow entry
            # (its setgid helper would ignore the wrappers).
            passwd_lines.append(f"{spec.name}:*:{uid}:{gid}:{spec.name}:{home}:/bin/sh")
            fakes[spec.name] = FakeUser(spec.name, uid, gid, home, spec.groups)
        for g, gid in gids.items():
            group_lines.append(f"{g}:x:{gid}:{','.join(members[g])}")
        passwd = root / "passwd"
        group = root / "group"
        shadow = root / "shadow"
        passwd.write_text("\n".join(passwd_lines) + "\n")
        group.write_text("\n".join(group_lines) + "\n")
        # Read by sipd's locked-account check through nss_wrapper's
        # getspnam; "*" is neither locked nor a password.
        shadow.write_text("".join(f"{name}:*:19000:0:99999:7:::\n" for name in fakes))
        passwd.chmod(0o644)
        group.chmod(0o644)
        shadow.chmod(0o640)
        pamd = root / "pam.d"
        pamd.mkdir(mode=0o755)
        pamd.chmod(0o755)
        env = dict(os.environ)
        env.update(
            LD_PRELOAD=PRELOAD,
            NSS_WRAPPER_PASSWD=str(passwd),
            NSS_WRAPPER_GROUP=str(group),
            NSS_WRAPPER_SHADOW=str(shadow),
            PAM_WRAPPER="1",
            PAM_WRAPPER_SERVICE_DIR=str(pamd),
            # pam_wrapper 1.1.4 reads this (sic) name; without it the PAM
            # modules, opened with RTLD_DEEPBIND, see the real passwd file.
            UID_WRAPPER_DISABLE_DEEPBIND="1",
            # libpam loaded by name so the wrapper's symbols are the ones used.
            SRFS_LIBPAM="libpam_wrapper.so",
            PYTHONPATH=str(REPO),
            PYTHONDONTWRITEBYTECODE="1",
            LC_ALL="C.UTF-8",
        )
        unix = FakeUnix(root, passwd, group, pamd, fakes, gids, env, shadow=shadow)
        if pam_service is not None:
            unix.add_pam_service("sipd", pam_service)
        yield unix
    finally:
        remove_stale_pam_dirs(root / "pam.d")
        shutil.rmtree(root, ignore_errors=True)


#: Where pam_wrapper makes each process's copy of the service directory.
PAM_WRAPPER_DIRS = Path("/tmp")


def own_stderr(text: str) -> str:
    """``text`` (a child's stderr) without the lines the wrappers write themselves.

    nss_wrapper reports a file it cannot open (``NWRAP_ERROR...``). pam_wrapper
    picks its /tmp/pam.X directory with an lstat and then a mkdir, so two
    processes that start at the same instant (one in each of make test's
    lanes) can pick the same one, and the loser says so (``pwrap_init:
    Failed to create pam_wrapper config dir: ... File exists``) and goes on.
    Neither line is the program's.
    """
    return "".join(
        line for line in text.splitlines(keepends=True)
        if not line.startswith(("NWRAP_", "pwrap_"))
    )


def remove_stale_pam_dirs(pamd: Path) -> list[Path]:
    """Remove pam_wrapper's ``pam.X`` copies of ``pamd`` left by processes that ended.

    pam_wrapper removes its directory in a library destructor, which a
    process ended by a signal (a timeout's kill, a terminal's hang-up)
    never runs. Only a directory whose every service file is one of
    ``pamd``'s, and whose pid file names no running process, is ours to
    remove. Returns what was removed.
    """
    try:
        ours = {p.name: p.read_bytes() for p in pamd.iterdir()}
    except OSError:
        return []
    removed = []
    for found in PAM_WRAPPER_DIRS.glob("pam.*"):
        try:
            pid = int((found / "pid").read_text())
            files = {p.name: p.read_bytes() for p in found.iterdir() if p.name != "pid"}
        except (OSError, ValueError):
            continue
        if not files or any(ours.get(name) != data for name, data in files.items()):
            continue
        try:
            os.kill(pid, 0)
            continue  # still running: it removes its own at exit
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        shutil.rmtree(found, ignore_errors=True)
        removed.append(found)
    return removed


def give_passwords(unix: FakeUnix, realm: str, names: Sequence[str]) -> dict[str, str]:
    """A fresh random password for each of ``names``, set with sippasswd."""
    out = {}
    for name in names:
        pw = f"pw-{name}-{secrets.token_hex(3)}"
        r = unix.sippasswd("-r", realm, "--stdin", name, input=pw + "\n")
        assert r.returncode == 0, r.stderr
        out[name] = pw
    return out

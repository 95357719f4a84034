"""A failing user database is never an unknown user.

What makes ``getpwnam_r`` fail, found by trying (each case below runs it):

- nss_wrapper: a passwd or group path that cannot be opened for a reason
  other than "missing". A symlink loop gives ELOOP on every call; the
  wrapper reopens the file when the one it holds was replaced, so a daemon
  that started on a good file fails from its next lookup on. (A missing
  file gives ENOENT, which the wrapper also returns for "no such user".)
- glibc's files backend: a process out of descriptors gets EMFILE, for a
  name that exists and for one that does not alike.

Every check runs in a child process: the wrappers are preloaded libraries
and never apply to the test process itself.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.phone import REALM, Phone
from tests.sipclient import SIPD, Daemon, free_port, running_sipd, status_of, wait_for
from tests.unixusers import REPO, FakeUnix, fake_unix, give_passwords


@pytest.fixture(scope="module")
def unix() -> Iterator[FakeUnix]:
    """Users of this module only: the tests break their passwd and group files."""
    with fake_unix() as u:
        yield u


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("alice", "bob"))


# Each check prints one JSON line: what came back, or the errno of the
# DirectoryUnavailable raised.
_PROBE = """
import json, sys
from srfs.accounts import users
from srfs.accounts.directory import Directory
from srfs.user import User
from sipd.proxy.users import HomeUsers

def run(f):
    try:
        value = f()
    except users.DirectoryUnavailable as exc:
        return {"errno": exc.errno, "text": str(exc)}
    if isinstance(value, User):
        return {"user": value.name, "home": value.home}
    if isinstance(value, list):
        return {"users": [u.name for u in value]}
    if isinstance(value, tuple):
        return {"found": value[0]}
    if value is not None and hasattr(value, "allowed"):
        return {"allowed": value.allowed}
    return {"value": value}

alice = User("alice", int(sys.argv[1]), int(sys.argv[2]), "/")
checks = {
    "lookup alice": lambda: users.lookup("alice"),
    "lookup nobody": lambda: users.lookup("no-such-user"),
    "lookup_uid alice": lambda: users.lookup_uid(alice.uid),
    "group_exists sip": lambda: users.group_exists("sip"),
    "group_exists none": lambda: users.group_exists("no-such-group"),
    "is_sip_member alice": lambda: users.is_sip_member(alice, "sip"),
    "members sip": lambda: users.members("sip"),
    "account alice": lambda: Directory("r", "sip", None).account("alice"),
    "account nobody": lambda: Directory("r", "sip", None).account("no-such-user"),
    "find alice": lambda: HomeUsers("sip").find("alice"),
}
print(json.dumps({name: run(f) for name, f in checks.items()}))
"""


def probe(unix: FakeUnix, **env: str) -> dict[str, dict[str, object]]:
    alice = unix["alice"]
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(alice.uid), str(alice.gid)],
        env={**unix.env, **env}, cwd=unix.root, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


def loop(path: Path) -> Path:
    """A symlink to itself at ``path``: every open of it fails with ELOOP."""
    path.symlink_to(path.name)
    return path


def test_lookups_go_through_the_wrapper_and_tell_found_from_missing(unix: FakeUnix) -> None:
    got = probe(unix)
    # alice exists only in the wrapper's passwd file: the ctypes lookups
    # were interposed, not sent to the host's own NSS.
    assert got["lookup alice"] == {"user": "alice", "home": str(unix["alice"].home)}
    assert got["lookup_uid alice"]["user"] == "alice"
    assert got["lookup nobody"] == {"value": None}
    assert got["group_exists sip"] == {"value": True}
    assert got["group_exists none"] == {"value": False}
    assert got["is_sip_member alice"] == {"value": True}
    assert got["members sip"] == {"users": ["alice", "bob"]}
    assert got["account alice"] == {"allowed": True}
    assert got["account nobody"] == {"value": None}
    assert got["find alice"] == {"found": True}


def test_an_unreadable_passwd_database_raises_everywhere(unix: FakeUnix, tmp_path: Path) -> None:
    broken = loop(tmp_path / "passwd")
    got = probe(unix, NSS_WRAPPER_PASSWD=str(broken))
    for name in ("lookup alice", "lookup nobody", "lookup_uid alice", "members sip",
                 "account alice", "account nobody", "find alice"):
        assert got[name]["errno"] == errno.ELOOP, (name, got[name])
    assert "user database" in str(got["lookup alice"]["text"])


def test_an_unreadable_group_database_raises_everywhere(unix: FakeUnix, tmp_path: Path) -> None:
    broken = loop(tmp_path / "group")
    got = probe(unix, NSS_WRAPPER_GROUP=str(broken))
    assert got["lookup alice"]["user"] == "alice"
    for name in ("group_exists sip", "group_exists none", "is_sip_member alice", "members sip",
                 "account alice", "find alice"):
        assert got[name]["errno"] == errno.ELOOP, (name, got[name])


def test_sippasswd_says_the_user_database_failed_not_unknown_user(
        unix: FakeUnix, tmp_path: Path) -> None:
    broken = loop(tmp_path / "passwd")
    proc = subprocess.run(
        [sys.executable, "-m", "srfs.sippasswd", "-r", REALM, "--stdin", "alice"],
        env={**unix.env, "NSS_WRAPPER_PASSWD": str(broken)}, cwd=unix.root, input="pw\n",
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 1, proc
    # The lines before are the wrapper's own complaints.
    last = proc.stderr.splitlines()[-1]
    assert last == ("sippasswd: user database unavailable: getpwnam_r: "
                    "Too many levels of symbolic links"), proc.stderr


_OUT_OF_DESCRIPTORS = """
import json, os, resource
from srfs.accounts import nss, users
resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
out = {}
for name, f in (("root", lambda: users.lookup("root")),
                ("missing", lambda: users.lookup("no-such-user-srfs")),
                ("group", lambda: users.group_exists("root")),
                ("members", lambda: users.members("root")),
                ("enumeration", lambda: nss.all_passwd())):
    try:
        out[name] = repr(f())
    except users.DirectoryUnavailable as exc:
        out[name] = exc.errno
for fd in held:
    os.close(fd)
out["root after"] = users.lookup("root").name
out["missing after"] = repr(users.lookup("no-such-user-srfs"))
print(json.dumps(out))
"""


def test_out_of_descriptors_under_the_hosts_own_nss_raises_emfile() -> None:
    """glibc's files backend, no wrapper: EMFILE is an error, not "no such user"."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LD_PRELOAD", "NSS_WRAPPER"))}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-c", _OUT_OF_DESCRIPTORS], env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"root": errno.EMFILE, "missing": errno.EMFILE, "group": errno.EMFILE,
                   "members": errno.EMFILE, "enumeration": errno.EMFILE,
                   "root after": "root", "missing after": "None"}


# --- a running sipd ------------------------------------------------------------


def test_sipd_does_not_start_on_a_failing_user_database(unix: FakeUnix, tmp_path: Path) -> None:
    (tmp_path / "none.toml").write_text("")
    broken = loop(tmp_path / "group")
    proc = subprocess.run(
        [*SIPD, "-c", str(tmp_path / "none.toml"), "-l", f"127.0.0.1:{free_port()}",
         "--no-pam", "--no-mount", "-r", REALM],
        env={**unix.env, "NSS_WRAPPER_GROUP": str(broken)}, cwd=REPO,
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 1, proc
    assert proc.stderr.splitlines()[-1] == (
        "sipd: cannot start: user database unavailable: getgrnam_r: "
        "Too many levels of symbolic links"), proc.stderr


@pytest.fixture
def sipd(tmp_path: Path, unix: FakeUnix, passwords: dict[str, str]) -> Iterator[Daemon]:
    try:
        with running_sipd(tmp_path, unix=unix) as daemon:
            yield daemon
    finally:
        for name in ("alice", "bob"):
            (unix[name].home / ".sr" / "usrloc").unlink(missing_ok=True)


class BrokenFiles:
    """Replace the wrapper's passwd (and group) file with a symlink loop; put them back on exit.

    Every NSS call on a broken file fails with ELOOP, as a directory client
    fails when its server is out of reach.
    """

    def __init__(self, unix: FakeUnix, *, group: bool = False) -> None:
        self.paths = [unix.passwd, *([unix.group] if group else [])]
        self.saved = [path.read_bytes() for path in self.paths]

    def __enter__(self) -> BrokenFiles:
        # Unlinked, not rewritten: the wrapper sees the file it holds is gone
        # and reopens the path on the next lookup.
        for path in self.paths:
            path.unlink()
            loop(path)
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def restore(self) -> None:
        for path, saved in zip(self.paths, self.saved, strict=True):
            if path.is_symlink():
                path.unlink()
            fresh = path.with_name(path.name + ".new")
            fresh.write_bytes(saved)
            fresh.chmod(0o644)
            fresh.replace(path)


BrokenPasswd = BrokenFiles


def invite(port: int, user: str) -> bytes:
    """A call from another domain: no digest, so the proxy only looks the callee up."""
    tag, call_id, branch = secrets.token_hex(4), secrets.token_hex(8), secrets.token_hex(6)
    return (
        f"INVITE sip:{user}@{REALM} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:caller@example.org>;tag={tag}\r\n"
        f"To: <sip:{user}@{REALM}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:caller@127.0.0.1:{port}>\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def call(port: int, user: str) -> int:
    """The final status of a call to ``user`` (from a socket of its own: a 500 is retransmitted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind(("127.0.0.1", 0))
        sock.sendto(invite(sock.getsockname()[1], user), ("127.0.0.1", port))
        while True:
            status = status_of(sock.recv(65536))
            if status >= 200:
                return status


def header(message: bytes, name: str) -> str | None:
    for line in message.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        key, _, value = line.decode().partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


def test_register_while_the_user_database_fails_is_503_and_no_auth_failure(
        sipd: Daemon, unix: FakeUnix, passwords: dict[str, str]) -> None:
    # More attempts than the brute-force throttle allows failures (10):
    # had any counted, the last ones and the retries below would get 403.
    attempts = 12
    # Start-up's list of the group's members would serve alice's first
    # look-up without NSS (Directory.prime); SIGHUP forgets it, as it
    # forgets every account state, so this REGISTER asks the database.
    sipd.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "account states forgotten" in sipd.log, "the SIGHUP")
    with BrokenPasswd(unix) as broken:
        for _ in range(attempts):
            with Phone(sipd.port, "alice", passwords["alice"]) as phone:
                answer = phone.register()
            assert status_of(answer) == 503, answer[:200]
            assert b"User database unavailable" in answer.split(b"\r\n", 1)[0]
            assert header(answer, "Retry-After") == "30", answer
        broken.restore()
        with Phone(sipd.port, "alice", passwords["alice"]) as phone:
            assert status_of(phone.register()) == 200
    # After the outage a wrong password is what it always was: a 401.
    with Phone(sipd.port, "alice", "not-the-password") as phone:
        assert status_of(phone.register()) == 401
    log = sipd.log
    assert "auth throttl" not in log, log
    assert len(re.findall("auth failed", log)) == 1, log
    # The outage is logged when it begins and when it ends, not per request.
    began = re.findall(r"user database unavailable \(looking up user \"alice\": (.*)\)", log)
    assert len(began) == 1, log
    assert "Too many levels of symbolic links" in began[0]
    assert len(re.findall(rf"user database answers again after \d+ s \({attempts} request",
                          log)) == 1, log


def contacts_of(unix: FakeUnix, user: str) -> str:
    path = unix[user].home / ".sr" / "usrloc"
    return path.read_text() if path.exists() else ""


def test_a_registered_user_registers_and_is_saved_while_the_user_database_fails(
        sipd: Daemon, unix: FakeUnix, passwords: dict[str, str]) -> None:
    with Phone(sipd.port, "alice", passwords["alice"]) as first:
        assert status_of(first.register()) == 200
    with BrokenFiles(unix, group=True):
        # The account answer is remembered: the REGISTER needs no look-up,
        # and its save is written as the user it authenticated as.
        with Phone(sipd.port, "alice", passwords["alice"]) as second:
            assert status_of(second.register()) == 200
            assert f":{second.port};" in contacts_of(unix, "alice")
        # SIGHUP forgets the remembered answers: the last good one serves
        # while the directory fails, and bob, never seen, gets 503.
        sipd.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "account states forgotten" in sipd.log, "the SIGHUP")
        with Phone(sipd.port, "alice", passwords["alice"]) as third:
            assert status_of(third.register()) == 200
            assert f":{third.port};" in contacts_of(unix, "alice")
        with Phone(sipd.port, "bob", passwords["bob"]) as phone:
            answer = phone.register()
        assert status_of(answer) == 503 and header(answer, "Retry-After") == "30", answer
    log = sipd.log
    assert "cannot save" not in log and "auth failed" not in log, log


def test_a_call_while_the_user_database_fails_is_503_not_404(
        sipd: Daemon, unix: FakeUnix) -> None:
    with BrokenPasswd(unix):
        assert call(sipd.port, "alice") == 503
    # Once it answers again, an unknown name gets what any stranger gets
    # for a user who is not there.
    assert call(sipd.port, "no-such-user") == 480


def nss_calls(metrics: str, call: str) -> int:
    found = re.search(rf'^sipd_nss_calls_total{{call="{call}"}} (\d+)$', metrics, re.M)
    return int(found.group(1)) if found else 0


@pytest.mark.skipif(not os.path.exists("/dev/fuse") or os.geteuid() != 0,
                    reason="needs /dev/fuse and root to mount the state filesystem")
def test_the_tree_keeps_its_users_while_the_user_database_fails(
        tmp_path: Path, unix: FakeUnix, mnt: Path, passwords: dict[str, str]) -> None:
    conf = tmp_path / "fs.toml"
    # Re-reads every 5 s: the test counts them, whatever the default.
    conf.write_text(f'mount_enabled = true\nmount = "{mnt}"\nmember_refresh_interval = 5\n')
    with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True) as daemon:
        wait_for(lambda: (mnt / "alice").exists() and (mnt / "bob").exists(), "the mount")
        metrics = (mnt / "metrics").read_text()
        listed, groups = nss_calls(metrics, "all_passwd"), nss_calls(metrics, "getgrnam")
        assert listed >= 1, metrics
        # Two refreshes of the group (every 5 s) list no account.
        wait_for(lambda: nss_calls((mnt / "metrics").read_text(), "getgrnam") >= groups + 2,
                 "two refreshes of the group", timeout=20)
        assert nss_calls((mnt / "metrics").read_text(), "all_passwd") == listed
        with BrokenFiles(unix, group=True):
            wait_for(lambda: "cannot refresh the SIP group" in daemon.log,
                     "a refresh during the outage", timeout=15)
            assert {"alice", "bob"} <= set(os.listdir(mnt))
            # A directory client that times out answers "not found": the
            # group file missing is that answer, and it removes nobody either.
            unix.group.unlink()
            groups = nss_calls((mnt / "metrics").read_text(), "getgrnam")
            wait_for(lambda: nss_calls((mnt / "metrics").read_text(), "getgrnam") >= groups + 2,
                     "a refresh with the group missing", timeout=20)
            assert {"alice", "bob"} <= set(os.listdir(mnt))
        wait_for(lambda: "SIP group read again" in daemon.log, "the end of the outage",
                 timeout=15)
        assert {"alice", "bob"} <= set(os.listdir(mnt))
        log = daemon.log
    assert "left group" not in log, log
    assert log.count("cannot refresh the SIP group") == 1, log


_CALLEE_DURING_OUTAGE = """
import json, os, sys
from srfs.accounts import users
from sipd.proxy.users import HomeUsers

passwd = sys.argv[1]
found = HomeUsers("sip")
out = {"before": found.find("alice")[0]}
saved = open(passwd).read()
# Unlinked, not rewritten: the wrapper reopens the path once its file is gone.
os.unlink(passwd)
os.symlink(os.path.basename(passwd), passwd)
try:
    out["alice during"] = found.find("alice")[0]
    try:
        out["bob during"] = found.find("bob")[0]
    except users.DirectoryUnavailable as exc:
        out["bob during"] = exc.errno
finally:
    os.unlink(passwd)
    with open(passwd, "w") as f:
        f.write(saved)
    os.chmod(passwd, 0o644)
print(json.dumps(out))
"""


def test_a_callee_found_before_is_found_while_the_user_database_fails(unix: FakeUnix) -> None:
    saved = unix.passwd.read_bytes()
    try:
        proc = subprocess.run([sys.executable, "-c", _CALLEE_DURING_OUTAGE, str(unix.passwd)],
                              env=unix.env, cwd=unix.root, capture_output=True, text=True,
                              timeout=30)
    finally:
        if unix.passwd.is_symlink() or unix.passwd.read_bytes() != saved:
            unix.passwd.unlink(missing_ok=True)
            unix.passwd.write_bytes(saved)
            unix.passwd.chmod(0o644)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {"before": True, "alice during": True, "bob during": errno.ELOOP}

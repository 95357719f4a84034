"""sippasswd end to end: a child process under nss_wrapper with fake users, as root or as them."""

from __future__ import annotations

import os
import pty
import select
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from srfs.accounts import passwd
from srfs.accounts.digestcalc import ha1
from srfs.sippasswd import EXIT_FAILURE, EXIT_PASSWORD, EXIT_UNKNOWN_USER, EXIT_USAGE
from tests.unixusers import FakeUnix, fake_unix, own_stderr

REALM = "sip.example.org"


@pytest.fixture
def unix() -> Iterator[FakeUnix]:
    with fake_unix() as u:
        yield u


def passwd_path(unix: FakeUnix, name: str) -> Path:
    return unix[name].home / ".sr" / "passwd"


def assert_one_line_error(proc: subprocess.CompletedProcess[str], status: int, text: str) -> None:
    assert proc.returncode == status, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = own_stderr(proc.stderr).splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("sippasswd: ") and text in lines[0], lines[0]


def assert_owned_files(unix: FakeUnix, name: str) -> None:
    u = unix[name]
    sr = os.lstat(u.home / ".sr")
    assert stat.S_ISDIR(sr.st_mode) and stat.S_IMODE(sr.st_mode) == 0o700
    assert (sr.st_uid, sr.st_gid) == (u.uid, u.gid)
    pw = os.lstat(u.home / ".sr" / "passwd")
    assert stat.S_ISREG(pw.st_mode) and stat.S_IMODE(pw.st_mode) == 0o600
    assert (pw.st_uid, pw.st_gid) == (u.uid, u.gid)
    assert [n for n in os.listdir(u.home / ".sr") if n != "passwd"] == []  # no temp files


def stored(unix: FakeUnix, name: str) -> passwd.PasswdFile:
    return passwd.parse(passwd_path(unix, name).read_bytes())


# --- as root ---------------------------------------------------------------------


def test_stdin_sets_the_password(unix: FakeUnix) -> None:
    proc = unix.sippasswd("-r", REALM, "--stdin", "alice", input="s3cret pw\n")
    assert proc.returncode == 0, proc.stderr
    assert own_stderr(proc.stderr) == ""  # alice is in the group: no warning
    assert proc.stdout == f"password for alice in realm {REALM} updated\n"
    assert_owned_files(unix, "alice")
    pf = stored(unix, "alice")
    assert pf.problems == ()
    assert pf.lookup("alice", REALM, "MD5") == ha1("alice", REALM, "s3cret pw")
    assert pf.lookup("alice", REALM, "SHA-256") == ha1("alice", REALM, "s3cret pw", "SHA-256")


def test_second_run_replaces_and_keeps_other_lines(unix: FakeUnix) -> None:
    assert unix.sippasswd("-r", REALM, "--stdin", "alice", input="one\n").returncode == 0
    p = passwd_path(unix, "alice")
    other = f"alice:other.example:{ha1('alice', 'other.example', 'x')}"
    p.write_text(f"# alice's credentials\n{p.read_text()}{other}\n")
    proc = unix.sippasswd("-r", REALM, "--stdin", "alice", input="two\r\n")
    assert proc.returncode == 0, proc.stderr
    lines = p.read_text().splitlines()
    assert lines[0] == "# alice's credentials"
    assert lines[2] == other
    assert stored(unix, "alice").lookup("alice", REALM) == ha1("alice", REALM, "two")
    assert_owned_files(unix, "alice")


def test_delete(unix: FakeUnix) -> None:
    unix.sippasswd("-r", REALM, "--stdin", "alice", input="one\n")
    unix.sippasswd("-r", "other.example", "--stdin", "alice", input="two\n")
    proc = unix.sippasswd("-r", REALM, "--delete", "alice")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"password for alice in realm {REALM} removed\n"
    pf = stored(unix, "alice")
    assert pf.lookup("alice", REALM) is None
    assert pf.lookup("alice", "other.example") == ha1("alice", "other.example", "two")
    again = unix.sippasswd("-r", REALM, "--delete", "alice")
    assert again.returncode == 0
    assert "nothing removed" in again.stderr


def test_delete_without_sr_creates_nothing(unix: FakeUnix) -> None:
    proc = unix.sippasswd("-r", REALM, "--delete", "carol")
    assert proc.returncode == 0 and "nothing removed" in proc.stderr
    assert not (unix["carol"].home / ".sr").exists()


def test_unknown_user(unix: FakeUnix) -> None:
    proc = unix.sippasswd("-r", REALM, "--stdin", "mallory", input="pw\n")
    assert_one_line_error(proc, EXIT_UNKNOWN_USER, "unknown user 'mallory'")


def test_non_member_gets_a_warning_but_the_password(unix: FakeUnix) -> None:
    proc = unix.sippasswd("-r", REALM, "--stdin", "carol", input="pw\n")
    assert proc.returncode == 0
    assert own_stderr(proc.stderr).splitlines() == [
        "sippasswd: warning: carol is not in group 'sip'; sipd will refuse them "
        "until: usermod -aG sip carol"
    ]
    assert stored(unix, "carol").lookup("carol", REALM) == ha1("carol", REALM, "pw")


def test_primary_group_member_gets_no_warning(unix: FakeUnix) -> None:
    proc = unix.sippasswd("-r", REALM, "--stdin", "bob", input="pw\n")
    assert proc.returncode == 0 and own_stderr(proc.stderr) == ""


def test_group_option_and_missing_group(unix: FakeUnix) -> None:
    proc = unix.sippasswd("-r", REALM, "-g", "voip", "--stdin", "alice", input="pw\n")
    assert proc.returncode == 0
    assert "group 'voip' does not exist" in proc.stderr


def test_realm_and_group_from_the_config_file(unix: FakeUnix) -> None:
    conf = unix.root / "sipd.conf"
    conf.write_text('realm = "conf.example"\ngroup = "alice"\n')
    proc = unix.sippasswd("-c", str(conf), "--stdin", "carol", input="pw\n")
    assert proc.returncode == 0, proc.stderr
    assert "not in group 'alice'" in proc.stderr
    assert stored(unix, "carol").lookup("carol", "conf.example") == ha1(
        "carol", "conf.example", "pw"
    )
    # -r wins over the file
    proc = unix.sippasswd("-c", str(conf), "-r", REALM, "--stdin", "carol", input="pw\n")
    assert stored(unix, "carol").lookup("carol", REALM) is not None


def test_realm_defaults_to_the_fqdn(unix: FakeUnix) -> None:
    if os.path.exists("/etc/sipd/sipd.conf"):
        pytest.skip("/etc/sipd/sipd.conf exists on this host and would set the realm")
    fqdn = unix.run([unix.python, "-c", "import socket; print(socket.getfqdn())"]).stdout.strip()
    proc = unix.sippasswd("--stdin", "alice", input="pw\n")
    assert proc.returncode == 0, proc.stderr
    assert stored(unix, "alice").lookup("alice", fqdn) == ha1("alice", fqdn, "pw")


def sipd_realm(unix: FakeUnix, conf: Path) -> subprocess.CompletedProcess[str]:
    """``sipd --check-config`` on ``conf``, under the same fake users as sippasswd."""
    return unix.run([unix.python, "-m", "sipd.cli", "-c", str(conf), "--check-config",
                     "--no-pam", "--no-mount", "-l", "127.0.0.1:5060"])


@pytest.mark.parametrize(
    "content",
    ["", 'realm = "  spaced.example  "\n', 'realm = "conf.example"\ngroup = "sip"\n'],
    ids=["default", "spaces", "plain"],
)
def test_sipd_and_sippasswd_agree_on_the_realm(unix: FakeUnix, content: str) -> None:
    # The realm sipd prints is the one sippasswd writes and names.
    conf = unix.root / "sipd.conf"
    conf.write_text(content)
    checked = sipd_realm(unix, conf)
    assert checked.returncode == 0, checked.stderr
    [line] = [x for x in checked.stdout.splitlines() if x.startswith("realm = ")]
    realm = line.removeprefix("realm = ").strip('"')
    proc = unix.sippasswd("-c", str(conf), "--stdin", "alice", input="pw\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"password for alice in realm {realm} updated\n"
    assert stored(unix, "alice").lookup("alice", realm) == ha1("alice", realm, "pw")


@pytest.mark.parametrize("content", ['realm = ""\n', 'realm = "a:b"\n', "realm = 5\n"])
def test_sipd_and_sippasswd_refuse_the_same_realm(unix: FakeUnix, content: str) -> None:
    conf = unix.root / "sipd.conf"
    conf.write_text(content)
    checked = sipd_realm(unix, conf)
    assert checked.returncode == 1
    reason = checked.stderr.strip().removeprefix("sipd: ")
    proc = unix.sippasswd("-c", str(conf), "--stdin", "alice", input="pw\n")
    assert_one_line_error(proc, EXIT_FAILURE, reason)
    assert not (unix["alice"].home / ".sr").exists()


@pytest.mark.parametrize(
    ("content", "text"),
    [
        ("realm = ", "sipd.conf"),
        ("realm = 5\n", "realm must be a non-empty string, not 5; give the realm with -r"),
        ('realm = ""\n', "realm must be a non-empty string, not ''"),
        ('realm = "a:b"\n', "realm 'a:b' has a colon"),
    ],
)
def test_bad_config_file(unix: FakeUnix, content: str, text: str) -> None:
    conf = unix.root / "sipd.conf"
    conf.write_text(content)
    proc = unix.sippasswd("-c", str(conf), "--stdin", "alice", input="pw\n")
    assert_one_line_error(proc, EXIT_FAILURE, text)


def test_bad_config_only_warns_when_the_realm_is_given(unix: FakeUnix) -> None:
    conf = unix.root / "sipd.conf"
    conf.write_text("realm = ")
    proc = unix.sippasswd("-c", str(conf), "-r", REALM, "--stdin", "alice", input="pw\n")
    assert proc.returncode == 0, proc.stderr
    assert "group membership not checked" in proc.stderr
    assert stored(unix, "alice").lookup("alice", REALM) == ha1("alice", REALM, "pw")


def test_config_unreadable_for_the_user(unix: FakeUnix) -> None:
    conf = unix.root / "sipd.conf"
    conf.write_text('realm = "conf.example"\n')
    conf.chmod(0o600)
    proc = unix.sippasswd("-c", str(conf), "--stdin", as_user="alice", input="pw\n")
    assert_one_line_error(proc, EXIT_FAILURE, "Permission denied; give the realm with -r")
    assert not (unix["alice"].home / ".sr").exists()


def test_missing_config_named_with_c(unix: FakeUnix) -> None:
    proc = unix.sippasswd("-c", str(unix.root / "nope.conf"), "--stdin", "alice", input="pw\n")
    assert_one_line_error(proc, EXIT_FAILURE, "nope.conf")


@pytest.mark.parametrize(
    ("stdin", "text"),
    [("\n", "empty password"), ("", "no password on standard input"), ("x" * 1100, "longer than")],
)
def test_unusable_password_changes_nothing(unix: FakeUnix, stdin: str, text: str) -> None:
    proc = unix.sippasswd("-r", REALM, "--stdin", "alice", input=stdin)
    assert_one_line_error(proc, EXIT_PASSWORD, text)
    assert not (unix["alice"].home / ".sr").exists()


def test_no_terminal_without_stdin_option(unix: FakeUnix) -> None:
    proc = unix.sippasswd("-r", REALM, "alice", input="pw\npw\n")
    assert_one_line_error(proc, EXIT_PASSWORD, "use --stdin")


def test_bad_realm_and_options(unix: FakeUnix) -> None:
    proc = unix.sippasswd("-r", "a:b", "--stdin", "alice", input="pw\n")
    assert_one_line_error(proc, EXIT_USAGE, "colon")
    proc = unix.sippasswd("-r", "", "--stdin", "alice", input="pw\n")
    assert_one_line_error(proc, EXIT_USAGE, "realm must be a non-empty string")
    proc = unix.sippasswd("--stdin", "--delete", "alice")
    assert proc.returncode == EXIT_USAGE and "Traceback" not in proc.stderr


def test_unsafe_home_is_a_clear_error(unix: FakeUnix) -> None:
    target = unix.root / "rootdir"
    target.mkdir()
    (unix["alice"].home / ".sr").symlink_to(target)
    proc = unix.sippasswd("-r", REALM, "--stdin", "alice", input="pw\n")
    assert_one_line_error(proc, EXIT_FAILURE, "~alice/.sr is a symlink")
    assert os.listdir(target) == []


def test_symlinked_passwd_is_refused_and_left_alone(unix: FakeUnix) -> None:
    secret = unix.root / "secret"
    secret.write_text("root:secret\n")
    secret.chmod(0o600)
    sr = unix["alice"].home / ".sr"
    sr.mkdir(mode=0o700)
    os.chown(sr, unix["alice"].uid, unix["alice"].gid)
    (sr / "passwd").symlink_to(secret)
    proc = unix.sippasswd("-r", REALM, "--stdin", "alice", input="pw\n")
    assert_one_line_error(proc, EXIT_FAILURE, "~alice/.sr/passwd is a symlink")
    assert secret.read_text() == "root:secret\n"


def test_root_without_a_user_changes_roots_own(unix: FakeUnix) -> None:
    proc = unix.sippasswd("-r", REALM, "--stdin", input="pw\n")
    assert proc.returncode == 0, proc.stderr
    p = unix.root / "home" / "root" / ".sr" / "passwd"
    assert passwd.parse(p.read_bytes()).lookup("root", REALM) == ha1("root", REALM, "pw")


# --- as the user -----------------------------------------------------------------


def test_user_changes_their_own_password(unix: FakeUnix) -> None:
    proc = unix.sippasswd("-r", REALM, "--stdin", as_user="alice", input="mine\n")
    assert proc.returncode == 0, proc.stderr
    assert_owned_files(unix, "alice")
    assert stored(unix, "alice").lookup("alice", REALM) == ha1("alice", REALM, "mine")
    proc = unix.sippasswd("-r", REALM, "--stdin", "alice", as_user="alice", input="again\n")
    assert proc.returncode == 0, proc.stderr
    assert stored(unix, "alice").lookup("alice", REALM) == ha1("alice", REALM, "again")
    proc = unix.sippasswd("-r", REALM, "--delete", as_user="alice")
    assert proc.returncode == 0, proc.stderr
    assert stored(unix, "alice").lookup("alice", REALM) is None


def test_user_may_not_change_another_users_password(unix: FakeUnix) -> None:
    proc = unix.sippasswd("-r", REALM, "--stdin", "bob", as_user="alice", input="pw\n")
    assert_one_line_error(proc, EXIT_USAGE, "only root may change another user's SIP password")
    assert not (unix["bob"].home / ".sr").exists()
    proc = unix.sippasswd("-r", REALM, "--delete", "bob", as_user="alice")
    assert proc.returncode == EXIT_USAGE


# --- on a terminal ------------------------------------------------------------------


def run_on_terminal(
    unix: FakeUnix, args: list[str], answers: list[str], timeout: float = 20
) -> tuple[int, str]:
    """Run sippasswd with a pty as its controlling terminal, answering each prompt."""
    master, slave = pty.openpty()
    # setsid -c makes the pty the controlling terminal, so getpass reads
    # /dev/tty with echo off like for a person at a terminal.
    cmd, env = unix.command(
        [unix.python, "-m", "srfs.sippasswd", *args], launcher=["setsid", "-c", "-w"]
    )
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=unix.root)
    os.close(slave)
    output = b""
    deadline = time.monotonic() + timeout
    pending = list(answers)
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            # Answer only once the prompt is there: getpass flushes typed-ahead input.
            if pending and output.count(b"password") > len(answers) - len(pending):
                os.write(master, pending.pop(0).encode() + b"\n")
            if proc.poll() is not None and not ready:
                break
        rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return rc, output.decode(errors="replace")


def test_terminal_prompts_twice(unix: FakeUnix) -> None:
    rc, out = run_on_terminal(unix, ["-r", REALM, "alice"], ["tty pw", "tty pw"])
    assert rc == 0, out
    assert "New SIP password for alice" in out and "Retype" in out
    assert "tty pw" not in out  # no echo
    assert stored(unix, "alice").lookup("alice", REALM) == ha1("alice", REALM, "tty pw")


def test_terminal_mismatch_changes_nothing(unix: FakeUnix) -> None:
    rc, out = run_on_terminal(unix, ["-r", REALM, "alice"], ["one", "two"])
    assert rc == EXIT_PASSWORD, out
    assert "sippasswd: passwords differ" in out and "Traceback" not in out
    assert not (unix["alice"].home / ".sr").exists()

"""``sipd --check-config`` runs the daemon's start-up checks, and says what the daemon says.

Every case runs two real processes under the fake users: ``sipd
--check-config`` and ``sipd`` itself with the same options. Both must
refuse, exit 1, and print the same one line.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from srfs.fs.fuse import mounted
from tests.sipclient import ROOT, SIPD, free_port, running_sipd, wait_for
from tests.unixusers import FakeUnix, UserSpec, fake_unix, give_passwords, own_stderr

needs_fuse = pytest.mark.skipif(not os.path.exists("/dev/fuse"),
                                reason="needs /dev/fuse: no FUSE in this kernel or container")


@pytest.fixture(scope="module")
def unix() -> Iterator[FakeUnix]:
    with fake_unix() as u:
        yield u


def sipd(unix: FakeUnix, tmp: Path, *args: str, env: dict[str, str] | None = None,
         timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """One run of sipd under the fake users; utmp and wtmp in ``tmp``."""
    return subprocess.run(
        [*SIPD, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        env={**unix.env, "SIPD_WTMP": str(tmp / "wtmp"), "SIPD_UTMP": str(tmp / "utmp"),
             **(env or {})},
    )


def config(tmp: Path, **keys: str) -> Path:
    """A config file of string keys; the admin files default to absent ones in ``tmp``."""
    keys.setdefault("aliases", str(tmp / "aliases"))
    keys.setdefault("trunks", str(tmp / "trunks"))
    path = tmp / "sipd.toml"
    path.write_text("".join(f'{k} = "{v}"\n' for k, v in keys.items()))
    return path


def assert_same_refusal(unix: FakeUnix, tmp: Path, args: Sequence[str], text: str,
                        env: dict[str, str] | None = None) -> str:
    """--check-config and the daemon both refuse ``args`` with one identical line."""
    said = []
    for check in (["--check-config"], []):
        proc = sipd(unix, tmp, *args, *check, env=env)
        assert proc.returncode == 1, (proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert proc.stdout == ""
        lines = own_stderr(proc.stderr).splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("sipd: ") and text in lines[0], lines[0]
        said.append(lines[0])
    assert said[0] == said[1]
    return said[0]


def base(tmp: Path, **keys: str) -> list[str]:
    return ["-c", str(config(tmp, **keys)), "-l", f"127.0.0.1:{free_port()}"]


@needs_fuse
def test_a_good_configuration_passes_and_changes_nothing(unix: FakeUnix, tmp_path: Path) -> None:
    aliases = tmp_path / "aliases"
    aliases.write_text("1003: alice\n")
    mnt = tmp_path / "mnt" / "sr"
    proc = sipd(unix, tmp_path, *base(tmp_path, mount=str(mnt)), "--check-config")
    assert proc.returncode == 0, proc.stderr
    assert own_stderr(proc.stderr) == ""
    assert 'group = "sip"' in proc.stdout.splitlines()
    assert "pam = true" in proc.stdout.splitlines()
    # The mountpoint would be created at start; a check creates nothing.
    assert not mnt.parent.exists()


def test_missing_group(unix: FakeUnix, tmp_path: Path) -> None:
    # Before, --check-config passed this and the daemon then refused to start.
    assert_same_refusal(unix, tmp_path, [*base(tmp_path), "-g", "voip", "--no-pam", "--no-mount"],
                        "group 'voip' does not exist: create it (groupadd voip)")


def test_failing_user_database(unix: FakeUnix, tmp_path: Path) -> None:
    broken = tmp_path / "group"
    broken.symlink_to(broken.name)  # every open fails with ELOOP
    assert_same_refusal(unix, tmp_path, [*base(tmp_path), "--no-pam", "--no-mount"],
                        "cannot start: user database unavailable: getgrnam_r",
                        env={"NSS_WRAPPER_GROUP": str(broken)})


def test_missing_pam_service_file(unix: FakeUnix, tmp_path: Path) -> None:
    assert_same_refusal(unix, tmp_path, [*base(tmp_path), "--pam-service", "voip", "--no-mount"],
                        f"PAM service file {unix.pamd / 'voip'} is missing")


def test_libpam_that_cannot_be_loaded(unix: FakeUnix, tmp_path: Path) -> None:
    assert_same_refusal(unix, tmp_path, [*base(tmp_path), "--no-mount"],
                        "PAM is unavailable: cannot load /nonexistent/libpam.so.0",
                        env={"SRFS_LIBPAM": "/nonexistent/libpam.so.0"})


@pytest.mark.parametrize("key", ["aliases", "trunks"])
def test_admin_file_writable_by_others(unix: FakeUnix, tmp_path: Path, key: str) -> None:
    path = tmp_path / key
    path.write_text("")
    path.chmod(0o666)
    what = {"aliases": "the alias map", "trunks": "the trusted trunks"}[key]
    assert_same_refusal(unix, tmp_path, [*base(tmp_path), "--no-pam", "--no-mount"],
                        f"cannot use {what}: {path} is writable by group or others")


def test_admin_file_owned_by_a_user(unix: FakeUnix, tmp_path: Path) -> None:
    path = tmp_path / "trunks"
    path.write_text("alice: 192.0.2.7/32\n")
    os.chown(path, unix["alice"].uid, unix["alice"].gid)
    assert_same_refusal(unix, tmp_path, [*base(tmp_path), "--no-pam", "--no-mount"],
                        f"cannot use the trusted trunks: {path} is owned by uid "
                        f"{unix['alice'].uid}, not by root")


def test_admin_file_reached_through_a_symlink(unix: FakeUnix, tmp_path: Path) -> None:
    (tmp_path / "real").write_text("1003: alice\n")
    (tmp_path / "aliases").symlink_to("real")
    assert_same_refusal(unix, tmp_path, [*base(tmp_path), "--no-pam", "--no-mount"],
                        f"cannot use the alias map: {tmp_path / 'aliases'} is a symlink")


def test_admin_file_that_is_a_directory(unix: FakeUnix, tmp_path: Path) -> None:
    (tmp_path / "aliases").mkdir()
    assert_same_refusal(unix, tmp_path, [*base(tmp_path), "--no-pam", "--no-mount"],
                        f"{tmp_path / 'aliases'} is not a regular file")


def test_mountpoint_that_is_a_file(unix: FakeUnix, tmp_path: Path) -> None:
    mnt = tmp_path / "sr"
    mnt.write_text("")
    assert_same_refusal(unix, tmp_path, [*base(tmp_path, mount=str(mnt)), "--no-pam"],
                        f"cannot mount the state filesystem at {mnt}: {mnt} is not a directory")


def test_mountpoint_below_a_file(unix: FakeUnix, tmp_path: Path) -> None:
    (tmp_path / "run").write_text("")
    mnt = tmp_path / "run" / "sr"
    assert_same_refusal(unix, tmp_path, [*base(tmp_path, mount=str(mnt)), "--no-pam"],
                        f"cannot mount the state filesystem at {mnt}: {mnt}: Not a directory")


def test_mountpoint_with_another_filesystem_on_it(unix: FakeUnix, tmp_path: Path) -> None:
    assert_same_refusal(unix, tmp_path, [*base(tmp_path, mount="/proc"), "--no-pam"],
                        "cannot mount the state filesystem at /proc: "
                        "/proc has a proc filesystem mounted on it")


def test_listen_address_the_host_does_not_have(unix: FakeUnix, tmp_path: Path) -> None:
    port = free_port()
    args = ["-c", str(config(tmp_path)), "-l", f"192.0.2.1:{port}", "--no-pam", "--no-mount"]
    assert_same_refusal(unix, tmp_path, args,
                        f"cannot listen on udp:192.0.2.1:{port}: Cannot assign requested address")


def test_metrics_address_the_host_does_not_have(unix: FakeUnix, tmp_path: Path) -> None:
    port = free_port()
    args = [*base(tmp_path, metrics_listen=f"192.0.2.1:{port}"), "--no-pam", "--no-mount"]
    assert_same_refusal(
        unix, tmp_path, args,
        f"cannot listen on metrics_listen 192.0.2.1:{port}: Cannot assign requested address")


def test_check_config_passes_beside_the_metrics_port_in_use(unix: FakeUnix,
                                                            tmp_path: Path) -> None:
    # Like the SIP ports: the running sipd holds it, and --check-config
    # binds the address on a port of its own.
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        proc = sipd(unix, tmp_path, *base(tmp_path, metrics_listen=f"127.0.0.1:{port}"),
                    "--no-pam", "--no-mount", "--check-config")
    assert proc.returncode == 0, proc.stderr
    assert f'metrics_listen = "127.0.0.1:{port}"' in proc.stdout.splitlines()


def test_the_first_problem_is_the_one_reported(unix: FakeUnix, tmp_path: Path) -> None:
    # The same order as at start: accounts, admin files, mountpoint, sockets.
    (tmp_path / "aliases").mkdir()
    args = [*base(tmp_path, mount="/proc"), "-g", "voip", "-l", "192.0.2.1:5060"]
    line = assert_same_refusal(unix, tmp_path, args, "group 'voip' does not exist")
    assert "alias" not in line and "mount" not in line


@needs_fuse
def test_beside_a_running_sipd_its_port_and_mount_are_no_problem(
    unix: FakeUnix, tmp_path: Path, mnt: Path
) -> None:
    # The check before a restart: the sockets and the mount of the sipd it
    # is meant to replace are held, and that is as it should be.
    conf = config(tmp_path, mount=str(mnt))
    port = free_port()
    with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True, port=port) as daemon:
        # sipd answers SIP a moment before its tree is mounted.
        wait_for(lambda: mounted(str(mnt)), "the mount")
        proc = sipd(unix, tmp_path, "-c", str(conf), "-l", f"127.0.0.1:{port}", "-l",
                    f"[::1]:{port}", "-r", "test.invalid", "--no-pam", "--check-config")
        assert proc.returncode == 0, proc.stderr
        assert daemon.ping() == 200


# --- what the daemon says at start about users' passwords ----------------------------

MANY = tuple(UserSpec(f"user{n}", groups=("sip",)) for n in range(1, 10))


def test_users_without_a_password_for_the_realm_are_named(tmp_path: Path) -> None:
    with fake_unix(users=(UserSpec("alice", groups=("sip",)), *MANY)) as unix:
        give_passwords(unix, "test.invalid", ["alice"])
        give_passwords(unix, "old.example", ["user1"])
        with running_sipd(tmp_path, unix=unix) as daemon:
            # Checked once sipd serves (sipd(8), START-UP).
            wait_for(lambda: "checked the passwords" in daemon.log, "the password report")
            log = daemon.log
    assert log.index("sipd ready") < log.index("no password for realm")
    assert re.search(r"checked the passwords of 10 SIP user\(s\) for realm test.invalid "
                     r"in [0-9.]+ s: 9 without one$", log, re.M), log
    lines = [x for x in log.splitlines() if "no password for realm test.invalid" in x]
    # user1 holds an entry for another realm only; the others hold nothing.
    assert any(x.endswith('user1 (entries only for realm "old.example")') for x in lines), lines
    assert any(x.endswith("user2 (no ~/.sr/passwd)") for x in lines), lines
    # Five named, then one count: nine users are at most six lines.
    assert len(lines) == 6, lines
    assert lines[-1].endswith("4 more problem(s) not logged, 9 in all"), lines
    assert not any("alice" in x for x in lines)
    # Names and realms only: no hash of any password reaches the log.
    assert not re.search(r"[0-9a-f]{32}", log)

"""The alias map on a running sipd: multi-line registration, reloads, and the tree."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_register_e2e import Phone
from tests.e2e.test_statefs_e2e import password  # noqa: F401  (a fixture)
from tests.sipclient import Daemon, reason_of, running_sipd, status_of, wait_for
from tests.unixusers import FakeUnix

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0,
    reason="needs /dev/fuse and root to mount the state filesystem",
)


@pytest.fixture
def admin(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "aliases").write_text("# name: owner\n1003: alice\n01727221221: alice\n2000: bob\n")
    (etc / "trunks").write_text("bob: 198.51.100.7/32\n")
    for name in ("aliases", "trunks"):
        (etc / name).chmod(0o644)
    return etc


@pytest.fixture
def alias_sipd(tmp_path: Path, unix: FakeUnix, mnt: Path, admin: Path,
               password: str) -> Iterator[Daemon]:  # noqa: F811
    conf = tmp_path / "aliases.toml"
    conf.write_text(f'mount = "{mnt}"\naliases = "{admin / "aliases"}"\ntrunks = "{admin / "trunks"}"\n')
    with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True) as daemon:
        wait_for(lambda: (mnt / "alice").exists(), "the mount")
        yield daemon
    (unix["alice"].home / ".sr" / "usrloc").unlink(missing_ok=True)


def test_one_auth_id_registers_two_lines_and_the_tree_shows_them(
    alias_sipd: Daemon, mnt: Path, password: str  # noqa: F811
) -> None:
    phone = Phone(alias_sipd, "alice", password)
    try:
        one = phone.register(aor="1003", contact=f"<sip:alice@127.0.0.1:{phone.conn.port};line=1>")
        assert status_of(one) == 200, one
        phone.call_id += "-2"
        two = phone.register(aor="01727221221",
                             contact=f"<sip:alice@127.0.0.1:{phone.conn.port};line=2>")
        assert status_of(two) == 200, two
        assert b"line=1" not in two  # each line keeps its own bindings
        refused = phone.register(aor="2000")
        assert (status_of(refused), reason_of(refused)) == (403, "Not allowed to register this address")
        trunk = phone.register(aor="1003", contact="<sip:alice@198.51.100.7:5060>")
        assert (status_of(trunk), reason_of(trunk)) == (403, "Contact points at a trunk address")
    finally:
        phone.close()
    contacts = (mnt / "alice" / "contacts").read_text()
    assert "aor=1003" in contacts and "aor=01727221221" in contacts
    assert (mnt / "alice" / "aliases").read_text() == "01727221221\n1003\n"
    # The tree refuses what the registrar refuses.
    r = subprocess.run(["bash", "-c", f"echo 'sip:x@198.51.100.7' >> {mnt}/alice/contacts"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "Permission denied" in r.stderr, r
    assert "198.51.100.7" not in (mnt / "alice" / "contacts").read_text()
    assert "2000: bob\n" in (mnt / "aliases").read_text()


@pytest.mark.slow
def test_an_edit_of_the_map_takes_effect_without_a_restart(
    alias_sipd: Daemon, mnt: Path, admin: Path, password: str  # noqa: F811
) -> None:
    phone = Phone(alias_sipd, "alice", password)
    try:
        assert status_of(phone.register(aor="3000")) == 403
        aliases = admin / "aliases"
        aliases.write_text("1003: alice\n3000: alice\n")
        wait_for(lambda: "3000" in (mnt / "alice" / "aliases").read_text(), "the new alias")
        assert status_of(phone.register(aor="3000")) == 200
        # A conflicting line keeps the old owner; SIGHUP re-reads at once.
        aliases.write_text("1003: alice\n3000: alice\n3000: bob\n")
        alias_sipd.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "neither line is used" in alias_sipd.log, "the conflict in the log")
        assert "3000: alice" in (mnt / "aliases").read_text()
        # A map anyone could write is not used; the one in force stays.
        aliases.write_text("")
        aliases.chmod(0o666)
        wait_for(lambda: "writable by group or others" in alias_sipd.log, "the refusal in the log")
        assert "3000" in (mnt / "alice" / "aliases").read_text()
        assert alias_sipd.alive()
    finally:
        phone.close()


def sh(cmd: str, user: str | None = None, unix: FakeUnix | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["bash", "-c", cmd]
    if user is not None:
        assert unix is not None
        u = unix[user]
        argv = ["setpriv", f"--reuid={u.uid}", f"--regid={u.gid}", "--clear-groups", *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_root_edits_the_alias_map_with_shell_tools(
    alias_sipd: Daemon, mnt: Path, admin: Path, unix: FakeUnix
) -> None:
    aliases = admin / "aliases"
    r = sh(f"echo '4000: alice' >> {mnt}/aliases")
    assert r.returncode == 0, r.stderr
    assert "4000" in (mnt / "alice" / "aliases").read_text()
    text = aliases.read_text()
    assert text.startswith("# name: owner\n1003: alice\n") and text.endswith("4000: alice\n")
    assert oct(aliases.stat().st_mode & 0o777) == "0o644" and aliases.stat().st_uid == 0
    # A clash with the map is refused whole, and the file stays as it was.
    r = sh(f"printf '4001: alice\\n1003: bob\\n' >> {mnt}/aliases")
    assert r.returncode == 1 and "Invalid argument" in r.stderr, r
    assert aliases.read_text() == text
    assert "4001" not in (mnt / "aliases").read_text()
    # A user can read the map but not change it.
    r = sh(f"cat {mnt}/aliases", "alice", unix)
    assert r.returncode == 0 and "4000: alice" in r.stdout
    r = sh(f"echo '5000: alice' >> {mnt}/aliases", "alice", unix)
    assert r.returncode == 1 and "Permission denied" in r.stderr, r
    # '>' replaces the whole map.
    r = sh(f"echo '1003: alice' > {mnt}/aliases")
    assert r.returncode == 0, r.stderr
    assert (mnt / "aliases").read_text() == "1003: alice\n"
    assert aliases.read_text() == "1003: alice\n"

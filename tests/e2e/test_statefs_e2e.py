"""/run/sr on a running sipd: SIP state read and changed with shell tools."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_register_e2e import REALM, Phone
from tests.sipclient import Daemon, children, running_sipd, status_of, wait_for
from tests.unixusers import FakeUnix

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0,
    reason="needs /dev/fuse and root to mount the state filesystem",
)


@pytest.fixture(scope="module")
def password(unix: FakeUnix) -> str:
    r = unix.sippasswd("-r", REALM, "--stdin", "alice", input="fs-secret\n")
    assert r.returncode == 0, r.stderr
    return "fs-secret"


def sh(cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=30)


@pytest.fixture
def fs_sipd(tmp_path: Path, unix: FakeUnix, mnt: Path, password: str) -> Iterator[Daemon]:
    conf = tmp_path / "fs.toml"
    conf.write_text(f'min_expires = 1\nmount_enabled = true\nmount = "{mnt}"\n')
    with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True) as daemon:
        wait_for(lambda: (mnt / "alice").exists(), "the mount")
        yield daemon
    for name in ("usrloc", "config"):
        (unix["alice"].home / ".sr" / name).unlink(missing_ok=True)


def test_registration_appears_and_expires(fs_sipd: Daemon, mnt: Path, password: str) -> None:
    phone = Phone(fs_sipd, "alice", password)
    try:
        assert status_of(phone.register(expires=2)) == 200
    finally:
        phone.close()
    contacts = (mnt / "alice" / "contacts").read_text()
    assert f"received=udp:127.0.0.1:{phone.conn.port}" in contacts and "aor=alice" in contacts
    wait_for(lambda: "aor=alice" not in (mnt / "alice" / "contacts").read_text(),
             "the registration to expire", timeout=6)
    status = (mnt / "status").read_text()
    assert "contacts: 0" in status and "version: " in status
    assert "sipd_messages_in_total" in (mnt / "metrics").read_text()


def test_static_contact_written_with_echo_is_used(fs_sipd: Daemon, unix: FakeUnix, mnt: Path,
                                                  password: str) -> None:
    usrloc = unix["alice"].home / ".sr" / "usrloc"
    r = sh(f"echo 'sip:pbx@198.51.100.7:5060' >> {mnt}/alice/contacts")
    assert r.returncode == 0, r.stderr
    # Committed at close(): in ~/.sr/usrloc by the time the shell goes on.
    assert "sip:pbx@198.51.100.7:5060" in usrloc.read_text()
    assert "sip:pbx@198.51.100.7:5060 aor=alice expires=never" in (mnt / "alice" / "contacts").read_text()
    phone = Phone(fs_sipd, "alice", password)
    try:
        fetched = phone.register(contact="")
    finally:
        phone.close()
    assert b"Contact: <sip:pbx@198.51.100.7:5060>" in fetched
    assert "sip:pbx@198.51.100.7:5060" in (unix["alice"].home / ".sr" / "usrloc").read_text()
    bad = sh(f"echo 'not a contact' >> {mnt}/alice/contacts")
    assert bad.returncode != 0 and "Invalid argument" in bad.stderr
    assert sh(f": > {mnt}/alice/contacts").returncode == 0
    assert (mnt / "alice" / "contacts").read_text() == ""
    # ": >" writes nothing, so it commits at release, which the kernel
    # sends after close() has returned: the file follows a moment later.
    wait_for(lambda: "sip:pbx" not in usrloc.read_text(), "the emptied usrloc", timeout=5)


def test_control_node_is_roots_and_takes_flush_accounts(fs_sipd: Daemon, unix: FakeUnix,
                                                        mnt: Path) -> None:
    assert sh(f"echo 'flush accounts' > {mnt}/control").returncode == 0
    # Carried out when the shell's close() returned.
    assert "flush accounts written to" in fs_sipd.log
    assert "account states forgotten" in fs_sipd.log
    bad = sh(f"echo 'flush everything' > {mnt}/control")
    assert bad.returncode != 0 and "Invalid argument" in bad.stderr
    assert "unknown command 'flush everything'" in fs_sipd.log
    as_alice = unix.run(["sh", "-c", f"echo 'flush accounts' > {mnt}/control"], as_user="alice")
    assert as_alice.returncode != 0 and "Permission denied" in as_alice.stderr
    assert fs_sipd.log.count("flush accounts written to") == 1


@pytest.mark.slow
def test_config_nodes_and_hand_edits(fs_sipd: Daemon, unix: FakeUnix, mnt: Path) -> None:
    cfg = unix["alice"].home / ".sr" / "config"
    assert sh(f"echo yes > {mnt}/alice/config/dnd").returncode == 0
    assert "dnd = yes" in cfg.read_text()
    bad = sh(f"echo maybe > {mnt}/alice/config/dnd")
    assert bad.returncode != 0 and "Invalid argument" in bad.stderr
    assert (mnt / "alice" / "config" / "dnd").read_text() == "yes\n"
    # A hand edit of ~/.sr/config shows up without a restart.
    cfg.write_text("# my settings\ndnd = no\nring_timeout = 25\n")
    wait_for((mnt / "alice" / "config" / "ring_timeout").exists, "the hand edit", timeout=12)
    assert (mnt / "alice" / "config" / "dnd").read_text() == "no\n"
    assert sh(f"rm {mnt}/alice/config/ring_timeout").returncode == 0
    assert cfg.read_text() == "# my settings\ndnd = no\n"


@pytest.mark.slow
def test_a_member_who_leaves_and_comes_back_shows_their_config(
        fs_sipd: Daemon, unix: FakeUnix, mnt: Path) -> None:
    carol = unix["carol"]
    sr = carol.home / ".sr"
    try:
        sr.mkdir(mode=0o700, exist_ok=True)
        (sr / "config").write_text("ring_timeout = 33\n")
        (sr / "config").chmod(0o600)
        for path in (sr, sr / "config"):
            os.chown(path, carol.uid, carol.gid)
        node = mnt / "carol" / "config" / "ring_timeout"
        for _ in range(2):  # the second time, the file is as sipd read it before
            unix.set_groups("carol", ["sip"])
            wait_for(node.exists, "carol's config in the tree", timeout=12)
            assert node.read_text() == "33\n"
            unix.set_groups("carol", [])
            wait_for(lambda: not (mnt / "carol").exists(), "carol gone from the tree",
                     timeout=12)
        assert "carol joined group" in fs_sipd.log and "carol left group" in fs_sipd.log
    finally:
        unix.set_groups("carol", [])
        (sr / "config").unlink(missing_ok=True)


def test_sip_keeps_answering_during_a_read_storm(fs_sipd: Daemon, mnt: Path) -> None:
    # Three shell loops reading the tree as fast as they can, in processes
    # of their own, while SIP requests keep coming.
    loop = (f"n=0; end=$((SECONDS+3)); while [ $SECONDS -lt $end ]; do "
            f"cat {mnt}/status {mnt}/metrics {mnt}/alice/contacts >/dev/null; n=$((n+1)); done; echo $n")
    storms = [subprocess.Popen(["bash", "-c", loop], stdout=subprocess.PIPE, text=True)
              for _ in range(3)]
    try:
        answered = []
        while any(p.poll() is None for p in storms):
            answered.append(fs_sipd.ping())
            time.sleep(0.01)  # the point: a steady trickle of requests, not a flood of our own
        reads = sum(int(p.communicate(timeout=10)[0].strip() or 0) for p in storms)
    finally:
        for p in storms:
            p.kill()
            p.wait()
    assert len(answered) > 50 and set(answered) == {200}
    assert reads > 100  # the tree was really being read meanwhile


def test_sigkill_then_restart_recovers_the_mount(tmp_path: Path, unix: FakeUnix, mnt: Path,
                                                 password: str) -> None:
    conf = tmp_path / "fs.toml"
    conf.write_text(f'mount = "{mnt}"\n')
    with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True) as first:
        wait_for(lambda: (mnt / "alice").exists(), "the first mount")
        # The unmount helper would remove the mount of a killed sipd; killed
        # with it (SIGKILL to the whole unit, say), the mount stays behind.
        for pid in children(first.proc.pid):
            os.kill(pid, signal.SIGKILL)
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    with pytest.raises(OSError):
        os.listdir(mnt)  # ENOTCONN: the stale mount of a killed daemon
    with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True) as second:

        def remounted() -> bool:
            try:
                return (mnt / "alice").exists()
            except OSError:
                return False  # still the stale mount

        wait_for(remounted, "the new mount")
        assert "status" in os.listdir(mnt)
        assert second.stop() == 0
    assert str(mnt) not in Path("/proc/self/mountinfo").read_text()

"""A serving sipd holds CAP_SETUID, CAP_SETGID and CAP_AUDIT_WRITE alone, and still works.

Read from ``/proc/PID/task/*/status`` of a real daemon, every thread: the
effective, permitted and bounding sets, nothing inheritable or ambient,
no_new_privs. With that set a registration reaches the user's
``~/.sr/usrloc`` (as the user), a write to ``/run/sr`` reaches
``~/.sr/config``, utmp and wtmp get their records, PAM is asked, and a stop
unmounts the tree through the helper, which holds CAP_SYS_ADMIN alone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipd.io.capabilities import RUNNING, UNMOUNT, ThreadCaps, mask, names, read_status
from tests.e2e.test_register_e2e import REALM, Phone
from tests.sipclient import Daemon, children, running_sipd, status_of, wait_for
from tests.unixusers import FakeUnix, give_passwords

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0,
    reason="needs /dev/fuse and root: capabilities are root's to give up",
)


def thread_caps(pid: int) -> list[ThreadCaps]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out.append(read_status(str(task / "status"), int(task.name)))
        except FileNotFoundError:
            continue
    return out


def who(utmp: Path) -> str:
    if not utmp.exists():
        return ""
    return subprocess.run(["who", str(utmp)], capture_output=True, text=True, timeout=10).stdout


def last(wtmp: Path) -> str:
    return subprocess.run(["last", "-f", str(wtmp)], capture_output=True, text=True,
                          timeout=10).stdout


def mounted(path: Path) -> bool:
    return f" {path} " in Path("/proc/self/mountinfo").read_text()


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("alice",))


@pytest.fixture
def served(tmp_path: Path, unix: FakeUnix, mnt: Path,
           passwords: dict[str, str]) -> Iterator[Daemon]:
    conf = tmp_path / "sipd.toml"
    conf.write_text(f'mount = "{mnt}"\n')
    # PAM on: the account check runs with the reduced set too.
    with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True, pam=True) as daemon:
        wait_for(lambda: "sipd ready" in daemon.log, "READY")
        yield daemon
    for name in ("usrloc", "config"):
        (unix["alice"].home / ".sr" / name).unlink(missing_ok=True)


def test_every_thread_keeps_the_running_set_alone(served: Daemon) -> None:
    threads = thread_caps(served.proc.pid)
    assert len(threads) >= 1
    want = mask(RUNNING)
    for t in threads:
        assert (t.effective, t.permitted, t.bounding) == (want, want, want), (
            f"thread {t.tid}: effective {names(t.effective)}, permitted {names(t.permitted)}, "
            f"bounding {names(t.bounding)}")
        assert (t.inheritable, t.ambient, t.no_new_privs) == (0, 0, True)
    assert "capabilities dropped; kept CAP_SETGID, CAP_SETUID, CAP_AUDIT_WRITE" in served.log


def test_the_unmount_helper_keeps_cap_sys_admin_alone(served: Daemon) -> None:
    helpers = children(served.proc.pid)
    assert len(helpers) == 1, helpers
    caps = read_status(f"/proc/{helpers[0]}/status")
    want = mask(UNMOUNT)
    assert (caps.effective, caps.permitted, caps.bounding) == (want, want, want)
    assert caps.no_new_privs
    cmdline = Path(f"/proc/{helpers[0]}/cmdline").read_bytes().split(b"\0")
    assert b"sipd.io.unmounter" in cmdline


def test_registration_tree_utmp_and_stop_work_with_the_reduced_set(
        served: Daemon, unix: FakeUnix, mnt: Path, tmp_path: Path,
        passwords: dict[str, str]) -> None:
    alice = unix["alice"]
    phone = Phone(served, "alice", passwords["alice"])
    try:
        assert status_of(phone.register()) == 200
    finally:
        phone.close()
    # Written as alice (setfsuid), hers.
    usrloc = alice.home / ".sr" / "usrloc"
    assert "alice" in usrloc.read_text()
    assert (usrloc.stat().st_uid, usrloc.stat().st_gid) == (alice.uid, alice.gid)
    wait_for(lambda: "alice" in who(tmp_path / "utmp"), "alice's utmp line")
    assert "no logout" in last(tmp_path / "wtmp")

    # A write through the tree, as alice, lands in her ~/.sr/config.
    done = unix.run(["sh", "-c", f"echo yes > {mnt}/alice/config/dnd"], as_user="alice")
    assert done.returncode == 0, done.stderr
    config = alice.home / ".sr" / "config"
    assert "dnd = yes" in config.read_text()
    assert config.stat().st_uid == alice.uid

    helper = children(served.proc.pid)[0]
    assert served.stop() == 0
    assert not mounted(mnt), "the tree is still mounted after the stop"
    assert not Path(f"/proc/{helper}").exists(), "the unmount helper outlived sipd"
    log = served.log
    assert "failed to unmount" not in log and "Operation not permitted" not in log, log
    assert "srfs unmounted" in log and "sipd stopped" in log
    # The logout was recorded at the stop.
    after = last(tmp_path / "wtmp")
    assert "alice" in after and "no logout" not in after, after


def test_a_stop_with_a_process_inside_the_tree_unmounts_cleanly(served: Daemon,
                                                                mnt: Path) -> None:
    # An open directory keeps a merely detached FUSE connection alive, and
    # libfuse would then fail to unmount it again: the helper aborts it too.
    inside = subprocess.Popen(["sleep", "30"], cwd=mnt / "alice")
    try:
        assert served.stop() == 0
        assert not mounted(mnt)
    finally:
        inside.kill()
        inside.wait()
    assert "failed to unmount" not in served.log and "sipd stopped" in served.log


def test_a_killed_sipd_leaves_no_dead_mount(served: Daemon, mnt: Path) -> None:
    helper = children(served.proc.pid)[0]
    served.proc.send_signal(signal.SIGKILL)
    served.proc.wait(10)
    # The helper sees its input end, detaches the mount and leaves.
    wait_for(lambda: not mounted(mnt), "the helper to remove the mount of a killed sipd")
    wait_for(lambda: not Path(f"/proc/{helper}").exists(), "the helper to leave")
    listing = subprocess.run(["ls", str(mnt)], capture_output=True, text=True, timeout=10)
    assert "Transport endpoint is not connected" not in listing.stderr


def test_the_helper_ignores_the_signals_of_a_stop(served: Daemon, mnt: Path) -> None:
    # systemctl stop signals every process of the unit, Ctrl-C the whole
    # process group: the helper must still be there to unmount when sipd asks.
    helper = children(served.proc.pid)[0]
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(helper, sig)
    time.sleep(0.2)
    assert Path(f"/proc/{helper}").exists()
    assert served.stop() == 0
    assert not mounted(mnt)

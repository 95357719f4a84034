"""srfs.fs.fuse: the tree through a real FUSE mount, driven with shell tools.

pyfuse3 keeps one session per process, so the filesystem runs in a helper
process (tests/fusehelper.py) and these tests use it the way people and
scripts do: bash, cat, cp, tee, sed -i, and unprivileged uids through
setpriv. The mountinfo helpers are tested without a mount.
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from srfs.fs.fuse import MountError, cleanup_stale, mount_entries, mounted, parse_mountinfo
from tests import REPO, TESTS
from tests.sipclient import wait_for

HELPER = TESTS / "fusehelper.py"
U1, U2 = 60101, 60102
PBX = "sip:pbx@198.51.100.7:5060"
PHONE = "sip:u1@192.0.2.10:5060;transport=udp"
# The helper runs as a script, so its sys.path starts at tests/: without
# PYTHONPATH it would import whatever srfs is installed, not this checkout's.
ENV = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONPATH": str(REPO)}


def _fuse_unavailable() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing: no FUSE in this kernel or container"
    if os.geteuid() != 0:
        return "needs root: mounting with allow_other and testing other uids via setpriv"
    return None


_REASON = _fuse_unavailable()
needs_fuse = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def force_unmount(mnt: str) -> None:
    tool = shutil.which("fusermount3")
    cmd = [tool, "-u", "-z", mnt] if tool else ["umount", "-l", mnt]
    subprocess.run(cmd, check=False, capture_output=True)


@dataclass
class Mount:
    """A helper process serving the tree at ``mnt``; several in turn for restart tests."""

    base: str
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=lambda: dict(ENV))

    @property
    def mnt(self) -> str:
        return os.path.join(self.base, "mnt")

    @property
    def record(self) -> str:
        return os.path.join(self.base, "record.json")

    @property
    def proc(self) -> subprocess.Popen[str]:
        return self.procs[-1]

    def p(self, rel: str) -> str:
        return os.path.join(self.mnt, rel)

    def start(self, *, expect_ready: bool = True) -> subprocess.Popen[str]:
        log = open(os.path.join(self.base, f"helper{len(self.procs)}.log"), "w")
        proc = subprocess.Popen(
            [sys.executable, str(HELPER), self.mnt, self.record],
            cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, env=self.env,
        )
        log.close()
        self.procs.append(proc)
        if expect_ready:
            assert self.read_line(proc) == "ready", self.helper_log()
        return proc

    def read_line(self, proc: subprocess.Popen[str] | None = None, timeout: float = 15.0) -> str:
        proc = proc or self.proc
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            return ""
        return proc.stdout.readline().strip()

    def helper_log(self) -> str:
        out = []
        for i in range(len(self.procs)):
            with open(os.path.join(self.base, f"helper{i}.log")) as f:
                out.append(f.read())
        return "\n".join(out)

    def records(self) -> list[dict[str, Any]]:
        try:
            with open(self.record) as f:
                data: list[dict[str, Any]] = json.load(f)
                return data
        except FileNotFoundError:
            return []

    def read(self, rel: str) -> str:
        with open(self.p(rel)) as f:
            return f.read()


@contextmanager
def helper_mount(**env: str) -> Iterator[Mount]:
    """A started helper with ``env`` added to its environment; stopped and unmounted after."""
    # Not under pytest's tmp_path: its 0700 parent would stop the
    # unprivileged uids before they reach the mount.
    base = tempfile.mkdtemp(prefix="srfs-test-")
    os.chmod(base, 0o755)
    m = Mount(base, env={**ENV, **env})
    try:
        m.start()
        yield m
    finally:
        for proc in m.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if mounted(m.mnt):
            force_unmount(m.mnt)
        if not mounted(m.mnt):  # never recurse into a live mount
            shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fs() -> Iterator[Mount]:
    with helper_mount() as m:
        yield m


def sh(script: str, uid: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with bash, as root or as ``uid`` (gid = uid, no groups)."""
    cmd = ["bash", "-c", script]
    if uid is not None:
        cmd = ["setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, cwd="/", env=ENV, timeout=30)


def ok(script: str, uid: int | None = None) -> str:
    done = sh(script, uid)
    assert done.returncode == 0, (script, done.stderr)
    return done.stdout


# ------------------------------------------------------------- reading


@needs_fuse
def test_root_reads_status_metrics_and_contacts(fs: Mount) -> None:
    status = fs.read("status")
    assert "version: fusehelper\n" in status
    assert "users: 2\n" in status and "contacts: 1\n" in status
    metrics = fs.read("metrics")
    assert "# TYPE sipd_users gauge\nsipd_users 2\n" in metrics
    contacts = ok(f"cat {fs.p('u1/contacts')}")
    assert contacts.startswith(PHONE + " aor=u1 expires=")
    assert 'ua=TestPhone/1.0' in contacts
    # The real size: tail seeks from it.
    assert ok(f"tail -n1 {fs.p('u1/contacts')}") == contacts
    assert os.stat(fs.p("u1/contacts")).st_size == len(contacts)
    assert ok(f"cat {fs.p('u2/contacts')}") == ""


@needs_fuse
def test_status_read_again_at_once_shows_what_changed_between(fs: Mount) -> None:
    # A reader's fstat after its open asks for the attributes again: what
    # that renders must not serve the next open.
    for _ in range(3):
        with open(fs.p("status")) as f:
            assert "contacts: 1\n" in f.read()
    with open(fs.p("u1/contacts"), "a") as f:
        f.write(f"{PBX}\n")
    with open(fs.p("status")) as f:
        assert "contacts: 2\n" in f.read()


@needs_fuse
def test_modes_and_owners_come_from_the_tree(fs: Mount) -> None:
    expected = {
        "": (stat.S_IFDIR | 0o755, 0),
        "status": (stat.S_IFREG | 0o444, 0),
        "aliases": (stat.S_IFREG | 0o644, 0),
        "u1": (stat.S_IFDIR | 0o700, U1),
        "u1/contacts": (stat.S_IFREG | 0o600, U1),
        "u1/config": (stat.S_IFDIR | 0o700, U1),
        "u1/calls": (stat.S_IFREG | 0o400, U1),
        "events": (stat.S_IFREG | 0o400, 0),
        "control": (stat.S_IFREG | 0o600, 0),
        "u1/events": (stat.S_IFREG | 0o400, U1),
        "u2/contacts": (stat.S_IFREG | 0o600, U2),
    }
    for rel, (mode, uid) in expected.items():
        st = os.stat(fs.p(rel))
        assert (st.st_mode, st.st_uid, st.st_gid) == (mode, uid, uid), rel
    assert sorted(os.listdir(fs.mnt)) == ["aliases", "control", "events", "metrics", "status", "u1", "u2"]
    assert sorted(os.listdir(fs.p("u1"))) == ["aliases", "calls", "config", "contacts", "events"]
    # An inode number stays with its path.
    assert os.stat(fs.p("u1/contacts")).st_ino == os.stat(fs.p("u1/contacts")).st_ino


# ------------------------------------------------------------- contacts


@needs_fuse
def test_append_adds_a_static_contact(fs: Mount) -> None:
    ok(f"echo '{PBX}' >> {fs.p('u1/contacts')}")
    lines = fs.read("u1/contacts").splitlines()
    assert lines[0].startswith(PHONE)
    assert lines[1] == f"{PBX} aor=u1 expires=never q=1.0 reachable=unknown"
    assert fs.records()[-1] == {"contacts": 1}


@needs_fuse
def test_append_expires_zero_removes(fs: Mount) -> None:
    ok(f"echo '{PBX}' >> {fs.p('u1/contacts')}")
    ok(f"echo '{PBX} expires=0' >> {fs.p('u1/contacts')}")
    assert PBX not in fs.read("u1/contacts")
    assert PHONE in fs.read("u1/contacts")


@needs_fuse
def test_truncating_write_replaces_and_colon_clears(fs: Mount) -> None:
    ok(f"echo '{PBX}' > {fs.p('u1/contacts')}")
    assert fs.read("u1/contacts") == f"{PBX} aor=u1 expires=never q=1.0 reachable=unknown\n"
    ok(f": > {fs.p('u1/contacts')}")
    assert fs.read("u1/contacts") == ""
    assert "contacts: 0\n" in fs.read("status")


@needs_fuse
def test_truncate_command_and_cp_replace(fs: Mount) -> None:
    ok(f"truncate -s0 {fs.p('u1/contacts')}")
    assert fs.read("u1/contacts") == ""
    src = os.path.join(fs.base, "good")
    Path(src).write_text(f"# a comment\n{PBX}\n")
    ok(f"cp {src} {fs.p('u1/contacts')}")
    assert fs.read("u1/contacts") == f"{PBX} aor=u1 expires=never q=1.0 reachable=unknown\n"


@pytest.mark.parametrize("redirect", [">>", ">"])
@needs_fuse
def test_bad_line_is_invalid_argument_and_nothing_is_applied(fs: Mount, redirect: str) -> None:
    before = fs.read("u1/contacts")
    done = sh(f"echo 'not a contact' {redirect} {fs.p('u1/contacts')}")
    assert done.returncode != 0
    assert "Invalid argument" in done.stderr
    # Not even the truncation of ">": the open that failed is dropped whole.
    assert fs.read("u1/contacts") == before
    done = sh(f"printf '{PBX}\\nbad line\\n' {redirect} {fs.p('u1/contacts')}")
    assert done.returncode != 0 and "Invalid argument" in done.stderr
    assert fs.read("u1/contacts") == before
    # Two writes in one open: the second fails, the first is not applied either.
    done = sh(f"{{ echo '{PBX}'; echo bad; }} {redirect} {fs.p('u1/contacts')}")
    assert "Invalid argument" in done.stderr
    assert fs.read("u1/contacts") == before


@needs_fuse
def test_cp_and_tee_of_a_bad_file_report_the_error(fs: Mount) -> None:
    before = fs.read("u1/contacts")
    bad = os.path.join(fs.base, "bad")
    Path(bad).write_text(f"{PBX}\nsip:\n")
    done = sh(f"cp {bad} {fs.p('u1/contacts')}")
    assert done.returncode != 0 and "Invalid argument" in done.stderr
    done = sh(f"tee {fs.p('u1/contacts')} < {bad} > /dev/null")
    assert done.returncode != 0 and "Invalid argument" in done.stderr
    assert fs.read("u1/contacts") == before


@needs_fuse
def test_close_reports_an_error_found_at_commit(fs: Mount) -> None:
    # No newline: write() cannot judge an unfinished line, close() must.
    f = open(fs.p("u1/contacts"), "a")
    f.write("sip:")
    with pytest.raises(OSError) as info:
        f.close()
    assert info.value.errno == errno.EINVAL
    assert PHONE in fs.read("u1/contacts")


@needs_fuse
def test_large_writes_and_the_size_limit(fs: Mount) -> None:
    big = os.path.join(fs.base, "big")
    with open(big, "w") as f:
        for i in range(3000):
            f.write(f"sip:u1@10.0.{i // 250}.{i % 250}:5060 expires=600\n")
    start = time.monotonic()
    ok(f"cp {big} {fs.p('u1/contacts')}")
    took = time.monotonic() - start
    assert len(fs.read("u1/contacts").splitlines()) == 3000
    assert took < 5, took
    with open(big, "a") as f:
        f.write("sip:u1@192.0.2.1 q=0.5\n" * 50_000)  # past 1 MiB
    done = sh(f"cp {big} {fs.p('u1/contacts')}")
    assert done.returncode != 0 and "File too large" in done.stderr
    assert len(fs.read("u1/contacts").splitlines()) == 3000


@needs_fuse
def test_contacts_cannot_be_removed_renamed_or_chmodded(fs: Mount) -> None:
    for script in (f"rm -f {fs.p('u1/contacts')}",
                   f"mv {fs.p('u1/contacts')} {fs.p('u1/old')}",
                   f"chmod 644 {fs.p('u1/contacts')}",
                   f"chown {U2} {fs.p('u1/contacts')}",
                   f"mkdir {fs.p('u1/dir')}"):
        done = sh(script)
        assert done.returncode != 0 and "Operation not permitted" in done.stderr, script
    # What changes nothing is accepted, as is touch (mtimes are the state's).
    ok(f"chmod 600 {fs.p('u1/contacts')} && chown {U1}:{U1} {fs.p('u1/contacts')}")
    ok(f"touch {fs.p('u1/contacts')}")
    assert stat.S_IMODE(os.stat(fs.p("u1/contacts")).st_mode) == 0o600
    done = sh(f"echo x > {fs.p('status')}")
    assert done.returncode != 0


@needs_fuse
def test_sed_in_place_on_contacts(fs: Mount) -> None:
    ok(f"echo '{PBX}' >> {fs.p('u1/contacts')}")
    ok(f"sed -i '/pbx@/d' {fs.p('u1/contacts')}")
    assert PBX not in fs.read("u1/contacts") and PHONE in fs.read("u1/contacts")
    done = sh(f"sed -i 's/^sip:/nonsense:/' {fs.p('u1/contacts')}")
    assert done.returncode != 0 and "Invalid argument" in done.stderr
    assert PHONE in fs.read("u1/contacts")
    assert sorted(os.listdir(fs.p("u1"))) == ["aliases", "calls", "config", "contacts", "events"]


# ---------------------------------------------------------------- config


@needs_fuse
def test_config_set_read_and_committed_text(fs: Mount) -> None:
    ok(f"echo yes > {fs.p('u1/config/dnd')}")
    assert ok(f"cat {fs.p('u1/config/dnd')}") == "yes\n"
    assert os.listdir(fs.p("u1/config")) == ["dnd"]
    last = fs.records()[-1]
    assert last["user"] == "u1" and last["key"] == "dnd" and last["value"] == "yes"
    assert last["changed"] is True and "dnd = yes" in last["text"]
    # The same value again changes nothing and is not reported.
    count = len(fs.records())
    ok(f"echo yes > {fs.p('u1/config/dnd')}")
    assert len(fs.records()) == count


@needs_fuse
def test_config_bad_value_and_unknown_key(fs: Mount) -> None:
    ok(f"echo yes > {fs.p('u1/config/dnd')}")
    done = sh(f"echo maybe > {fs.p('u1/config/dnd')}")
    assert done.returncode != 0 and "Invalid argument" in done.stderr
    assert fs.read("u1/config/dnd") == "yes\n"
    done = sh(f"echo maybe > {fs.p('u1/config/ring_timeout')}")
    assert done.returncode != 0 and "Invalid argument" in done.stderr
    assert not os.path.exists(fs.p("u1/config/ring_timeout"))
    done = sh(f"echo x > {fs.p('u1/config/typo')}")
    assert done.returncode != 0 and "Operation not permitted" in done.stderr
    assert os.listdir(fs.p("u1/config")) == ["dnd"]


@needs_fuse
def test_config_rm_removes_the_key(fs: Mount) -> None:
    ok(f"echo 45 > {fs.p('u1/config/ring_timeout')}")
    ok(f"rm {fs.p('u1/config/ring_timeout')}")
    assert os.listdir(fs.p("u1/config")) == []
    last = fs.records()[-1]
    assert last["key"] == "ring_timeout" and last["value"] is None and last["changed"]
    done = sh(f"rm {fs.p('u1/config/ring_timeout')}")
    assert done.returncode != 0 and "No such file" in done.stderr


@needs_fuse
def test_sed_in_place_on_config_commits_by_rename(fs: Mount) -> None:
    ok(f"echo yes > {fs.p('u1/config/dnd')}")
    ok(f"sed -i 's/yes/no/' {fs.p('u1/config/dnd')}")
    assert fs.read("u1/config/dnd") == "no\n"
    assert fs.records()[-1]["value"] == "no"
    done = sh(f"sed -i 's/no/maybe/' {fs.p('u1/config/dnd')}")
    assert done.returncode != 0 and "Invalid argument" in done.stderr
    assert fs.read("u1/config/dnd") == "no\n"
    # sed removed its temporary file; nothing else is left behind.
    assert os.listdir(fs.p("u1/config")) == ["dnd"]


@needs_fuse
def test_scratch_files_need_o_excl_and_rename_commits(fs: Mount) -> None:
    config = fs.p("u1/config")
    fd = os.open(os.path.join(config, ".tmp1"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"sip:voicemail@example.org\n")
    os.close(fd)
    st = os.stat(os.path.join(config, ".tmp1"))
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0)
    assert sorted(os.listdir(config)) == [".tmp1"]
    os.rename(os.path.join(config, ".tmp1"), os.path.join(config, "forward"))
    assert fs.read("u1/config/forward") == "sip:voicemail@example.org\n"
    assert os.listdir(config) == ["forward"]
    # A bad value: rename fails with the tree's errno and the scratch stays.
    fd = os.open(os.path.join(config, ".tmp2"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    os.write(fd, b"mailto:x\n")
    os.close(fd)
    with pytest.raises(OSError) as info:
        os.rename(os.path.join(config, ".tmp2"), os.path.join(config, "forward"))
    assert info.value.errno == errno.EINVAL
    os.unlink(os.path.join(config, ".tmp2"))
    assert os.listdir(config) == ["forward"]


# ----------------------------------------------------------- permissions


@needs_fuse
def test_owner_reads_and_writes_own_nodes(fs: Mount) -> None:
    assert PHONE in ok(f"cat {fs.p('u1/contacts')}", uid=U1)
    ok(f"echo '{PBX}' >> {fs.p('u1/contacts')}", uid=U1)
    assert PBX in fs.read("u1/contacts")
    ok(f"echo 'sip:u2@192.0.2.20' > {fs.p('u2/contacts')}", uid=U2)
    assert fs.read("u2/contacts").startswith("sip:u2@192.0.2.20 aor=u2")
    ok(f"echo yes > {fs.p('u1/config/dnd')} && sed -i s/yes/no/ {fs.p('u1/config/dnd')}", uid=U1)
    assert ok(f"cat {fs.p('u1/config/dnd')}", uid=U1) == "no\n"
    assert "users: 2" in ok(f"cat {fs.p('status')}", uid=U2)


@needs_fuse
@pytest.mark.parametrize(("me", "other"), [(U1, "u2"), (U2, "u1")])
def test_other_users_get_permission_denied(fs: Mount, me: int, other: str) -> None:
    before = fs.read(f"{other}/contacts")
    for script in (f"cat {fs.p(other + '/contacts')}",
                   f"ls {fs.p(other)}",
                   f"echo '{PBX}' >> {fs.p(other + '/contacts')}",
                   f"echo yes > {fs.p(other + '/config/dnd')}",
                   f"echo x > {fs.p('status')}"):
        done = sh(script, uid=me)
        assert done.returncode != 0, script
        assert "Permission denied" in done.stderr, (script, done.stderr)
    assert fs.read(f"{other}/contacts") == before
    # Root reads everything.
    ok(f"cat {fs.p('u1/contacts')} {fs.p('u2/contacts')} && ls {fs.p('u1')} {fs.p('u2')}")


# ------------------------------------------------------------ membership


@needs_fuse
def test_membership_changes_show_without_waiting_for_timeouts(fs: Mount) -> None:
    u3 = fs.p("u3")
    assert not os.path.exists(u3)
    fs.proc.send_signal(signal.SIGUSR1)
    assert fs.read_line() == "toggled"
    assert "u3" in os.listdir(fs.mnt)
    assert os.stat(u3).st_uid == 60103  # now cached by the kernel for 1 s
    fs.proc.send_signal(signal.SIGUSR1)
    assert fs.read_line() == "toggled"
    start = time.monotonic()
    # Gone well within the 1 s entry timeout: the entry was invalidated.
    wait_for(lambda: not os.path.exists(u3), "u3 to be gone", timeout=0.5)
    assert time.monotonic() - start < 0.5
    assert "u3" not in os.listdir(fs.mnt)


# ------------------------------------------------------------- lifecycle


@needs_fuse
def test_sigterm_unmounts(fs: Mount) -> None:
    assert mounted(fs.mnt)
    entry = mount_entries(fs.mnt)[-1]
    assert (entry.fstype, entry.source) == ("fuse.srfs", "srfs")
    fs.proc.send_signal(signal.SIGTERM)
    assert fs.proc.wait(10) == 0, fs.helper_log()
    assert not mounted(fs.mnt)


@needs_fuse
def test_sigterm_unmounts_with_a_process_inside(fs: Mount) -> None:
    inside = subprocess.Popen(["sleep", "30"], cwd=fs.p("u1"))
    try:
        fs.proc.send_signal(signal.SIGTERM)
        assert fs.proc.wait(10) == 0, fs.helper_log()
        assert not mounted(fs.mnt)
    finally:
        inside.kill()
        inside.wait()


@needs_fuse
def test_serve_returns_when_unmounted_from_outside(fs: Mount) -> None:
    subprocess.run(["umount", fs.mnt], check=True)
    assert fs.read_line() == "served"
    assert not mounted(fs.mnt)
    fs.proc.send_signal(signal.SIGTERM)
    assert fs.proc.wait(10) == 0, fs.helper_log()


@needs_fuse
def test_sigkill_leaves_a_stale_mount_that_the_next_start_cleans(fs: Mount) -> None:
    fs.proc.kill()
    fs.proc.wait()
    assert mounted(fs.mnt)
    assert not os.path.ismount(fs.mnt)  # why mounted() reads mountinfo
    with pytest.raises(OSError) as info:
        os.stat(fs.mnt)
    assert info.value.errno == errno.ENOTCONN
    fs.start()
    assert "users: 2" in fs.read("status")
    assert len(mount_entries(fs.mnt)) == 1
    assert "stale FUSE mount" in fs.helper_log()


@needs_fuse
def test_a_live_mount_is_not_taken_over(fs: Mount) -> None:
    with pytest.raises(MountError, match="working FUSE mount"):
        cleanup_stale(fs.mnt)
    second = fs.start(expect_ready=False)
    assert second.wait(15) != 0
    assert "another sipd" in fs.helper_log()
    assert fs.procs[0].poll() is None
    assert "users: 2" in fs.read("status")


# ------------------------------------------------- mountinfo, no mount needed


MOUNTINFO = (
    b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    b"42 27 0:39 / /run/sr rw,nosuid,nodev,relatime shared:7 - fuse.srfs srfs rw,user_id=0\n"
    b"43 27 0:40 / /tmp/with\\040space rw - fuse.srfs srfs rw\n"
    b"garbage\n"
)


def test_parse_mountinfo() -> None:
    entries = parse_mountinfo(MOUNTINFO)
    assert [(e.mount_point, e.fstype, e.source, e.device) for e in entries] == [
        ("/", "ext4", "/dev/sda1", "8:1"),
        ("/run/sr", "fuse.srfs", "srfs", "0:39"),
        ("/tmp/with space", "fuse.srfs", "srfs", "0:40"),
    ]


def test_mounted_and_cleanup_on_a_plain_directory(tmp_path: Path) -> None:
    assert not mounted(str(tmp_path))
    assert cleanup_stale(str(tmp_path)) is False
    assert mounted("/proc")
    with pytest.raises(MountError, match="proc"):
        cleanup_stale("/proc")

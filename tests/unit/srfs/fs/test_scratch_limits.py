"""Editors' temporary files in /run/sr: bounded per user (EDQUOT) and in all (ENOSPC).

The per-user limits are met the way a user meets them, with mktemp and cp
into the mount of a real sipd; the limit for all users, which takes many
users at the built-in figures, with the FUSE helper and small limits. The
bookkeeping itself is tested without a mount.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from srfs.fs.scratch import DEFAULT_LIMITS, ScratchLimits, ScratchQuota
from srfs.fs.tree import TreeError
from tests.sipclient import Daemon, running_sipd, wait_for
from tests.unit.srfs.fs.test_fuse import U1, U2, Mount, helper_mount, needs_fuse, ok, sh
from tests.unixusers import FakeUnix

MIB = 1 << 20


# ------------------------------------------------------------- bookkeeping


def test_quota_counts_files_and_bytes_per_uid_and_in_all() -> None:
    q = ScratchQuota(ScratchLimits(user_files=2, user_bytes=100, total_files=3, total_bytes=150))
    q.add_file(1)
    q.add_file(1)
    with pytest.raises(TreeError) as info:
        q.add_file(1)
    assert info.value.errno == errno.EDQUOT
    q.add_file(2)
    with pytest.raises(TreeError) as info:
        q.add_file(2)
    assert info.value.errno == errno.ENOSPC
    q.grow(1, 100)
    with pytest.raises(TreeError) as info:
        q.grow(1, 1)
    assert info.value.errno == errno.EDQUOT
    q.grow(2, 50)
    with pytest.raises(TreeError) as info:
        q.grow(2, 1)
    assert info.value.errno == errno.ENOSPC
    # A refusal changes nothing.
    assert (q.usage(1), q.usage(2), q.files, q.bytes) == ((2, 100), (1, 50), 3, 150)
    q.grow(1, -30)
    q.drop_file(1, 70)
    assert (q.usage(1), q.files, q.bytes) == ((1, 0), 2, 50)
    q.drop_file(1, 0)
    q.drop_file(2, 50)
    assert (q.usage(1), q.usage(2), q.files, q.bytes) == ((0, 0), (0, 0), 0, 0)


def test_default_limits() -> None:
    assert DEFAULT_LIMITS == ScratchLimits(16, 4 * MIB, 1024, 64 * MIB)
    with pytest.raises(ValueError):
        ScratchLimits(user_files=-1)


# ------------------------------------------------------------- a real sipd


@pytest.fixture
def fs_sipd(tmp_path: Path, unix: FakeUnix, mnt: Path) -> Iterator[Daemon]:
    if not os.path.exists("/dev/fuse"):
        pytest.skip("needs /dev/fuse")
    conf = tmp_path / "fs.toml"
    conf.write_text(f'mount = "{mnt}"\n')
    with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True) as daemon:
        wait_for(lambda: (mnt / "alice").exists(), "the mount")
        yield daemon
    for name in ("alice", "bob"):
        (unix[name].home / "big").unlink(missing_ok=True)


def as_user(unix: FakeUnix, name: str, script: str) -> tuple[int, str]:
    done = unix.run(["bash", "-c", script], as_user=name)
    return done.returncode, done.stderr


def test_a_user_over_their_limit_gets_edquot_and_another_user_goes_on(
    fs_sipd: Daemon, unix: FakeUnix, mnt: Path
) -> None:
    alice, bob = mnt / "alice", mnt / "bob"
    # 16 temporary files are alice's share: the 17th, in any of her directories, is refused.
    rc, err = as_user(unix, "alice", f"for i in $(seq 8); do mktemp -p {alice} >/dev/null "
                                      f"&& mktemp -p {alice}/config >/dev/null || exit 1; done")
    assert rc == 0, err
    rc, err = as_user(unix, "alice", f"mktemp -p {alice}/config")
    assert rc != 0 and "Disk quota exceeded" in err, err
    rc, err = as_user(unix, "bob", f"mktemp -p {bob} && mktemp -p {bob}/config")
    assert rc == 0, err
    assert "\nsipd_scratch_files 18\n" in (mnt / "metrics").read_text()
    assert as_user(unix, "alice", f"rm {alice}/tmp.* {alice}/config/tmp.*")[0] == 0

    # 4 MiB is alice's share of bytes: the fifth 1 MiB copy fails as it writes.
    fill = (f"head -c {MIB} /dev/zero > $HOME/big && "
            "for i in 1 2 3 4; do cp $HOME/big $(mktemp -p DIR) || exit 1; done")
    rc, err = as_user(unix, "alice", fill.replace("DIR", str(alice)))
    assert rc == 0, err
    rc, err = as_user(unix, "alice", f"cp $HOME/big $(mktemp -p {alice})")
    assert rc != 0 and "Disk quota exceeded" in err, err
    # bob's share is his own.
    rc, err = as_user(unix, "bob", fill.replace("DIR", str(bob)))
    assert rc == 0, err
    # What alice removes is hers again, once closed: the kernel tells the
    # filesystem of the failed cp's close after cp has exited.
    assert as_user(unix, "alice", f"rm {alice}/tmp.*")[0] == 0
    wait_for(lambda: f"\nsipd_scratch_bytes {4 * MIB}\n" in (mnt / "metrics").read_text(),
             "only bob's copies to be held")
    rc, err = as_user(unix, "alice", f"cp $HOME/big $(mktemp -p {alice})")
    assert rc == 0, err
    assert fs_sipd.ping() == 200


# ------------------------------------------------------------ all users


@pytest.fixture
def small() -> Iterator[Mount]:
    """The FUSE helper with 4 files and 64 KiB per user, 6 files and 96 KiB in all."""
    with helper_mount(FUSEHELPER_SCRATCH=f"4,{64 << 10},6,{96 << 10}") as m:
        yield m


def errno_of(script: str, uid: int) -> str:
    done = sh(script, uid)
    assert done.returncode != 0, script
    return done.stderr


@needs_fuse
def test_the_tree_at_its_limit_gives_enospc_to_everybody(small: Mount) -> None:
    u1, u2 = small.p("u1"), small.p("u2")
    ok(f"for i in 1 2 3 4; do mktemp -p {u1} >/dev/null || exit 1; done", U1)
    assert "Disk quota exceeded" in errno_of(f"mktemp -p {u1}", U1)
    ok(f"mktemp -p {u2} && mktemp -p {u2}/config", U2)
    # Six files in all: u2 is within its own share, the tree is not.
    assert "No space left on device" in errno_of(f"mktemp -p {u2}", U2)

    ok(f"head -c {64 << 10} /dev/zero > $(ls -d {u1}/tmp.* | head -n1)", U1)
    assert "Disk quota exceeded" in errno_of(f"echo x > $(ls -d {u1}/tmp.* | tail -n1)", U1)
    ok(f"head -c {32 << 10} /dev/zero > $(ls -d {u2}/tmp.*)", U2)
    assert "No space left on device" in errno_of(f"echo x > {u2}/config/tmp.*", U2)

    # Removing gives the memory back to everybody.
    ok(f"rm {u1}/tmp.*", U1)
    ok(f"head -c {32 << 10} /dev/zero > {u2}/config/tmp.* && mktemp -p {u2}", U2)


@needs_fuse
def test_renamed_and_removed_scratch_files_leave_nothing_counted(small: Mount) -> None:
    dnd = small.p("u1/config/dnd")
    ok(f"echo yes > {dnd}", U1)
    # Far more saves than the quota has files: each rename gives its file back.
    for value in ("no", "yes") * 6:
        ok(f"sed -i 's/.*/{value}/' {dnd}", U1)
    assert small.read("u1/config/dnd") == "yes\n"
    # A refused rename keeps the file, and its removal frees it.
    assert sh(f"sed -i 's/yes/maybe/' {dnd}", U1).returncode != 0
    ok(f"for i in 1 2 3 4; do mktemp -p {small.p('u1')} >/dev/null || exit 1; done", U1)

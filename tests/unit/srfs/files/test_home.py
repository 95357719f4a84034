"""srfs.files.home against a hostile user: run as root, with a real unprivileged uid owning a home.

Every attack is tried twice: with the setfsuid layer on (production) and
off, to show that the O_NOFOLLOW and owner checks hold on their own.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from srfs.files import home
from srfs.files.home import MAX_READ, MAX_WRITE, FileCache, HomeError, SrDir
from srfs.user import User
from tests.unit.srfs.files.srdirs import make_sr, sr_path, temp_files, thread_fs_ids
from tests.unixusers import FakeUnix, fake_unix

SECRET = b"root-only secret\n"


@pytest.fixture
def unix() -> Iterator[FakeUnix]:
    with fake_unix(pam_service=None) as u:
        yield u


@pytest.fixture(params=[True, False], ids=["setfsuid", "checks-only"])
def fsuid_layer(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    on: bool = request.param
    monkeypatch.setattr(home, "_SETFSUID", on)
    return on


@pytest.fixture
def alice(unix: FakeUnix, fsuid_layer: bool) -> User:
    return unix["alice"].user


def user_file(user: User, name: str, data: bytes, mode: int = 0o600) -> Path:
    p = sr_path(user) / name
    p.write_bytes(data)
    os.chown(p, user.uid, user.gid)
    p.chmod(mode)
    return p


def victim(unix: FakeUnix, name: str = "victim", mode: int = 0o600) -> Path:
    """A root-owned file outside any home, on the same filesystem."""
    p = unix.root / name
    p.write_bytes(SECRET)
    p.chmod(mode)
    return p


# --- normal use ------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_write_creates_sr_and_file_owned_by_user(alice: User, umask: int) -> None:
    old = os.umask(umask)
    try:
        home.write_file(alice, "passwd", b"line\n")
    finally:
        os.umask(old)
    st = os.lstat(sr_path(alice))
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
    assert (st.st_uid, st.st_gid) == (alice.uid, alice.gid)
    st = os.lstat(sr_path(alice) / "passwd")
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (alice.uid, alice.gid)
    assert home.read_file(alice, "passwd") == b"line\n"
    assert temp_files(alice) == []
    assert thread_fs_ids() == (0, 0)


def test_write_files_syncs_each_filesystem_twice_whatever_the_batch(
        unix: FakeUnix, alice: User, monkeypatch: pytest.MonkeyPatch) -> None:
    bob = unix["bob"].user
    synced: list[int] = []
    real = home._syncfs

    def counting(fd: int) -> int:
        synced.append(fd)
        return real(fd)

    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(home, "_syncfs", counting)
    monkeypatch.setattr(home.os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    errors = home.write_files([(alice, "usrloc", b"a\n"), (bob, "usrloc", b"b\n"),
                               (alice, "config", b"c\n")])
    assert errors == [None, None, None]
    assert len(synced) == 2 and fsyncs == []  # both homes are on one filesystem
    assert (sr_path(alice) / "usrloc").read_bytes() == b"a\n"
    assert (sr_path(bob) / "usrloc").read_bytes() == b"b\n"
    assert (sr_path(alice) / "config").read_bytes() == b"c\n"
    assert temp_files(alice) == [] and temp_files(bob) == []
    st = os.lstat(sr_path(bob) / "usrloc")
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (bob.uid, 0o600)


def test_write_files_syncs_each_filesystem_of_the_batch(
        alice: User, monkeypatch: pytest.MonkeyPatch) -> None:
    """A home on tmpfs beside the others: its filesystem is synced too, each twice."""
    shm = Path("/dev/shm") / f"srfs-home-{secrets.token_hex(4)}"
    shm.mkdir(mode=0o700)
    try:
        os.chown(shm, alice.uid, alice.gid)
        elsewhere = User(alice.name, alice.uid, alice.gid, str(shm))
        devices: list[int] = []
        real = home._syncfs

        def counting(fd: int) -> int:
            devices.append(os.fstat(fd).st_dev)
            return real(fd)

        monkeypatch.setattr(home, "_syncfs", counting)
        errors = home.write_files([(alice, "usrloc", b"a\n"), (elsewhere, "usrloc", b"e\n"),
                                   (alice, "config", b"c\n")])
        assert errors == [None, None, None]
        disk, tmpfs = os.stat(sr_path(alice)).st_dev, os.stat(shm).st_dev
        assert disk != tmpfs
        assert sorted(devices) == sorted([disk, tmpfs, disk, tmpfs])
        assert (shm / ".sr" / "usrloc").read_bytes() == b"e\n"
    finally:
        for path in sorted(shm.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        shm.rmdir()


def test_write_files_falls_back_to_a_sync_per_file_when_syncfs_fails(
        unix: FakeUnix, alice: User, monkeypatch: pytest.MonkeyPatch) -> None:
    bob = unix["bob"].user
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(home, "_syncfs", lambda fd: errno.EIO)
    monkeypatch.setattr(home.os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    errors = home.write_files([(alice, "usrloc", b"a\n"), (bob, "usrloc", b"b\n")])
    assert errors == [None, None]
    assert len(fsyncs) == 4  # each file's data and each directory
    assert (sr_path(bob) / "usrloc").read_bytes() == b"b\n"


def test_write_files_refuses_one_home_and_writes_the_others(
        unix: FakeUnix, alice: User) -> None:
    bob = unix["bob"].user
    make_sr(bob, mode=0o777)  # a ~/.sr others may write: refused
    errors = home.write_files([(bob, "usrloc", b"b\n"), (alice, "usrloc", b"a\n")])
    assert isinstance(errors[0], HomeError) and errors[1] is None
    assert not (sr_path(bob) / "usrloc").exists()
    assert (sr_path(alice) / "usrloc").read_bytes() == b"a\n"


def test_missing_things_are_none_not_errors(alice: User) -> None:
    assert home.read_file(alice, "passwd") is None  # no ~/.sr
    assert home.remove_file(alice, "passwd") is False
    assert not sr_path(alice).exists()  # reading never creates
    with pytest.raises(HomeError) as e:
        SrDir.open(alice)
    assert e.value.errno == errno.ENOENT
    make_sr(alice)
    assert home.read_file(alice, "passwd") is None
    with SrDir.open(alice) as sr:
        assert sr.stat("passwd") is None


def test_rewrite_replaces_content_and_inode(alice: User) -> None:
    home.write_file(alice, "usrloc", b"one\n")
    ino = os.lstat(sr_path(alice) / "usrloc").st_ino
    home.write_file(alice, "usrloc", b"two\n", fsync=False)
    assert (sr_path(alice) / "usrloc").read_bytes() == b"two\n"
    assert os.lstat(sr_path(alice) / "usrloc").st_ino != ino
    assert temp_files(alice) == []


def test_append_creates_then_appends(alice: User) -> None:
    home.append_file(alice, "acc", b"a\n")
    home.append_file(alice, "acc", b"b\n", fsync=True)
    p = sr_path(alice) / "acc"
    assert p.read_bytes() == b"a\nb\n"
    st = os.lstat(p)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (alice.uid, 0o600)


def test_remove(alice: User) -> None:
    make_sr(alice)
    user_file(alice, "config", b"dnd = yes\n")
    assert home.remove_file(alice, "config") is True
    assert not (sr_path(alice) / "config").exists()


def test_works_in_a_home_that_is_searchable_but_not_readable(alice: User) -> None:
    os.chmod(alice.home, 0o711)
    home.write_file(alice, "passwd", b"x\n")
    assert home.read_file(alice, "passwd") == b"x\n"


def test_a_stamp_is_taken_as_the_user(unix: FakeUnix) -> None:
    """What the user cannot reach has no stamp, though root could see it."""
    alice, bob = unix["alice"].user, unix["bob"].user
    make_sr(alice)
    user_file(alice, "passwd", b"x\n")
    assert home.stamp_of(alice, "passwd") is not None
    assert thread_fs_ids() == (0, 0)
    # Bob's home pointed at Alice's: her ~/.sr (0700) is closed to him.
    nosy = User(bob.name, bob.uid, bob.gid, alice.home)
    assert home.stamp_of(nosy, "passwd") is None
    assert thread_fs_ids() == (0, 0)
    # A change of the file is a new stamp.
    before = home.stamp_of(alice, "passwd")
    user_file(alice, "passwd", b"xy\n")
    assert home.stamp_of(alice, "passwd") != before


def test_stamps_of_many_users_are_each_taken_as_that_user(unix: FakeUnix) -> None:
    """stamps_of agrees with stamp_of user by user, and the thread is itself after."""
    alice, bob = unix["alice"].user, unix["bob"].user
    make_sr(alice)
    user_file(alice, "passwd", b"x\n")
    root = User("root", 0, 0, alice.home)
    nosy = User(bob.name, bob.uid, bob.gid, alice.home)  # her ~/.sr is closed to him
    users = [alice, bob, nosy, root, alice]
    single = [home.stamp_of(u, "passwd") for u in users]
    assert single[0] is not None and single[2] is None
    assert home.stamps_of(users, "passwd") == single
    assert thread_fs_ids() == (0, 0)
    assert home.stamps_of([], "passwd") == []
    with pytest.raises(ValueError):
        home.stamps_of([alice], "../passwd")


class _Refusing:
    """A libc whose setfsuid/setfsgid keep a thread identity of their own and
    ignore one uid, as the kernel would without CAP_SETUID (reported only by
    what the next call answers)."""

    def __init__(self, refused: int) -> None:
        self.refused = refused
        self.ids = [0, 0]

    def _set(self, i: int, value: int) -> int:
        had = self.ids[i]
        if value != -1 and not (i == 0 and value == self.refused):
            self.ids[i] = value
        return had

    def setfsuid(self, value: int) -> int:
        return self._set(0, value)

    def setfsgid(self, value: int) -> int:
        return self._set(1, value)


def test_stamps_of_a_switch_that_did_not_take_reads_as_a_change(
        unix: FakeUnix, monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = unix["alice"].user, unix["bob"].user
    make_sr(alice)
    user_file(alice, "passwd", b"x\n")
    fake = _Refusing(refused=bob.uid)
    monkeypatch.setattr(home, "_get_libc", lambda: fake)
    got = home.stamps_of([alice, bob, alice], "passwd")
    assert got[0] == got[2] == home.stamp_of(alice, "passwd") is not None
    assert got[1] is home.UNKNOWN_STAMP
    assert all(home.UNKNOWN_STAMP != s for s in (got[0], None))
    fake.refused = alice.uid
    assert home.stamps_of([bob, alice], "passwd")[1] is home.UNKNOWN_STAMP  # the last one too
    assert fake.ids == [0, 0]


def test_file_cache_tells_which_files_are_unchanged(unix: FakeUnix) -> None:
    alice, bob = unix["alice"].user, unix["bob"].user
    make_sr(alice)
    user_file(alice, "config", b"a = 1\n")
    cache: FileCache[bytes] = FileCache("config", bytes)
    assert cache.unchanged([alice, bob]) == [False, False]  # never read
    assert cache.get(alice) == b"a = 1\n" and cache.get(bob) is None
    assert cache.unchanged([alice, bob]) == [True, True]
    user_file(alice, "config", b"a = 22\n")
    moved = User(bob.name, bob.uid, bob.gid, bob.home + "/")
    assert cache.unchanged([alice, bob, moved]) == [False, True, False]
    assert [cache.peek(u)[0] for u in (alice, bob, moved)] == [False, True, False]
    assert thread_fs_ids() == (0, 0)


def test_bad_names_are_programming_errors(alice: User) -> None:
    make_sr(alice)
    with SrDir.open(alice) as sr:
        for name in ("../passwd", ".sr", "a/b", "", ".passwd.tmp", "x" * 65):
            with pytest.raises(ValueError):
                sr.read(name)
        with pytest.raises(ValueError):
            sr.write("passwd", b"", mode=0o666)


# --- attacks ---------------------------------------------------------------


def test_symlinked_sr_is_refused(unix: FakeUnix, alice: User) -> None:
    target = unix.root / "rootdir"
    target.mkdir(mode=0o700)
    (target / "passwd").write_bytes(SECRET)
    sr_path(alice).symlink_to(target)
    for call in (
        lambda: home.read_file(alice, "passwd"),
        lambda: home.write_file(alice, "passwd", b"evil\n"),
        lambda: home.append_file(alice, "acc", b"evil\n"),
        lambda: home.remove_file(alice, "passwd"),
    ):
        with pytest.raises(HomeError) as e:
            call()
        assert str(e.value) == "~alice/.sr is a symlink"
    assert sorted(os.listdir(target)) == ["passwd"]
    assert (target / "passwd").read_bytes() == SECRET


def test_symlinked_passwd_to_root_only_file_is_never_read(unix: FakeUnix, alice: User) -> None:
    secret = victim(unix)
    make_sr(alice)
    link = sr_path(alice) / "passwd"
    link.symlink_to(secret)
    with pytest.raises(HomeError) as e:
        home.read_file(alice, "passwd")
    # "is a symlink" means the open itself failed (O_NOFOLLOW); a followed
    # link would have been refused later, with another reason.
    assert str(e.value) == "~alice/.sr/passwd is a symlink"
    assert e.value.errno == errno.ELOOP
    with pytest.raises(HomeError, match="is a symlink"):
        FileCache("passwd", bytes).get(alice)


def test_write_over_symlinked_usrloc_replaces_the_link(unix: FakeUnix, alice: User) -> None:
    target = victim(unix, mode=0o644)
    before = os.stat(target)
    make_sr(alice)
    (sr_path(alice) / "usrloc").symlink_to(target)
    home.write_file(alice, "usrloc", b"sip:alice@192.0.2.1\n")
    assert target.read_bytes() == SECRET
    after = os.stat(target)
    assert (after.st_uid, after.st_mode, after.st_mtime_ns) == (
        before.st_uid,
        before.st_mode,
        before.st_mtime_ns,
    )
    st = os.lstat(sr_path(alice) / "usrloc")
    assert stat.S_ISREG(st.st_mode) and st.st_uid == alice.uid
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (sr_path(alice) / "usrloc").read_bytes() == b"sip:alice@192.0.2.1\n"
    assert temp_files(alice) == []


def test_dangling_symlink_creates_nothing_at_its_target(unix: FakeUnix, alice: User) -> None:
    rootdir = unix.root / "rootdir"
    rootdir.mkdir(mode=0o755)
    make_sr(alice)
    (sr_path(alice) / "acc").symlink_to(rootdir / "created")
    with pytest.raises(HomeError, match=r"^~alice/\.sr/acc is a symlink$"):
        home.append_file(alice, "acc", b"evil\n")
    (sr_path(alice) / "usrloc").symlink_to(rootdir / "created2")
    home.write_file(alice, "usrloc", b"ok\n")
    assert os.listdir(rootdir) == []


def test_symlink_to_victim_refused_for_append(unix: FakeUnix, alice: User) -> None:
    target = victim(unix, mode=0o644)
    make_sr(alice)
    (sr_path(alice) / "acc").symlink_to(target)
    with pytest.raises(HomeError, match="is a symlink"):
        home.append_file(alice, "acc", b"evil\n")
    assert target.read_bytes() == SECRET


@pytest.mark.timeout(10)
def test_fifo_is_refused_without_hanging(alice: User) -> None:
    make_sr(alice)
    for name in ("config", "acc"):
        fifo = sr_path(alice) / name
        os.mkfifo(fifo, 0o600)
        os.chown(fifo, alice.uid, alice.gid)
    with pytest.raises(HomeError) as e:
        home.read_file(alice, "config")
    assert str(e.value) == "~alice/.sr/config is not a regular file"
    with pytest.raises(HomeError, match="is not a regular file"):
        FileCache("config", bytes).get(alice)
    with pytest.raises(HomeError) as e:
        home.append_file(alice, "acc", b"x\n")
    assert str(e.value) == "~alice/.sr/acc is not a regular file"


@pytest.mark.timeout(10)
def test_fifo_with_a_reader_is_refused_for_append(alice: User) -> None:
    make_sr(alice)
    fifo = sr_path(alice) / "acc"
    os.mkfifo(fifo, 0o600)
    os.chown(fifo, alice.uid, alice.gid)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        with pytest.raises(HomeError, match="is not a regular file"):
            home.append_file(alice, "acc", b"x\n")
        assert os.read(reader, 100) == b""  # nothing was written
    finally:
        os.close(reader)


@pytest.mark.parametrize("mode", [0o600, 0o644])
def test_hard_link_to_root_file_is_refused(
    unix: FakeUnix, alice: User, fsuid_layer: bool, mode: int
) -> None:
    target = victim(unix, mode=mode)
    make_sr(alice)
    for name in ("passwd", "acc", "usrloc"):
        os.link(target, sr_path(alice) / name)
    with pytest.raises(HomeError) as e:
        home.read_file(alice, "passwd")
    if fsuid_layer and mode == 0o600:
        assert e.value.errno == errno.EACCES  # the second layer stops it first
    else:
        assert str(e.value) == "~alice/.sr/passwd is owned by uid 0"
    with pytest.raises(HomeError):
        home.append_file(alice, "acc", b"evil\n")
    home.write_file(alice, "usrloc", b"mine\n")  # replaces the entry only
    assert target.read_bytes() == SECRET
    assert os.stat(target).st_nlink == 3  # passwd and acc links remain
    assert os.lstat(sr_path(alice) / "usrloc").st_uid == alice.uid


def test_file_of_another_user_is_refused(unix: FakeUnix, alice: User) -> None:
    bob = unix["bob"]
    make_sr(alice)
    p = user_file(alice, "config", b"x\n", mode=0o644)
    os.chown(p, bob.uid, bob.gid)
    with pytest.raises(HomeError) as e:
        home.read_file(alice, "config")
    assert str(e.value) == f"~alice/.sr/config is owned by uid {bob.uid}"


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o720, 0o702])
def test_group_or_world_writable_sr_is_refused(alice: User, mode: int) -> None:
    make_sr(alice, mode=mode)
    user_file(alice, "passwd", b"x\n")
    calls: list[Callable[[], object]] = [
        lambda: home.read_file(alice, "passwd"),
        lambda: home.write_file(alice, "passwd", b"y\n"),
    ]
    for call in calls:
        with pytest.raises(HomeError) as e:
            call()
        assert str(e.value) == "~alice/.sr is group or world writable"
    assert (sr_path(alice) / "passwd").read_bytes() == b"x\n"


def test_group_writable_file_is_refused(alice: User) -> None:
    make_sr(alice)
    user_file(alice, "passwd", b"x\n", mode=0o620)
    with pytest.raises(HomeError) as e:
        home.read_file(alice, "passwd")
    assert str(e.value) == "~alice/.sr/passwd is group or world writable"


def test_sr_owned_by_someone_else_is_refused(unix: FakeUnix, alice: User) -> None:
    p = make_sr(alice, mode=0o755)  # readable, so the owner check is what refuses
    os.chown(p, unix["bob"].uid, unix["bob"].gid)
    with pytest.raises(HomeError, match=r"^~alice/\.sr is owned by uid \d+$"):
        home.write_file(alice, "passwd", b"x\n")


def test_sr_that_is_a_file_is_refused(alice: User) -> None:
    p = sr_path(alice)
    p.write_bytes(b"")
    os.chown(p, alice.uid, alice.gid)
    with pytest.raises(HomeError) as e:
        home.write_file(alice, "passwd", b"x\n")
    assert str(e.value) == "~alice/.sr is not a directory"


def test_unsafe_home_is_refused(unix: FakeUnix, alice: User) -> None:
    os.chmod(alice.home, 0o777)
    with pytest.raises(HomeError, match="^~alice is world writable$"):
        home.read_file(alice, "passwd")
    os.chmod(alice.home, 0o755)
    os.chown(alice.home, unix["bob"].uid, unix["bob"].gid)
    with pytest.raises(HomeError, match=r"^~alice is owned by uid \d+$"):
        home.read_file(alice, "passwd")
    relative = User(alice.name, alice.uid, alice.gid, "home/alice")
    with pytest.raises(HomeError, match="no usable home"):
        home.read_file(relative, "passwd")


def test_oversize_files(alice: User) -> None:
    make_sr(alice)
    user_file(alice, "usrloc", b"x" * MAX_READ)
    assert home.read_file(alice, "usrloc") == b"x" * MAX_READ
    user_file(alice, "usrloc", b"x" * (MAX_READ + 1))
    with pytest.raises(HomeError) as e:
        home.read_file(alice, "usrloc")
    assert e.value.errno == errno.EFBIG
    with pytest.raises(HomeError) as e:
        home.write_file(alice, "config", b"x" * (MAX_WRITE + 1))
    assert e.value.errno == errno.EFBIG
    assert not (sr_path(alice) / "config").exists()
    home.append_file(alice, "acc", b"x" * 10, max_size=15)
    with pytest.raises(HomeError) as e:
        home.append_file(alice, "acc", b"x" * 10, max_size=15)
    assert e.value.errno == errno.EFBIG
    assert (sr_path(alice) / "acc").read_bytes() == b"x" * 10
    assert temp_files(alice) == []


def test_no_temp_file_left_when_fsync_fails(alice: User, monkeypatch: pytest.MonkeyPatch) -> None:
    home.write_file(alice, "passwd", b"old\n")

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(HomeError) as e:
        home.write_file(alice, "passwd", b"new\n")
    assert e.value.errno == errno.EIO
    assert (sr_path(alice) / "passwd").read_bytes() == b"old\n"
    assert temp_files(alice) == []
    assert thread_fs_ids() == (0, 0)


def test_no_temp_file_left_when_rename_fails(alice: User) -> None:
    make_sr(alice)
    d = sr_path(alice) / "usrloc"
    d.mkdir()
    os.chown(d, alice.uid, alice.gid)
    with pytest.raises(HomeError) as e:
        home.write_file(alice, "usrloc", b"x\n")
    assert str(e.value) == "~alice/.sr/usrloc is a directory"
    assert temp_files(alice) == []


def test_temp_name_collision_is_retried(alice: User, monkeypatch: pytest.MonkeyPatch) -> None:
    make_sr(alice)
    names = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(names))
    # The user pre-creates the first name as a symlink to a root file.
    (sr_path(alice) / ".passwd.aaaa.tmp").symlink_to("/etc/passwd")
    home.write_file(alice, "passwd", b"x\n")
    assert (sr_path(alice) / "passwd").read_bytes() == b"x\n"
    assert os.path.islink(sr_path(alice) / ".passwd.aaaa.tmp")


# --- the setfsuid layer ----------------------------------------------------


def test_fs_identity_is_the_users_during_and_root_after(
    unix: FakeUnix, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(home, "_SETFSUID", True)
    alice = unix["alice"].user
    seen: list[tuple[int, int]] = []
    real_fstat = os.fstat

    def spying_fstat(fd: int) -> os.stat_result:
        seen.append(thread_fs_ids())
        return real_fstat(fd)

    monkeypatch.setattr(os, "fstat", spying_fstat)
    home.write_file(alice, "passwd", b"x\n")
    assert seen and set(seen) == {(alice.uid, alice.gid)}
    assert thread_fs_ids() == (0, 0)


def test_fs_identity_is_per_thread(unix: FakeUnix, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(home, "_SETFSUID", True)
    alice = unix["alice"].user
    inside = threading.Event()
    release = threading.Event()
    real_fstat = os.fstat

    def slow_fstat(fd: int) -> os.stat_result:
        if threading.current_thread().name == "worker":
            inside.set()
            release.wait(5)
        return real_fstat(fd)

    monkeypatch.setattr(os, "fstat", slow_fstat)
    worker = threading.Thread(target=home.read_file, args=(alice, "passwd"), name="worker")
    worker.start()
    try:
        assert inside.wait(5)
        assert thread_fs_ids() == (0, 0)  # the main thread is still root
    finally:
        release.set()
        worker.join(5)
    assert not worker.is_alive()


# --- cached reads ----------------------------------------------------------


def test_file_cache_reads_again_only_on_change(alice: User) -> None:
    parsed: list[bytes] = []

    def parse(data: bytes) -> bytes:
        parsed.append(data)
        return data

    cache = FileCache("config", parse)
    assert cache.get(alice) is None  # no ~/.sr
    make_sr(alice)
    assert cache.get(alice) is None  # no file
    p = user_file(alice, "config", b"a = 1\n")
    assert cache.get(alice) == b"a = 1\n"
    assert cache.get(alice) == b"a = 1\n"
    assert parsed == [b"a = 1\n"]
    # A hand edit of the same size, in place (same inode): mtime/ctime change.
    st = os.stat(p)
    with open(p, "r+b") as f:
        f.write(b"a = 2\n")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cache.get(alice) == b"a = 2\n"
    home.write_file(alice, "config", b"a = 3\n")  # atomic replace: new inode
    assert cache.get(alice) == b"a = 3\n"
    assert len(parsed) == 3
    os.chmod(p, 0o660)  # now unsafe: the cached value must not be served
    with pytest.raises(HomeError) as first:
        cache.get(alice)
    with pytest.raises(HomeError) as second:
        cache.get(alice)
    assert first.value is second.value
    os.unlink(p)
    assert cache.get(alice) is None


def test_lock_excludes_a_second_writer(alice: User) -> None:
    make_sr(alice)
    with SrDir.open(alice) as one, SrDir.open(alice) as two:
        with one.lock():
            with pytest.raises(HomeError) as e:
                with two.lock(timeout=0.1):
                    pass
            assert e.value.errno == errno.EWOULDBLOCK
        with two.lock(timeout=0.1):
            pass

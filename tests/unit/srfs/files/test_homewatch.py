"""srfs.files.homewatch: a cached file is known unchanged by inotify, and every change still counts.

Each test reads a file through a :class:`FileCache` with a watch, changes
it (or something near it) the way a user, an editor or sipd itself would,
and asks at once, without sleeping: the kernel queues the event before the
change's system call returns, so the very next look must see it. Whether a
look took a stamp is counted by wrapping :func:`srfs.files.home.stamp_of`.
Run as root with real unprivileged uids owning the homes, with the
setfsuid layer on and off (as in ``test_home.py``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from srfs.files import home, homewatch
from srfs.files.home import FileCache, SrDir, Stamp
from srfs.files.homewatch import IN_Q_OVERFLOW, HomeWatch
from srfs.user import User
from tests.unit.srfs.files.test_home import make_sr, sr_path, thread_fs_ids, user_file
from tests.unixusers import FakeUnix, fake_unix


@pytest.fixture
def unix() -> Iterator[FakeUnix]:
    with fake_unix(pam_service=None) as u:
        yield u


@pytest.fixture(params=[True, False], ids=["setfsuid", "checks-only"])
def alice(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
          unix: FakeUnix) -> User:
    monkeypatch.setattr(home, "_SETFSUID", request.param)
    return unix["alice"].user


@pytest.fixture
def watch() -> Iterator[HomeWatch]:
    w = HomeWatch(["passwd", "config"])
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def stamps(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files whose stamp was taken, in order."""
    taken: list[str] = []
    real = home.stamp_of

    def counted(user: User, name: str) -> Stamp | None:
        taken.append(name)
        return real(user, name)

    monkeypatch.setattr(home, "stamp_of", counted)
    return taken


def cached(alice: User, watch: HomeWatch, data: bytes | None = b"a = 1\n",
           name: str = "config") -> FileCache[bytes]:
    make_sr(alice)
    if data is not None:
        user_file(alice, name, data)
    cache: FileCache[bytes] = FileCache(name, bytes, watch=watch)
    assert cache.get(alice) == data
    return cache


def test_an_unchanged_file_costs_no_stamp(alice: User, watch: HomeWatch,
                                          stamps: list[str]) -> None:
    cache = cached(alice, watch)
    for _ in range(3):
        assert cache.peek(alice) == (True, b"a = 1\n")
    assert stamps == []
    assert cache.unchanged([alice]) == [True]
    assert watch.watches == 1
    assert thread_fs_ids() == (0, 0)
    # Without a watch every look is a stamp, as before.
    plain: FileCache[bytes] = FileCache("config", bytes)
    plain.get(alice)
    assert plain.peek(alice) == (True, b"a = 1\n")
    assert stamps == ["config"]


def _write_in_place(p: Path) -> None:
    with open(p, "r+b") as f:
        f.write(b"a = 2\n")


def _append(p: Path) -> None:
    with open(p, "ab") as f:
        f.write(b"b = 2\n")


def _truncate(p: Path) -> None:
    os.truncate(p, 0)


def _replace(p: Path) -> None:
    # What sippasswd and editors do: a new file renamed over the old.
    tmp = p.with_name(".config.new")
    tmp.write_bytes(b"a = 3\n")
    st = p.stat()
    os.chown(tmp, st.st_uid, st.st_gid)
    os.rename(tmp, p)


def _chmod(p: Path) -> None:
    p.chmod(0o644)


def _touch(p: Path) -> None:
    os.utime(p)


def _unlink(p: Path) -> None:
    p.unlink()


def _move_away(p: Path) -> None:
    p.rename(p.with_name("config.old"))


def _sr_moved(p: Path) -> None:
    sr = p.parent
    sr.rename(sr.with_name(".sr.old"))


def _sr_swapped(p: Path) -> None:
    # The old directory moved aside and a new one, with its own config, put in its place.
    sr = p.parent
    sr.rename(sr.with_name(".sr.old"))
    sr.mkdir(mode=0o700)
    st = sr.with_name(".sr.old").stat()
    os.chown(sr, st.st_uid, st.st_gid)
    (sr / "config").write_bytes(b"a = 9\n")
    os.chown(sr / "config", st.st_uid, st.st_gid)


def _sr_removed(p: Path) -> None:
    shutil.rmtree(p.parent)


@pytest.mark.parametrize("change", [
    _write_in_place, _append, _truncate, _replace, _chmod, _touch, _unlink, _move_away,
    _sr_moved, _sr_swapped, _sr_removed,
])
def test_a_change_counts_at_the_next_look(alice: User, watch: HomeWatch,
                                          change: object) -> None:
    cache = cached(alice, watch)
    assert cache.peek(alice)[0]
    assert callable(change)
    change(sr_path(alice) / "config")
    assert cache.peek(alice) == (False, None)
    assert cache.unchanged([alice]) == [False]


def test_a_change_of_the_directory_itself_costs_a_stamp(alice: User, watch: HomeWatch,
                                                         stamps: list[str]) -> None:
    """Its mode, say: the stamp then decides, as it did before there were watches."""
    cache = cached(alice, watch)
    sr_path(alice).chmod(0o750)
    assert cache.peek(alice) == (True, b"a = 1\n")
    assert stamps == ["config"]


def test_a_file_created_where_there_was_none_counts(alice: User, watch: HomeWatch,
                                                    stamps: list[str]) -> None:
    cache = cached(alice, watch, None)
    assert cache.peek(alice) == (True, None)
    assert stamps == []
    user_file(alice, "config", b"new = 1\n")
    assert cache.peek(alice) == (False, None)
    assert cache.get(alice) == b"new = 1\n"


def test_sipds_own_writes_in_sr_change_nothing(alice: User, watch: HomeWatch,
                                               stamps: list[str]) -> None:
    cache = cached(alice, watch)
    home.write_file(alice, "usrloc", b"line\n", fsync=False)
    home.append_file(alice, "acc", b"record\n")
    home.write_file(alice, "usrloc", b"line 2\n", fsync=False)
    assert cache.peek(alice) == (True, b"a = 1\n")
    assert stamps == []


def test_a_change_of_another_cached_name_costs_one_stamp(alice: User, watch: HomeWatch,
                                                         stamps: list[str]) -> None:
    cache = cached(alice, watch)
    user_file(alice, "passwd", b"x\n")  # a name the watch hears, not this cache's file
    assert cache.peek(alice) == (True, b"a = 1\n")
    assert stamps == ["config"]
    # The stamp found it unchanged: the watch vouches for it again.
    assert cache.peek(alice) == (True, b"a = 1\n")
    assert stamps == ["config"]
    _write_in_place(sr_path(alice) / "config")
    assert cache.peek(alice) == (False, None)


def test_a_file_of_two_links_is_checked_by_stamp(alice: User, watch: HomeWatch,
                                                 stamps: list[str]) -> None:
    make_sr(alice)
    elsewhere = Path(alice.home) / "config.link"
    p = user_file(alice, "config", b"a = 1\n")
    os.link(p, elsewhere)
    cache: FileCache[bytes] = FileCache("config", bytes, watch=watch)
    assert cache.get(alice) == b"a = 1\n"
    assert cache.peek(alice)[0]
    assert stamps == ["config"]
    # Written through the other link: no event in ~/.sr, a new stamp.
    with open(elsewhere, "r+b") as f:
        f.write(b"a = 5\n")
    assert cache.peek(alice) == (False, None)


def test_an_overflow_of_the_queue_costs_every_user_a_stamp(unix: FakeUnix, watch: HomeWatch,
                                                            stamps: list[str]) -> None:
    alice, bob = unix["alice"].user, unix["bob"].user
    caches = [cached(alice, watch), cached(bob, watch)]
    # What the kernel says when it lost events: wd -1, no name.
    watch._apply(struct.pack("iIII", -1, IN_Q_OVERFLOW, 0, 0))
    assert watch.overflows == 1
    assert [c.peek(u)[0] for c, u in zip(caches, (alice, bob), strict=True)] == [True, True]
    assert stamps == ["config", "config"]
    assert [c.peek(u)[0] for c, u in zip(caches, (alice, bob), strict=True)] == [True, True]
    assert stamps == ["config", "config"]


def test_a_filesystem_not_known_local_is_checked_by_stamp(
        alice: User, watch: HomeWatch, stamps: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(homewatch, "LOCAL_FILESYSTEMS", frozenset())
    cache = cached(alice, watch)
    assert watch.watches == 0
    assert cache.peek(alice) == (True, b"a = 1\n")
    assert stamps == ["config"]


def test_no_watch_for_a_directory_moved_after_it_was_opened(alice: User,
                                                            watch: HomeWatch) -> None:
    make_sr(alice)
    with SrDir.open(alice) as sr:
        _sr_swapped(sr_path(alice) / "config")
        assert sr.watch(watch) is None
        assert thread_fs_ids() == (0, 0)
    with SrDir.open(alice) as sr:
        assert sr.watch(watch) is not None


class _NoRoomLibc:
    """libc whose inotify_add_watch fails as with fs.inotify.max_user_watches reached."""

    def __init__(self, real: object) -> None:
        self._real = real

    def inotify_add_watch(self, fd: int, path: bytes, mask: int) -> int:
        ctypes.set_errno(errno.ENOSPC)
        return -1

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


def test_a_refused_watch_falls_back_to_stamps(alice: User, watch: HomeWatch, stamps: list[str],
                                              monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(watch, "_libc", _NoRoomLibc(watch._libc))
    cache = cached(alice, watch)
    assert cache.get(alice) == b"a = 1\n"
    assert watch.refused == 2 and watch.watches == 0
    assert cache.peek(alice) == (True, b"a = 1\n")
    assert stamps == ["config"]
    said = [r.getMessage() for r in caplog.records if "max_user_watches" in r.getMessage()]
    assert len(said) == 1  # once, not per refusal


def test_two_caches_of_one_user_share_the_watch(alice: User, watch: HomeWatch,
                                                stamps: list[str]) -> None:
    config = cached(alice, watch)
    user_file(alice, "passwd", b"x\n")
    passwd: FileCache[bytes] = FileCache("passwd", bytes, watch=watch)
    assert passwd.get(alice) == b"x\n"
    assert watch.watches == 1
    assert passwd.peek(alice) == (True, b"x\n")
    user_file(alice, "passwd", b"y\n")
    assert passwd.peek(alice) == (False, None)
    assert config.peek(alice) == (True, b"a = 1\n")  # by stamp, once
    assert config.peek(alice) == (True, b"a = 1\n")
    assert stamps == ["passwd", "config"]


def test_a_watch_goes_with_its_directory(alice: User, watch: HomeWatch) -> None:
    cache = cached(alice, watch)
    _sr_removed(sr_path(alice) / "config")
    assert cache.peek(alice) == (False, None)
    assert watch.watches == 0
    assert cache.get(alice) is None
    make_sr(alice)
    user_file(alice, "config", b"back = 1\n")
    assert cache.get(alice) == b"back = 1\n"
    assert watch.watches == 1 and cache.peek(alice) == (True, b"back = 1\n")


class _CountingLibc:
    def __init__(self, real: ctypes.PyDLL) -> None:
        self._real = real
        self.added = 0

    def inotify_add_watch(self, fd: int, path: bytes, mask: int) -> int:
        self.added += 1
        result: int = self._real.inotify_add_watch(fd, path, mask)
        return result

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


def test_a_directory_watched_already_is_not_watched_again(alice: User, watch: HomeWatch,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    libc = _CountingLibc(watch._libc)
    monkeypatch.setattr(watch, "_libc", libc)
    cache = cached(alice, watch)
    user_file(alice, "config", b"a = 2\n")
    assert cache.get(alice) == b"a = 2\n"
    assert libc.added == 1
    # Another directory in its place is a watch of its own.
    _sr_swapped(sr_path(alice) / "config")
    assert cache.get(alice) == b"a = 9\n"
    assert libc.added == 2 and watch.watches == 1
    assert cache.peek(alice) == (True, b"a = 9\n")


def test_a_home_read_at_start_is_found_watched_by_the_first_request(
        alice: User, watch: HomeWatch, stamps: list[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The reload of registrations at start watches each home it reads."""
    libc = _CountingLibc(watch._libc)
    monkeypatch.setattr(watch, "_libc", libc)
    make_sr(alice)
    user_file(alice, "passwd", b"x\n")
    assert home.read_file(alice, "usrloc", watch=watch) is None
    assert libc.added == 1 and watch.watches == 1
    cache: FileCache[bytes] = FileCache("passwd", bytes, watch=watch)
    assert cache.get(alice) == b"x\n"
    assert libc.added == 1
    assert cache.peek(alice) == (True, b"x\n")
    assert stamps == []


def test_a_look_at_every_member_reads_the_queue_once(unix: FakeUnix, watch: HomeWatch,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = unix["alice"].user, unix["bob"].user
    cache = cached(alice, watch)
    make_sr(bob)
    user_file(bob, "config", b"b = 1\n")
    assert cache.get(bob) == b"b = 1\n"
    reads: list[int] = []
    real = watch._drain

    def counted() -> None:
        reads.append(1)
        real()

    monkeypatch.setattr(watch, "_drain", counted)
    assert cache.unchanged([alice, bob]) == [True, True]
    assert len(reads) == 1
    user_file(bob, "config", b"b = 2\n")
    # The change is still seen, for its user only.
    assert cache.unchanged([alice, bob]) == [True, False]
    assert len(reads) == 2
    assert watch.generations(["alice", "nobody"])[1] is None

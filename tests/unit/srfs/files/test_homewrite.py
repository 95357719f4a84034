"""srfs.files._homewrite, the C path of home.write_files, against the same hostile homes.

A wheel ships it compiled (``make test-compiled`` runs this module on
it); in a checkout the test compiles ``srfs/files/_homewrite.c`` itself,
so the C code is tested on every run. The module must write what the
Python path writes, refuse what it refuses, and leave nothing behind
when it gives a file back to the Python path.
"""

from __future__ import annotations

import errno
import os
import resource
import select
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from srfs.files import home, usrloc
from srfs.files.home import HomeError
from srfs.state.location import Binding
from srfs.user import User
from tests.unit.srfs.files.srdirs import homewrite, make_sr, sr_path, temp_files, thread_fs_ids
from tests.unixusers import FakeUnix, fake_unix

Item = tuple[bytes, int, int, bytes, bytes, bytes, bytes, int]
WriteBatch = Callable[[Sequence[Item]], list[int]]
SECRET = b"root-only secret\n"


@pytest.fixture(scope="module")
def module() -> Iterator[ModuleType]:
    with homewrite() as built:
        yield built


@pytest.fixture(scope="module")
def native(module: ModuleType) -> WriteBatch:
    return module.write_batch  # type: ignore[no-any-return]


@pytest.fixture
def unix() -> Iterator[FakeUnix]:
    with fake_unix(pam_service=None) as u:
        yield u


@pytest.fixture
def on(native: WriteBatch, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """home.write_files with the C path, counting the files it took."""
    taken: list[int] = []

    def counting(batch: Sequence[Item]) -> list[int]:
        codes = native(batch)
        taken.extend(1 for code in codes if code == 0)
        return codes

    monkeypatch.setattr(home, "_write_batch", counting)
    return taken


def item(user: User, data: bytes, name: str = "usrloc", tmp: str = ".usrloc.t.tmp",
         spare: str = "", mode: int = 0o600) -> Item:
    return (os.fsencode(user.home), user.uid, user.gid, tmp.encode(), spare.encode(),
            name.encode(), data, mode)


def spare(user: User, name: str = "usrloc") -> Path:
    return sr_path(user) / home.spare_name(name)


# --- what it takes -----------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_batch_in_sound_homes_is_written_by_the_c_path(
        unix: FakeUnix, on: list[int], umask: int) -> None:
    alice, bob = unix["alice"].user, unix["bob"].user
    make_sr(alice)
    make_sr(bob)
    (sr_path(alice) / "usrloc").write_bytes(b"old\n")
    old = os.umask(umask)
    try:
        errors = home.write_files([(alice, "usrloc", b"a\n"), (bob, "usrloc", b"b\n"),
                                   (alice, "config", b"c\n")])
    finally:
        os.umask(old)
    assert errors == [None, None, None] and len(on) == 3
    for user, name, data in ((alice, "usrloc", b"a\n"), (bob, "usrloc", b"b\n"),
                             (alice, "config", b"c\n")):
        st = os.lstat(sr_path(user) / name)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert (st.st_uid, st.st_gid) == (user.uid, user.gid)
        assert (sr_path(user) / name).read_bytes() == data
    assert temp_files(alice) == temp_files(bob) == []
    # The file replaced is kept as the spare; a first file leaves none.
    assert spare(alice).read_bytes() == b"old\n"
    assert not spare(bob).exists() and not spare(alice, "config").exists()
    assert thread_fs_ids() == (0, 0)


def test_the_next_write_goes_over_the_spare_and_swaps_the_two(
        unix: FakeUnix, on: list[int]) -> None:
    # No inode is made or freed: a replaced file's blocks are not given
    # back (on a "discard" mount, the rename waited for the device).
    alice = unix["alice"].user
    make_sr(alice)
    file = sr_path(alice) / "usrloc"
    file.write_bytes(b"old\n")
    os.chown(file, alice.uid, alice.gid)
    texts = [b"a much longer first text\n" * 200, b"second\n", b"third, longer than second\n"]
    inodes = []
    for text in texts:
        assert home.write_files([(alice, "usrloc", text)]) == [None]
        inodes.append((os.lstat(file).st_ino, os.lstat(spare(alice)).st_ino))
        assert file.read_bytes() == text  # no tail of what the spare held
    assert on == [1, 1, 1]
    assert inodes[1] == inodes[0][::-1] and inodes[2] == inodes[0]
    assert spare(alice).read_bytes() == texts[1]
    for p in (file, spare(alice)):
        st = os.lstat(p)
        assert stat.S_IMODE(st.st_mode) == 0o600 and (st.st_uid, st.st_gid) == (alice.uid, alice.gid)
    assert temp_files(alice) == [] and thread_fs_ids() == (0, 0)


@pytest.mark.parametrize("kind", ["symlink", "hard link", "root's", "unwritable", "fifo"])
def test_an_unfit_spare_is_removed_not_written_and_made_anew(
        unix: FakeUnix, on: list[int], kind: str) -> None:
    alice = unix["alice"].user
    make_sr(alice)
    file = sr_path(alice) / "usrloc"
    file.write_bytes(b"old\n")
    os.chown(file, alice.uid, alice.gid)
    other = unix.root / "other"
    other.write_bytes(SECRET)
    if kind == "symlink":
        os.symlink(other, spare(alice))
    elif kind == "hard link":  # a file of alice's also linked elsewhere
        os.chown(other, alice.uid, alice.gid)
        os.link(other, spare(alice))
    elif kind == "root's":
        spare(alice).write_bytes(SECRET)
        spare(alice).chmod(0o666)  # alice could write it, but it is not hers
    elif kind == "unwritable":
        spare(alice).write_bytes(SECRET)
        os.chown(spare(alice), alice.uid, alice.gid)
        spare(alice).chmod(0o400)
    else:
        os.mkfifo(spare(alice))
    assert home.write_files([(alice, "usrloc", b"a\n")]) == [None] and on == [1]
    assert file.read_bytes() == b"a\n"
    assert other.read_bytes() == SECRET  # never written through
    # The spare is now the file replaced, ready for the next write.
    st = os.lstat(spare(alice))
    assert stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == alice.uid
    assert spare(alice).read_bytes() == b"old\n"
    assert temp_files(alice) == [] and thread_fs_ids() == (0, 0)


def test_a_spare_of_another_mode_is_written_with_the_files_mode(
        unix: FakeUnix, on: list[int]) -> None:
    alice = unix["alice"].user
    make_sr(alice)
    assert home.write_files([(alice, "usrloc", b"1\n")]) == [None]
    assert home.write_files([(alice, "usrloc", b"2\n")]) == [None]
    spare(alice).chmod(0o644)  # the user's own spare, made readable to others
    assert home.write_files([(alice, "usrloc", b"3\n")]) == [None] and on == [1, 1, 1]
    st = os.stat(sr_path(alice) / "usrloc")
    assert stat.S_IMODE(st.st_mode) == 0o600 and (sr_path(alice) / "usrloc").read_bytes() == b"3\n"


def test_a_directory_as_the_spare_is_left_alone(unix: FakeUnix, on: list[int]) -> None:
    alice = unix["alice"].user
    make_sr(alice)
    (spare(alice) / "inside").mkdir(parents=True)
    assert home.write_files([(alice, "usrloc", b"a\n")]) == [None] and on == [1]
    assert (sr_path(alice) / "usrloc").read_bytes() == b"a\n"
    assert (spare(alice) / "inside").is_dir() and temp_files(alice) == []


def test_a_setgid_sr_does_not_give_the_file_its_group(unix: FakeUnix, on: list[int]) -> None:
    alice = unix["alice"].user
    p = make_sr(alice)
    os.chown(p, alice.uid, unix["bob"].gid)
    p.chmod(0o2700)
    assert home.write_files([(alice, "usrloc", b"a\n")]) == [None] and on == [1]
    st = os.lstat(p / "usrloc")
    assert (st.st_uid, st.st_gid) == (alice.uid, alice.gid)


def test_a_first_write_makes_sr_on_the_python_path(unix: FakeUnix, on: list[int]) -> None:
    alice = unix["alice"].user
    assert home.write_files([(alice, "usrloc", b"a\n")]) == [None]
    assert on == []  # the C path makes no directory
    st = os.lstat(sr_path(alice))
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == alice.uid
    assert (sr_path(alice) / "usrloc").read_bytes() == b"a\n"


# --- what it leaves to the Python path, which refuses it --------------------


def test_a_symlinked_sr_is_refused_and_never_followed(unix: FakeUnix, on: list[int]) -> None:
    alice = unix["alice"].user
    elsewhere = Path(alice.home) / "elsewhere"
    elsewhere.mkdir()
    os.chown(elsewhere, alice.uid, alice.gid)
    os.symlink(elsewhere, sr_path(alice))
    errors = home.write_files([(alice, "usrloc", b"a\n")])
    assert isinstance(errors[0], HomeError) and "symlink" in str(errors[0])
    assert on == [] and list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("mode, owner, reason", [
    (0o770, "alice", "group or world writable"),
    (0o707, "alice", "group or world writable"),
    (0o755, "bob", "owned by uid"),  # readable: the owner is what counts
    (0o755, "root", "owned by uid 0"),
])
def test_an_unsound_sr_is_refused(unix: FakeUnix, on: list[int], mode: int, owner: str,
                                  reason: str) -> None:
    alice = unix["alice"].user
    p = make_sr(alice, mode)
    uid = 0 if owner == "root" else unix[owner].uid
    os.chown(p, uid, 0)
    errors = home.write_files([(alice, "usrloc", b"a\n")])
    assert isinstance(errors[0], HomeError) and reason in str(errors[0])
    assert on == [] and os.listdir(p) == []


def test_a_world_writable_home_is_refused(unix: FakeUnix, on: list[int]) -> None:
    alice = unix["alice"].user
    make_sr(alice)
    Path(alice.home).chmod(0o777)
    errors = home.write_files([(alice, "usrloc", b"a\n")])
    assert isinstance(errors[0], HomeError) and "world writable" in str(errors[0])
    assert on == [] and os.listdir(sr_path(alice)) == []


def test_a_symlink_in_place_of_the_file_is_replaced_not_followed(
        unix: FakeUnix, on: list[int]) -> None:
    alice = unix["alice"].user
    make_sr(alice)
    victim = unix.root / "victim"
    victim.write_bytes(SECRET)
    os.symlink(victim, sr_path(alice) / "usrloc")
    assert home.write_files([(alice, "usrloc", b"a\n")]) == [None] and on == [1]
    assert victim.read_bytes() == SECRET
    assert not (sr_path(alice) / "usrloc").is_symlink()
    assert (sr_path(alice) / "usrloc").read_bytes() == b"a\n"
    assert not spare(alice).exists()  # the link was replaced, not kept


def test_a_directory_in_place_of_the_file_is_refused_with_nothing_left(
        unix: FakeUnix, on: list[int]) -> None:
    alice, bob = unix["alice"].user, unix["bob"].user
    make_sr(alice)
    make_sr(bob)
    (sr_path(alice) / "usrloc").mkdir()
    errors = home.write_files([(alice, "usrloc", b"a\n"), (bob, "usrloc", b"b\n")])
    assert isinstance(errors[0], HomeError) and "is a directory" in str(errors[0])
    assert errors[1] is None and on == [1]
    assert temp_files(alice) == [] and (sr_path(bob) / "usrloc").read_bytes() == b"b\n"
    assert not spare(alice).exists() and (sr_path(alice) / "usrloc").is_dir()
    assert thread_fs_ids() == (0, 0)


# --- the module itself --------------------------------------------------------


def test_a_file_it_cannot_write_gets_its_errno_and_leaves_nothing(
        unix: FakeUnix, native: WriteBatch) -> None:
    alice, bob = unix["alice"].user, unix["bob"].user
    make_sr(alice)
    (sr_path(alice) / "usrloc").write_bytes(b"old\n")
    (sr_path(alice) / ".usrloc.taken.tmp").write_bytes(b"someone's\n")
    codes = native([item(alice, b"new\n", tmp=".usrloc.taken.tmp"),  # the name is taken
                    item(bob, b"b\n"),  # no ~/.sr
                    item(alice, b"c\n", name="config")])
    assert codes == [errno.EEXIST, errno.ENOENT, 0]
    assert (sr_path(alice) / "usrloc").read_bytes() == b"old\n"
    assert (sr_path(alice) / ".usrloc.taken.tmp").read_bytes() == b"someone's\n"
    assert (sr_path(alice) / "config").read_bytes() == b"c\n"
    assert sorted(os.listdir(sr_path(alice))) == [".usrloc.taken.tmp", "config", "usrloc"]
    assert thread_fs_ids() == (0, 0)


@pytest.mark.parametrize("spare_name", ["", ".usrloc.spare"])
def test_a_file_is_written_as_its_user(unix: FakeUnix, native: WriteBatch,
                                       spare_name: str) -> None:
    # ~/.sr is the user's and 0500: root could write there, the user cannot.
    alice = unix["alice"].user
    make_sr(alice, 0o500)
    try:
        assert native([item(alice, b"a\n", spare=spare_name)]) == [errno.EACCES]
        assert os.listdir(sr_path(alice)) == []
    finally:
        sr_path(alice).chmod(0o700)


@pytest.mark.parametrize("use_spare", [False, True])
def test_a_write_that_fails_leaves_the_old_file_and_no_spare(
        unix: FakeUnix, native: WriteBatch, use_spare: bool) -> None:
    alice = unix["alice"].user
    make_sr(alice)
    (sr_path(alice) / "usrloc").write_bytes(b"old\n")
    spare_name = home.spare_name("usrloc") if use_spare else ""
    if use_spare:
        spare(alice).write_bytes(b"older\n")
        os.chown(spare(alice), alice.uid, alice.gid)
    # A file size limit stops the write half way (EFBIG, not SIGXFSZ).
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        resource.setrlimit(resource.RLIMIT_FSIZE, (4, limits[1]))
        codes = native([item(alice, b"far more than four bytes\n", spare=spare_name)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    assert codes == [errno.EFBIG]
    assert (sr_path(alice) / "usrloc").read_bytes() == b"old\n"
    assert os.listdir(sr_path(alice)) == ["usrloc"] and thread_fs_ids() == (0, 0)


@pytest.mark.parametrize("bad", [
    (b"/home/x", 0, 0, b".t.tmp", b"", b"usrloc", b"", 0o600),  # root's own files
    (b"/home/x", 1000, 1000, b".t.tmp", b"", b"usrloc", b"", 0o666),  # others may write
    (b"/home/x", 1000, 1000, b".t.tmp", b"", b"../usrloc", b"", 0o600),
    (b"/home/x", 1000, 1000, b"../t.tmp", b"", b"usrloc", b"", 0o600),
    (b"/home/x", 1000, 1000, b".t.tmp", b"../s", b"usrloc", b"", 0o600),
    (b"/home/x", 1000, 1000, b".t.tmp", b"usrloc", b"usrloc", b"", 0o600),  # itself
    (b"/home/x", 1000, 1000, b"", b"", b"usrloc", b"", 0o600),
])
def test_what_the_python_path_never_hands_it_is_refused(
        native: WriteBatch, bad: Item) -> None:
    with pytest.raises(ValueError):
        native([bad])


def test_the_c_path_is_not_taken_when_the_thread_acts_as_a_user(
        unix: FakeUnix, on: list[int]) -> None:
    # Nested in another identity (or with the setfsuid layer off) the
    # Python path, which checks and restores it, does the work.
    alice = unix["alice"].user
    make_sr(alice)
    with home.as_user(alice):
        assert home.write_files([(alice, "usrloc", b"a\n")]) == [None]
    assert on == [] and (sr_path(alice) / "usrloc").read_bytes() == b"a\n"


# --- the writing thread (Writer, home.FileWriter) ------------------------------


def serving(writer: Any) -> tuple[threading.Thread, list[Any]]:
    """A thread in writer.serve() until it returns; what it returned."""
    back: list[Any] = []
    thread = threading.Thread(target=lambda: back.append(writer.serve()), daemon=True)
    thread.start()
    return thread, back


def readable(fd: int, timeout: float = 5.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def test_the_writer_writes_batches_in_order_and_says_which(
        unix: FakeUnix, module: ModuleType) -> None:
    alice, bob = unix["alice"].user, unix["bob"].user
    make_sr(alice)
    make_sr(bob)
    writer = module.Writer()
    first, second = 7, 3  # the caller's numbers, in the order of the queue
    writer.submit(first, [item(alice, b"a1\n", spare=".usrloc.spare"),
                           item(bob, b"b1\n", spare=".usrloc.spare")], True)
    writer.submit(second, [item(alice, b"a2\n", spare=".usrloc.spare")], True)
    thread, back = serving(writer)
    try:
        seen: list[int] = []
        while len(seen) < 2:
            assert readable(writer.fileno())
            seen += writer.collect()
        assert seen == [first, second]
        assert writer.collect() == []
        assert (sr_path(alice) / "usrloc").read_bytes() == b"a2\n"
        assert (sr_path(bob) / "usrloc").read_bytes() == b"b1\n"
        assert (sr_path(alice) / "usrloc").stat().st_uid == alice.uid
        assert temp_files(alice) == [] and temp_files(bob) == []
    finally:
        writer.close()
        thread.join(5)
    assert back == [None] and not thread.is_alive()


def test_a_batch_with_a_file_it_did_not_write_comes_back_to_python(
        unix: FakeUnix, module: ModuleType) -> None:
    alice, bob = unix["alice"].user, unix["bob"].user
    make_sr(alice)  # bob has no ~/.sr: the C path makes none
    writer = module.Writer()
    ticket = 1
    writer.submit(ticket, [item(alice, b"a\n"), item(bob, b"b\n")], True)
    thread, back = serving(writer)
    thread.join(5)
    writer.close()
    assert back == [(ticket, [0, errno.ENOENT])]
    assert writer.collect() == []
    assert (sr_path(alice) / "usrloc").read_bytes() == b"a\n"
    assert not sr_path(bob).exists()


def test_a_batch_not_submitted_whole_comes_back_once_written(
        unix: FakeUnix, module: ModuleType) -> None:
    alice = unix["alice"].user
    make_sr(alice)
    writer = module.Writer()
    ticket = 1
    writer.submit(ticket, [item(alice, b"a\n")], False)
    thread, back = serving(writer)
    thread.join(5)
    writer.close()
    assert back == [(ticket, [0])]
    assert (sr_path(alice) / "usrloc").read_bytes() == b"a\n"


def test_close_writes_what_is_queued_then_refuses_more(
        unix: FakeUnix, module: ModuleType) -> None:
    alice = unix["alice"].user
    make_sr(alice)
    writer = module.Writer()
    tickets = [1, 2, 3]
    for n in tickets:
        writer.submit(n, [item(alice, b"%d\n" % n)], True)
    writer.close()
    with pytest.raises(RuntimeError):
        writer.submit(4, [item(alice, b"late\n")], True)
    assert writer.serve() is None  # in this thread: it writes the queue, then ends
    assert writer.collect() == tickets
    assert (sr_path(alice) / "usrloc").read_bytes() == b"3\n"


def test_the_writer_copies_a_batch_and_checks_it_at_submit(module: ModuleType) -> None:
    writer = module.Writer()
    data = bytearray(b"x")
    with pytest.raises(TypeError):
        writer.submit(1, [(b"/home/x", 1000, 1000, b".t.tmp", b"", b"usrloc", data, 0o600)],
                      True)
    with pytest.raises(ValueError):
        writer.submit(1, [(b"/home/x", 0, 0, b".t.tmp", b"", b"usrloc", b"", 0o600)], True)
    writer.close()
    assert writer.serve() is None


@pytest.fixture
def file_writer(module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[home.FileWriter]:
    monkeypatch.setattr(home, "_Writer", module.Writer)
    monkeypatch.setattr(home, "_write_batch", module.write_batch)
    assert home.FileWriter.available()
    writer = home.FileWriter()
    yield writer
    writer.close()


def test_file_writer_finishes_in_python_what_the_c_path_left(
        unix: FakeUnix, file_writer: home.FileWriter) -> None:
    alice, bob = unix["alice"].user, unix["bob"].user
    make_sr(alice)
    # bob has no ~/.sr (the Python path makes it); a file too big is refused there.
    big = b"x" * (home.MAX_WRITE + 1)
    ticket = file_writer.submit([(alice, "usrloc", b"a\n"), (bob, "usrloc", b"b\n"),
                                 (alice, "acc", big)])
    thread, back = serving(file_writer)
    thread.join(5)
    assert not thread.is_alive()
    got_ticket, errors = back[0]
    assert got_ticket == ticket
    assert errors[0] is None and errors[1] is None
    assert isinstance(errors[2], HomeError)
    assert (sr_path(bob) / "usrloc").read_bytes() == b"b\n"
    assert (sr_path(alice) / "usrloc").read_bytes() == b"a\n"
    assert file_writer.collect() == []


def test_file_writer_collects_whole_batches(
        unix: FakeUnix, file_writer: home.FileWriter) -> None:
    alice, bob = unix["alice"].user, unix["bob"].user
    make_sr(alice)
    make_sr(bob)
    ticket = file_writer.submit([(alice, "usrloc", b"a\n"), (bob, "usrloc", b"b\n")])
    thread, back = serving(file_writer)
    try:
        assert readable(file_writer.fileno())
        assert file_writer.collect() == [(ticket, 2)]
    finally:
        file_writer.close()
        thread.join(5)
    assert back == [None]


# --- one sync for a checksummed file over a spare of its run --------------------


@contextmanager
def traced(calls: str) -> Iterator[list[str]]:
    """The names of the system calls ``calls`` (strace's -e trace=) that this
    thread makes inside the block, in order, as strace(1) attached to it sees them."""
    names: list[str] = []
    with tempfile.TemporaryDirectory(prefix="srfs-strace-") as out:
        log = Path(out) / "log"
        tracer = subprocess.Popen(
            ["strace", "-qq", "-e", f"trace={calls}", "-e", "signal=none", "-o", str(log),
             "-p", str(threading.get_native_id())],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while _tracer_of_this_thread() == 0:
                assert tracer.poll() is None and time.monotonic() < deadline, "strace did not attach"
                time.sleep(0.01)
            yield names
        finally:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(10)
        names.extend(line.partition("(")[0] for line in log.read_text().splitlines())


def _tracer_of_this_thread() -> int:
    for line in Path("/proc/thread-self/status").read_text().splitlines():
        if line.startswith("TracerPid:"):
            return int(line.split()[1])
    return 0


def stamped(run: str, seq: int, contact: str) -> bytes:
    """A usrloc text as sipd writes it: its first line names its run and write."""
    binding = Binding(aor="alice", user="alice", contact=contact, expires=2e9, registered=1e9)
    return usrloc.render_file([binding], 1e9, usrloc.Version(run, seq)).encode()


def checked(user: User, data: bytes) -> Item:
    return (*item(user, data, spare=home.spare_name("usrloc")), True)  # type: ignore[return-value]


def test_a_checksummed_file_over_a_spare_of_its_run_is_swapped_then_synced_once(
        unix: FakeUnix, native: WriteBatch) -> None:
    alice = unix["alice"].user
    make_sr(alice)
    file = sr_path(alice) / "usrloc"
    run, other = "0123456789abcdef", "fedcba9876543210"
    texts = [stamped(run, n, f"sip:alice@192.0.2.{n}") for n in range(1, 5)]
    # The file and its spare as an earlier run left them: the next two
    # writes go over a spare of another run, and are made durable before
    # the swap (the reader could not tell which is newer).
    for path, seq in ((file, 9), (spare(alice), 8)):
        path.write_bytes(stamped(other, seq, "sip:alice@192.0.2.99"))
        os.chown(path, alice.uid, alice.gid)
    for text in texts[:2]:
        with traced("syncfs,renameat,renameat2") as calls:
            assert native([checked(alice, text)]) == [0]
        assert calls == ["syncfs", "renameat2", "syncfs"]
    assert spare(alice).read_bytes() == texts[0]
    # Now the spare is this run's: the swap comes first, one sync after.
    with traced("syncfs,renameat,renameat2") as calls:
        assert native([checked(alice, texts[2])]) == [0]
    assert calls == ["renameat2", "syncfs"]
    assert file.read_bytes() == texts[2] and spare(alice).read_bytes() == texts[1]
    # Not marked checksummed, the same file takes both syncs.
    with traced("syncfs,renameat,renameat2") as calls:
        assert native([item(alice, texts[3], spare=home.spare_name("usrloc"))]) == [0]
    assert calls == ["syncfs", "renameat2", "syncfs"]
    assert file.read_bytes() == texts[3] and spare(alice).read_bytes() == texts[2]
    assert temp_files(alice) == [] and thread_fs_ids() == (0, 0)


def test_one_file_of_another_run_gives_the_whole_batch_both_syncs(
        unix: FakeUnix, native: WriteBatch) -> None:
    alice, bob = unix["alice"].user, unix["bob"].user
    run = "0123456789abcdef"
    for user in (alice, bob):
        make_sr(user)
        for name, seq in (("usrloc", 2), (home.spare_name("usrloc"), 1)):
            (sr_path(user) / name).write_bytes(stamped(run, seq, "sip:x@192.0.2.1"))
            os.chown(sr_path(user) / name, user.uid, user.gid)
    (sr_path(bob) / home.spare_name("usrloc")).write_bytes(b"# sipd registrations\n")
    a, b = stamped(run, 3, "sip:a@192.0.2.3"), stamped(run, 4, "sip:b@192.0.2.4")
    with traced("syncfs,renameat,renameat2") as calls:
        assert native([checked(alice, a), checked(bob, b)]) == [0, 0]
    # alice's file is swapped at once, bob's waits for the first sync.
    assert calls == ["renameat2", "syncfs", "renameat2", "syncfs"]
    assert (sr_path(alice) / "usrloc").read_bytes() == a
    assert (sr_path(bob) / "usrloc").read_bytes() == b

"""srfs.files._homewrite, the C path of home.write_files, against the same hostile homes.

A wheel ships it compiled (``make test-compiled`` runs this module on
it); in a checkout the test compiles ``srfs/files/_homewrite.c`` itself,
so the C code is tested on every run. The module must write what the
Python path writes, refuse what it refuses, and leave nothing behind
when it gives a file back to the Python path.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import stat
import subprocess
import sysconfig
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType

import pytest

from srfs.files import home
from srfs.files.home import HomeError
from srfs.user import User
from tests import REPO
from tests.unixusers import FakeUnix, fake_unix

WriteBatch = Callable[[Sequence[tuple[bytes, int, int, bytes, bytes, bytes, int]]], list[int]]
SECRET = b"root-only secret\n"


def _compile() -> Iterator[ModuleType]:
    """The checkout's C file, compiled as setup.py's build would, and imported."""
    out = Path(tempfile.mkdtemp(prefix="srfs-homewrite-"))
    try:
        target = out / f"_homewrite{sysconfig.get_config_var('EXT_SUFFIX')}"
        cc = os.environ.get("CC") or shutil.which("cc") or "gcc"
        subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror",
                        f"-I{sysconfig.get_paths()['include']}",
                        str(REPO / "srfs" / "files" / "_homewrite.c"), "-o", str(target)],
                       check=True, capture_output=True, text=True)
        spec = importlib.util.spec_from_file_location("srfs.files._homewrite", target)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        shutil.rmtree(out)


@pytest.fixture(scope="module")
def native() -> Iterator[WriteBatch]:
    if home._write_batch is not None:  # the wheel's own
        yield home._write_batch
        return
    yield from (m.write_batch for m in _compile())


@pytest.fixture
def unix() -> Iterator[FakeUnix]:
    with fake_unix(pam_service=None) as u:
        yield u


@pytest.fixture
def on(native: WriteBatch, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """home.write_files with the C path, counting the files it took."""
    taken: list[int] = []

    def counting(batch: Sequence[tuple[bytes, int, int, bytes, bytes, bytes, int]]) -> list[int]:
        codes = native(batch)
        taken.extend(1 for code in codes if code == 0)
        return codes

    monkeypatch.setattr(home, "_write_batch", counting)
    return taken


def sr(user: User) -> Path:
    return Path(user.home) / ".sr"


def make_sr(user: User, mode: int = 0o700) -> Path:
    p = sr(user)
    p.mkdir()
    os.chown(p, user.uid, user.gid)
    p.chmod(mode)
    return p


def leftovers(user: User) -> list[str]:
    return [n for n in os.listdir(sr(user)) if n.endswith(".tmp")]


def fs_ids() -> tuple[int, int]:
    fields = {}
    for line in Path("/proc/thread-self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return int(fields["Uid"][3]), int(fields["Gid"][3])


def item(user: User, data: bytes, name: str = "usrloc", tmp: str = ".usrloc.t.tmp",
         mode: int = 0o600) -> tuple[bytes, int, int, bytes, bytes, bytes, int]:
    return (os.fsencode(user.home), user.uid, user.gid, tmp.encode(), name.encode(), data, mode)


# --- what it takes -----------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_batch_in_sound_homes_is_written_by_the_c_path(
        unix: FakeUnix, on: list[int], umask: int) -> None:
    alice, bob = unix["alice"].user, unix["bob"].user
    make_sr(alice)
    make_sr(bob)
    (sr(alice) / "usrloc").write_bytes(b"old\n")
    old = os.umask(umask)
    try:
        errors = home.write_files([(alice, "usrloc", b"a\n"), (bob, "usrloc", b"b\n"),
                                   (alice, "config", b"c\n")])
    finally:
        os.umask(old)
    assert errors == [None, None, None] and len(on) == 3
    for user, name, data in ((alice, "usrloc", b"a\n"), (bob, "usrloc", b"b\n"),
                             (alice, "config", b"c\n")):
        st = os.lstat(sr(user) / name)
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert (st.st_uid, st.st_gid) == (user.uid, user.gid)
        assert (sr(user) / name).read_bytes() == data
    assert leftovers(alice) == leftovers(bob) == []
    assert fs_ids() == (0, 0)


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
    st = os.lstat(sr(alice))
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == alice.uid
    assert (sr(alice) / "usrloc").read_bytes() == b"a\n"


# --- what it leaves to the Python path, which refuses it --------------------


def test_a_symlinked_sr_is_refused_and_never_followed(unix: FakeUnix, on: list[int]) -> None:
    alice = unix["alice"].user
    elsewhere = Path(alice.home) / "elsewhere"
    elsewhere.mkdir()
    os.chown(elsewhere, alice.uid, alice.gid)
    os.symlink(elsewhere, sr(alice))
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
    assert on == [] and os.listdir(sr(alice)) == []


def test_a_symlink_in_place_of_the_file_is_replaced_not_followed(
        unix: FakeUnix, on: list[int]) -> None:
    alice = unix["alice"].user
    make_sr(alice)
    victim = unix.root / "victim"
    victim.write_bytes(SECRET)
    os.symlink(victim, sr(alice) / "usrloc")
    assert home.write_files([(alice, "usrloc", b"a\n")]) == [None] and on == [1]
    assert victim.read_bytes() == SECRET
    assert not (sr(alice) / "usrloc").is_symlink()
    assert (sr(alice) / "usrloc").read_bytes() == b"a\n"


def test_a_directory_in_place_of_the_file_is_refused_with_nothing_left(
        unix: FakeUnix, on: list[int]) -> None:
    alice, bob = unix["alice"].user, unix["bob"].user
    make_sr(alice)
    make_sr(bob)
    (sr(alice) / "usrloc").mkdir()
    errors = home.write_files([(alice, "usrloc", b"a\n"), (bob, "usrloc", b"b\n")])
    assert isinstance(errors[0], HomeError) and "is a directory" in str(errors[0])
    assert errors[1] is None and on == [1]
    assert leftovers(alice) == [] and (sr(bob) / "usrloc").read_bytes() == b"b\n"
    assert fs_ids() == (0, 0)


# --- the module itself --------------------------------------------------------


def test_a_file_it_cannot_write_gets_its_errno_and_leaves_nothing(
        unix: FakeUnix, native: WriteBatch) -> None:
    alice, bob = unix["alice"].user, unix["bob"].user
    make_sr(alice)
    (sr(alice) / "usrloc").write_bytes(b"old\n")
    (sr(alice) / ".usrloc.taken.tmp").write_bytes(b"someone's\n")
    codes = native([item(alice, b"new\n", tmp=".usrloc.taken.tmp"),  # the name is taken
                    item(bob, b"b\n"),  # no ~/.sr
                    item(alice, b"c\n", name="config")])
    assert codes == [errno.EEXIST, errno.ENOENT, 0]
    assert (sr(alice) / "usrloc").read_bytes() == b"old\n"
    assert (sr(alice) / ".usrloc.taken.tmp").read_bytes() == b"someone's\n"
    assert (sr(alice) / "config").read_bytes() == b"c\n"
    assert sorted(os.listdir(sr(alice))) == [".usrloc.taken.tmp", "config", "usrloc"]
    assert fs_ids() == (0, 0)


def test_a_file_is_written_as_its_user(unix: FakeUnix, native: WriteBatch) -> None:
    # ~/.sr is the user's and 0500: root could write there, the user cannot.
    alice = unix["alice"].user
    make_sr(alice, 0o500)
    try:
        assert native([item(alice, b"a\n")]) == [errno.EACCES]
        assert os.listdir(sr(alice)) == []
    finally:
        sr(alice).chmod(0o700)


@pytest.mark.parametrize("bad", [
    (b"/home/x", 0, 0, b".t.tmp", b"usrloc", b"", 0o600),  # root's own files
    (b"/home/x", 1000, 1000, b".t.tmp", b"usrloc", b"", 0o666),  # others may write
    (b"/home/x", 1000, 1000, b".t.tmp", b"../usrloc", b"", 0o600),
    (b"/home/x", 1000, 1000, b"../t.tmp", b"usrloc", b"", 0o600),
])
def test_what_the_python_path_never_hands_it_is_refused(
        native: WriteBatch, bad: tuple[bytes, int, int, bytes, bytes, bytes, int]) -> None:
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
    assert on == [] and (sr(alice) / "usrloc").read_bytes() == b"a\n"

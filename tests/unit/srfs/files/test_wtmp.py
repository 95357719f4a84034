"""srfs.files.wtmp against the real readers: util-linux ``last`` and coreutils ``who``.

Only temporary files are written; a guard checks that the host's own
``/var/log/wtmp`` and ``/var/run/utmp`` are left as they were.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import stat
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from srfs.files import wtmp
from srfs.files.wtmp import (
    DEAD_PROCESS,
    USER_PROCESS,
    LineAllocator,
    LoginRecorder,
    Utmp,
    WtmpError,
    WtmpUnavailable,
    iter_records,
    make_record,
)

pytestmark = pytest.mark.skipif(
    wtmp.UNAVAILABLE_REASON is not None, reason=f"wtmp unavailable: {wtmp.UNAVAILABLE_REASON}"
)

T0 = 1_700_000_000.0  # Tue 14 Nov 2023 22:13:20 UTC
LAST = "/usr/bin/last"
WHO = shutil.which("who")
ENV = {"TZ": "UTC", "LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def _fingerprint(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@pytest.fixture(autouse=True)
def _host_files_untouched() -> Iterator[None]:
    paths = (wtmp.DEFAULT_WTMP, wtmp.DEFAULT_UTMP)
    before = [_fingerprint(p) for p in paths]
    yield
    assert [_fingerprint(p) for p in paths] == before


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "wtmp", tmp_path / "utmp"


@pytest.fixture
def rec(files: tuple[Path, Path]) -> LoginRecorder:
    return LoginRecorder(*files)


def last(path: Path, *args: str) -> str:
    if not os.access(LAST, os.X_OK):
        pytest.skip(f"{LAST} (util-linux) is not installed")
    return subprocess.run(
        [LAST, "-w", *args, "-f", str(path)], env=ENV, capture_output=True, text=True, check=True
    ).stdout


def who(path: Path) -> str:
    if WHO is None:
        pytest.skip("who (coreutils) is not installed")
    return subprocess.run(
        [WHO, str(path)], env=ENV, capture_output=True, text=True, check=True
    ).stdout


def last_lines(path: Path, *args: str) -> list[list[str]]:
    """The session lines of ``last`` output, split into words."""
    out = last(path, *args)
    return [ln.split() for ln in out.splitlines() if ln.strip() and " begins " not in ln]


def user_lines(path: Path) -> dict[str, Utmp]:
    """utmp entries that ``who`` would list, by line."""
    return {r.line: r for r in iter_records(path) if r.ut_type == USER_PROCESS}


# -- the struct -----------------------------------------------------------


def test_struct_is_the_glibc_x86_64_layout() -> None:
    assert ctypes.sizeof(Utmp) == wtmp.UTMP_SIZE == 384
    offsets = {name: getattr(Utmp, name).offset for name, *_ in Utmp._fields_}
    assert offsets == {
        "ut_type": 0,
        "ut_pid": 4,
        "ut_line": 8,
        "ut_id": 40,
        "ut_user": 44,
        "ut_host": 76,
        "ut_exit": 332,
        "ut_session": 336,
        "ut_tv_sec": 340,
        "ut_tv_usec": 344,
        "ut_addr_v6": 348,
        "unused": 364,
    }


def test_unavailable_platform_is_reported_not_crashed(
    monkeypatch: pytest.MonkeyPatch, files: tuple[Path, Path]
) -> None:
    monkeypatch.setattr(wtmp, "_LIBC", None)
    monkeypatch.setattr(wtmp, "_REASON", "struct utmp layout unknown on aarch64")
    with pytest.raises(WtmpUnavailable, match="aarch64"):
        LoginRecorder(*files)
    assert not files[0].exists() and not files[1].exists()


def test_make_record_fields() -> None:
    r = make_record(USER_PROCESS, "sip/12", "jan", "[2001:DB8::5]", 4242, T0 + 0.25)
    assert (r.ut_type, r.ut_pid, r.line, r.ut_id, r.user) == (7, 4242, "sip/12", b"p/12", "jan")
    assert r.host == "2001:db8::5"
    assert r.addr == socket.inet_pton(socket.AF_INET6, "2001:db8::5")
    assert (r.ut_tv_sec, r.ut_tv_usec) == (int(T0), 250_000)
    v4 = make_record(USER_PROCESS, "sip/1", "jan", "192.0.2.10", 1, T0)
    assert v4.addr == socket.inet_aton("192.0.2.10") + bytes(12)
    mapped = make_record(USER_PROCESS, "sip/1", "jan", "::ffff:192.0.2.10", 1, T0)
    assert (mapped.host, mapped.addr) == ("192.0.2.10", v4.addr)
    named = make_record(USER_PROCESS, "sip/1", "jan", "pbx.example.org", 1, T0)
    assert (named.host, named.addr) == ("pbx.example.org", bytes(16))
    # Cut to the field size, as login(1) does.
    assert make_record(USER_PROCESS, "sip/1", "u" * 40, "h", 1, T0).user == "u" * 32


def test_make_record_refuses_what_would_corrupt_a_record() -> None:
    with pytest.raises(ValueError, match="NUL"):
        make_record(USER_PROCESS, "sip/1", "ja\0n", "h", 1, T0)
    with pytest.raises(ValueError, match="line"):
        make_record(USER_PROCESS, "sip/" + "1" * 40, "jan", "h", 1, T0)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="time"):
            make_record(USER_PROCESS, "sip/1", "jan", "h", 1, bad)
    with pytest.raises(WtmpError, match="2038"):
        make_record(USER_PROCESS, "sip/1", "jan", "h", 1, 2.0**31)


# -- last and who -----------------------------------------------------------


def test_login_logout_in_last(rec: LoginRecorder, files: tuple[Path, Path]) -> None:
    wtmp_file, _ = files
    line = rec.login("jan", "192.0.2.10", T0)
    assert line == "sip/1"
    assert last_lines(wtmp_file)[0][:3] == ["jan", "sip/1", "192.0.2.10"]
    # Not "still logged in": last wants /proc/<ut_pid>/loginuid == jan's uid.
    assert "gone - no logout" in last(wtmp_file)

    rec.logout(line, T0 + 50 * 60)
    words = last_lines(wtmp_file)
    assert len(words) == 1
    assert words[0][:3] == ["jan", "sip/1", "192.0.2.10"]
    assert words[0][-1] == "(00:50)"
    assert "22:13 - 23:03" in last(wtmp_file)
    types = [(r.ut_type, r.line, r.user) for r in iter_records(wtmp_file)]
    assert types == [(USER_PROCESS, "sip/1", "jan"), (DEAD_PROCESS, "sip/1", "")]


def test_who_shows_the_line_until_logout(rec: LoginRecorder, files: tuple[Path, Path]) -> None:
    _, utmp_file = files
    line = rec.login("jan", "192.0.2.10", T0)
    out = who(utmp_file).split()
    assert out[:2] == ["jan", "sip/1"] and "(192.0.2.10)" in out
    entry = user_lines(utmp_file)["sip/1"]
    assert (entry.ut_id, entry.ut_pid) == (b"ip/1", os.getpid())

    rec.logout(line, T0 + 60)
    assert who(utmp_file) == ""
    # pututline reused the same slot rather than appending.
    assert [(r.ut_type, r.line) for r in iter_records(utmp_file)] == [(DEAD_PROCESS, "sip/1")]


def test_ipv6_host(rec: LoginRecorder, files: tuple[Path, Path]) -> None:
    wtmp_file, utmp_file = files
    line = rec.login("bob", "2001:db8::5", T0)
    rec.logout(line, T0 + 90)
    assert last_lines(wtmp_file)[0][:3] == ["bob", "sip/1", "2001:db8::5"]
    # -i prints ut_addr_v6 instead of ut_host: proves the inet_pton bytes.
    assert last_lines(wtmp_file, "-i")[0][:3] == ["bob", "sip/1", "2001:db8::5"]
    assert last_lines(wtmp_file)[0][-1] == "(00:01)"

    rec.login("bob", "fe80::1%eth0", T0)
    assert "(fe80::1%eth0)" in who(utmp_file)


def test_lines_are_reused_lowest_first(rec: LoginRecorder) -> None:
    lines = [rec.login(u, "192.0.2.1", T0) for u in ("a", "b", "c", "d")]
    assert lines == ["sip/1", "sip/2", "sip/3", "sip/4"]
    rec.logout("sip/3", T0 + 1)
    rec.logout("sip/1", T0 + 1)
    assert rec.login("e", "192.0.2.1", T0 + 2) == "sip/1"
    assert rec.login("f", "192.0.2.1", T0 + 2) == "sip/3"
    assert rec.login("g", "192.0.2.1", T0 + 2) == "sip/5"
    in_use = rec.lines_in_use()
    assert [(s.line, s.user) for s in in_use] == [
        ("sip/1", "e"),
        ("sip/2", "b"),
        ("sip/3", "f"),
        ("sip/4", "d"),
        ("sip/5", "g"),
    ]
    assert in_use[0].since == T0 + 2 and in_use[0].host == "192.0.2.1"


def test_close_stale_after_a_crash(files: tuple[Path, Path]) -> None:
    wtmp_file, utmp_file = files
    crashed = LoginRecorder(*files)
    crashed.login("jan", "192.0.2.10", T0)
    crashed.login("bob", "2001:db8::5", T0)
    crashed.logout(crashed.login("eve", "192.0.2.11", T0), T0 + 60)
    # A line that is not ours must survive.
    foreign = make_record(USER_PROCESS, "pts/0", "root", "203.0.113.1", os.getpid(), T0)
    utmp_file.write_bytes(utmp_file.read_bytes() + bytes(foreign))
    assert last(wtmp_file).count("gone - no logout") == 2
    del crashed  # the daemon died: nothing logged these lines out

    restarted = LoginRecorder(*files)
    assert restarted.close_stale(T0 + 3600) == 2
    assert set(user_lines(utmp_file)) == {"pts/0"}
    assert len(list(iter_records(utmp_file))) == 4  # overwritten in place, none appended
    out = last(wtmp_file)
    assert "still logged in" not in out and "gone - no logout" not in out
    assert out.count("(01:00)") == 2
    # Idempotent, and the lines are free again.
    assert restarted.close_stale(T0 + 3601) == 0
    assert restarted.login("jan", "192.0.2.10", T0 + 3602) == "sip/1"


def test_close_stale_leaves_own_lines(rec: LoginRecorder, files: tuple[Path, Path]) -> None:
    line = rec.login("jan", "192.0.2.10", T0)
    assert rec.close_stale(T0 + 1) == 0
    assert set(user_lines(files[1])) == {line}
    rec.logout(line, T0 + 2)


def test_close_stale_without_utmp(rec: LoginRecorder, files: tuple[Path, Path]) -> None:
    assert rec.close_stale(T0) == 0
    assert not files[1].exists()


def test_concurrent_logins_get_distinct_lines(rec: LoginRecorder, files: tuple[Path, Path]) -> None:
    wtmp_file, utmp_file = files
    threads, per_thread = 8, 25
    got: list[list[str]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def worker(i: int) -> None:
        start.wait()
        for k in range(per_thread):
            got[i].append(rec.login(f"u{i}", f"192.0.2.{k + 1}", T0 + k))

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    lines = [ln for chunk in got for ln in chunk]
    total = threads * per_thread
    assert sorted(lines) == sorted(f"sip/{n}" for n in range(1, total + 1))
    assert set(user_lines(utmp_file)) == set(lines)
    assert len(list(iter_records(wtmp_file))) == total

    def closer(chunk: list[str]) -> None:
        for ln in chunk:
            rec.logout(ln, T0 + 100)

    pool = [threading.Thread(target=closer, args=(chunk,)) for chunk in got]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert user_lines(utmp_file) == {}
    assert rec.lines_in_use() == []
    assert len(list(iter_records(wtmp_file))) == 2 * total


# -- files and failures -------------------------------------------------------


def test_missing_files_are_created_0664_group_utmp(
    rec: LoginRecorder, files: tuple[Path, Path]
) -> None:
    old = os.umask(0o022)
    try:
        rec.login("jan", "192.0.2.10", T0)
    finally:
        os.umask(old)
    for path in files:
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o664
        assert st.st_size == wtmp.UTMP_SIZE
        gid = wtmp._utmp_gid()
        if os.geteuid() == 0 and gid is not None:
            assert st.st_gid == gid


def test_torn_wtmp_tail_is_repaired(rec: LoginRecorder, files: tuple[Path, Path]) -> None:
    wtmp_file, _ = files
    wtmp_file.write_bytes(b"\xff" * 100)  # half a record from a writer that died
    rec.login("jan", "192.0.2.10", T0)
    assert wtmp_file.stat().st_size == wtmp.UTMP_SIZE
    assert [r.user for r in iter_records(wtmp_file)] == ["jan"]


def test_wtmp_failure_withdraws_the_login(files: tuple[Path, Path]) -> None:
    wtmp_file, utmp_file = files
    wtmp_file.mkdir()  # updwtmp's open fails (EISDIR) even for root
    rec = LoginRecorder(*files)
    with pytest.raises(WtmpError, match="wtmp"):
        rec.login("jan", "192.0.2.10", T0)
    assert rec.lines_in_use() == []
    assert user_lines(utmp_file) == {}
    wtmp_file.rmdir()
    assert rec.login("jan", "192.0.2.10", T0) == "sip/1"


def test_wtmp_not_a_regular_file(files: tuple[Path, Path]) -> None:
    wtmp_file, utmp_file = files
    os.mkfifo(wtmp_file)  # would block an open for reading that waited for a writer
    rec = LoginRecorder(*files)
    with pytest.raises(WtmpError, match="wtmp: not a regular file"):
        rec.login("jan", "192.0.2.10", T0)
    assert rec.lines_in_use() == []
    assert user_lines(utmp_file) == {}


def test_utmp_failure_writes_nothing_to_wtmp(files: tuple[Path, Path]) -> None:
    wtmp_file, utmp_file = files
    utmp_file.mkdir()
    rec = LoginRecorder(*files)
    with pytest.raises(WtmpError, match="utmp"):
        rec.login("jan", "192.0.2.10", T0)
    assert rec.lines_in_use() == []
    assert not wtmp_file.exists() or wtmp_file.stat().st_size == 0


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    rec = LoginRecorder(tmp_path / "no" / "wtmp", tmp_path / "utmp")
    with pytest.raises(WtmpError, match="cannot create"):
        rec.login("jan", "192.0.2.10", T0)


def test_logout_frees_the_line_even_when_writing_fails(
    rec: LoginRecorder, files: tuple[Path, Path]
) -> None:
    wtmp_file, _ = files
    line = rec.login("jan", "192.0.2.10", T0)
    wtmp_file.unlink()
    wtmp_file.mkdir()
    with pytest.raises(WtmpError):
        rec.logout(line, T0 + 1)
    assert rec.lines_in_use() == []
    assert user_lines(files[1]) == {}  # utmp was still updated


def test_logout_of_unknown_line(rec: LoginRecorder) -> None:
    with pytest.raises(ValueError):
        rec.logout("sip/1", T0)
    line = rec.login("jan", "192.0.2.10", T0)
    rec.logout(line, T0 + 1)
    with pytest.raises(ValueError):
        rec.logout(line, T0 + 2)


def test_bad_input_frees_the_line(rec: LoginRecorder) -> None:
    with pytest.raises(ValueError):
        rec.login("", "192.0.2.10", T0)
    with pytest.raises(ValueError):
        rec.login("jan", "bad\0host", T0)
    assert rec.login("jan", "192.0.2.10", T0) == "sip/1"


def test_all_lines_in_use(files: tuple[Path, Path]) -> None:
    rec = LoginRecorder(*files, max_lines=2)
    rec.login("a", "192.0.2.1", T0)
    rec.login("b", "192.0.2.1", T0)
    with pytest.raises(WtmpError, match="in use"):
        rec.login("c", "192.0.2.1", T0)
    assert len(rec.lines_in_use()) == 2


def test_line_allocator() -> None:
    alloc = LineAllocator(max_lines=3)
    assert [alloc.allocate() for _ in range(3)] == ["sip/1", "sip/2", "sip/3"]
    with pytest.raises(WtmpError):
        alloc.allocate()
    alloc.release("sip/2")
    assert "sip/2" not in alloc and "sip/1" in alloc
    for bad in ("sip/2", "sip/02", "pts/1", "sip/x"):
        with pytest.raises(ValueError):
            alloc.release(bad)
    assert alloc.allocate() == "sip/2"
    with pytest.raises(ValueError):
        LineAllocator(max_lines=wtmp.MAX_LINES + 1)

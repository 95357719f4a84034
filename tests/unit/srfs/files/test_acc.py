"""srfs.files.acc: the ~/.sr/acc line format and appending with rotation."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from srfs.files import home
from srfs.files.acc import (
    MAX_VALUE,
    NAME,
    ROTATED_NAME,
    AccFiles,
    AccRecord,
    LineError,
    decode_value,
    encode_value,
    format_line,
    format_records,
    parse_file,
    parse_line,
    parse_time,
)
from srfs.files.home import HomeError
from srfs.lines import format_time
from srfs.user import User
from tests import REPO
from tests.unixusers import FakeUnix, fake_unix

T0 = 1_796_406_302  # 2026-12-04T17:45:02Z


def rec(**kw: object) -> AccRecord:
    fields: dict[str, object] = {
        "time": T0,
        "event": "answer",
        "user": "jan",
        "call_id": "a84b4c76e66710@pc33.example.com",
        "from_uri": "sip:jan@example.com",
        "to_uri": "sip:bob@example.com",
        "direction": "out",
        "peer": "sip:bob@example.com",
    }
    fields.update(kw)
    return AccRecord(**fields)  # type: ignore[arg-type]


# --- format ------------------------------------------------------------------


def test_time_format() -> None:
    assert format_time(T0) == "2026-12-04T17:45:02Z"
    assert format_time(T0 + 0.999) == "2026-12-04T17:45:02Z"  # truncated, not rounded
    assert parse_time("2026-12-04T17:45:02Z") == T0
    for bad in ("2026-12-04 17:45:02Z", "2026-12-04T17:45:02", "2026-13-04T17:45:02Z",
                "2026-12-04T17:45:02+00:00", "２026-12-04T17:45:02Z", "2026-02-31T00:00:00Z",
                "2026-12-04T24:00:00Z", "0000-01-01T00:00:00Z"):
        with pytest.raises(LineError):
            parse_time(bad)


def test_documented_example_line() -> None:
    line = format_line(rec())
    assert line == (
        "2026-12-04T17:45:02Z event=answer user=jan call-id=a84b4c76e66710@pc33.example.com "
        "from=sip:jan@example.com to=sip:bob@example.com direction=out peer=sip:bob@example.com"
    )
    end = format_line(rec(event="end", duration=12, reason="bye"))
    assert end.endswith(" duration=12 reason=bye")
    fail = format_line(rec(event="failure", status=486))
    assert fail.endswith(" peer=sip:bob@example.com status=486")


@pytest.mark.parametrize("record", [
    rec(),
    rec(event="start"),
    rec(event="end", duration=0, reason="timeout"),
    rec(event="failure", status=487, reason="cancelled", direction="in", peer="sip:x@y"),
    rec(from_uri="", to_uri=""),
    rec(call_id="a b\r\nc=d"),
])
def test_round_trip(record: AccRecord) -> None:
    assert parse_line(format_line(record)) == record


HOSTILE = [
    "x\r\n2026-01-01T00:00:00Z event=end user=root call-id=1",
    "x event=end",
    "x duration=99999",
    "\u2028\u0085\x00\x1b[2J",
    "%41%",
    "sip:jan@example.com\tdirection=in",
    "caf\u00e9 \U0001f4de",
    "\udcff raw byte",
]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_cannot_add_lines_or_fields(value: str) -> None:
    r = rec(call_id=value, from_uri=value, to_uri=value, peer=value)
    line = format_line(r)
    assert "\n" not in line and "\r" not in line
    assert line.isascii() and line.isprintable()
    tokens = line.split(" ")
    # time + the seven fields: a value never makes another field appear.
    assert len(tokens) == 8
    assert [t.partition("=")[0] for t in tokens[1:]] == [
        "event", "user", "call-id", "from", "to", "direction", "peer"]
    assert parse_line(line) == r
    records, problems = parse_file(format_records([r, r]).decode())
    assert problems == [] and records == [r, r]


@given(st.text(max_size=200))
def test_encoding_round_trips_any_text(value: str) -> None:
    encoded = encode_value(value)
    assert encoded.isascii() and " " not in encoded
    assert all(0x21 <= ord(c) <= 0x7E for c in encoded)
    assert decode_value(encoded) == value


def test_plain_values_stay_readable() -> None:
    assert encode_value("sip:+441727238471@example.com;user=phone") == (
        "sip:+441727238471@example.com;user=phone")
    assert encode_value('"Jan" <sip:jan@x>') == '"Jan"%20<sip:jan@x>'
    assert encode_value("sip:%2B1@x") == "sip:%252B1@x"  # "%" itself is escaped


def test_long_values_are_cut() -> None:
    r = rec(call_id="c" * (MAX_VALUE * 3))
    back = parse_line(format_line(r))
    assert back.call_id == "c" * MAX_VALUE
    assert len(format_line(rec(peer="\u00e9" * 10_000))) < 8 * MAX_VALUE


@pytest.mark.parametrize("line,why", [
    ("", "bad time"),
    ("2026-12-04T17:45:02Z", "no event"),
    ("2026-12-04T17:45:02Z event=answer user=jan call-id=1", "no direction"),
    ("2026-12-04T17:45:02Z event=hangup user=jan call-id=1 direction=in", "unknown event"),
    ("2026-12-04T17:45:02Z event=end user=jan call-id=1 direction=sideways", "unknown direction"),
    ("2026-12-04T17:45:02Z event=end user=jan call-id=1 direction=in duration=-1", "bad duration"),
    ("2026-12-04T17:45:02Z event=end user=jan call-id=1 direction=in duration=1_0", "bad duration"),
    ("2026-12-04T17:45:02Z event=failure user=jan call-id=1 direction=in status=99", "bad status"),
    ("2026-12-04T17:45:02Z event=end user=jan call-id=1 call-id=2 direction=in", "given twice"),
    ("2026-12-04T17:45:02Z event=end user=jan call-id=%zz direction=in", "badly encoded"),
    ("2026-12-04T17:45:02Z event=end user=jan call-id=a\"b c direction=in", "not a key=value"),
    ("2026-12-04T17:45:02Z  event=end user=jan call-id=1 direction=in", "not a key=value"),
])
def test_bad_lines(line: str, why: str) -> None:
    with pytest.raises(LineError, match=why):
        parse_line(line)


def test_unknown_fields_are_skipped_for_newer_files() -> None:
    line = format_line(rec()) + " codec=PCMU"
    assert parse_line(line) == rec()


def test_parse_file_reports_bad_lines_and_keeps_the_rest() -> None:
    good = format_line(rec())
    text = f"# note by hand\n{good}\n\ngarbage\n{good}\r\n"
    records, problems = parse_file(text)
    assert records == [rec(), rec()]
    assert problems == ["line 4: bad time 'garbage': expected YYYY-MM-DDTHH:MM:SSZ"]


def test_bad_records_are_refused_where_made() -> None:
    for bad in ({"event": "hangup"}, {"direction": "up"}, {"duration": -1},
                {"status": 1000}, {"reason": "two words"}):
        with pytest.raises(ValueError):
            rec(**bad)


def test_awk_reads_fields(tmp_path: Path) -> None:
    """The man page's awk example: total talk time per peer."""
    lines = [
        format_line(rec(event="end", duration=12, reason="bye")),
        format_line(rec(event="end", duration=30, reason="bye", call_id="2", peer="sip:a b@x")),
        format_line(rec(event="end", duration=5, reason="bye", call_id="3")),
        format_line(rec(event="failure", status=486, call_id="4")),
    ]
    path = tmp_path / "acc"
    path.write_text("\n".join(lines) + "\n")
    prog = (
        '/ event=end / { for (i = 2; i <= NF; i++) { split($i, kv, "=");'
        ' f[kv[1]] = substr($i, length(kv[1]) + 2) } t[f["peer"]] += f["duration"] }'
        ' END { for (p in t) print p, t[p] }'
    )
    out = subprocess.run(["awk", prog, str(path)], capture_output=True, text=True, check=True)
    assert sorted(out.stdout.splitlines()) == ["sip:a%20b@x 30", "sip:bob@example.com 17"]


# --- the file ----------------------------------------------------------------


@pytest.fixture
def unix() -> Iterator[FakeUnix]:
    with fake_unix(pam_service=None) as u:
        yield u


@pytest.fixture(params=[True, False], ids=["setfsuid", "checks-only"])
def alice(unix: FakeUnix, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> User:
    monkeypatch.setattr(home, "_SETFSUID", request.param)
    return unix["alice"].user


def acc_path(user: User, name: str = NAME) -> Path:
    return Path(user.home) / ".sr" / name


def test_append_creates_owned_private_file(alice: User) -> None:
    old = os.umask(0o002)
    try:
        rotated = AccFiles().append(alice, [rec(user="alice"), rec(user="alice", event="end",
                                                                   duration=3, reason="bye")])
    finally:
        os.umask(old)
    assert rotated is False
    for path, mode in ((acc_path(alice).parent, 0o700), (acc_path(alice), 0o600)):
        st_ = os.lstat(path)
        assert (st_.st_uid, st_.st_gid, stat.S_IMODE(st_.st_mode)) == (alice.uid, alice.gid, mode)
    AccFiles().append(alice, [rec(user="alice", event="start", call_id="2")])
    records, problems = parse_file(acc_path(alice).read_text())
    assert problems == []
    assert [(r.event, r.call_id) for r in records] == [
        ("answer", rec().call_id), ("end", rec().call_id), ("start", "2")]


def test_empty_batch_touches_nothing(alice: User) -> None:
    assert AccFiles().append(alice, []) is False
    assert not acc_path(alice).parent.exists()


def test_symlinked_acc_is_never_followed(unix: FakeUnix, alice: User) -> None:
    victim = unix.root / "victim"
    victim.write_bytes(b"root only\n")
    victim.chmod(0o644)
    sr = acc_path(alice).parent
    sr.mkdir()
    os.chown(sr, alice.uid, alice.gid)
    sr.chmod(0o700)
    acc_path(alice).symlink_to(victim)
    with pytest.raises(HomeError, match="is a symlink"):
        AccFiles().append(alice, [rec(user="alice")])
    assert victim.read_bytes() == b"root only\n"
    # Rotation renames entries only: a link at acc.1 is replaced, not written through.
    acc_path(alice).unlink()
    acc_path(alice, ROTATED_NAME).symlink_to(victim)
    files = AccFiles(rotate_size=200)
    files.append(alice, [rec(user="alice")])
    assert files.append(alice, [rec(user="alice", call_id="2")]) is True
    assert victim.read_bytes() == b"root only\n"
    assert not acc_path(alice, ROTATED_NAME).is_symlink()
    assert parse_file(acc_path(alice, ROTATED_NAME).read_text())[0] == [rec(user="alice")]


def test_acc_owned_by_someone_else_is_refused(alice: User) -> None:
    home.append_file(alice, NAME, b"")
    os.chown(acc_path(alice), 0, 0)
    # The checks name the owner; with setfsuid the kernel refuses first.
    with pytest.raises(HomeError, match="owned by uid 0|Permission denied"):
        AccFiles().append(alice, [rec(user="alice")])
    assert acc_path(alice).read_bytes() == b""


def test_rotation_keeps_one_old_file(alice: User) -> None:
    one = format_records([rec(user="alice")])
    files = AccFiles(rotate_size=len(one) * 3)
    batches = [[rec(user="alice", call_id=str(i))] for i in range(7)]
    rotated = [files.append(alice, b) for b in batches]
    # 3 lines fill the file; the 4th and 7th appends rotate first.
    assert rotated == [False, False, False, True, False, False, True]
    current = parse_file(acc_path(alice).read_text())[0]
    old = parse_file(acc_path(alice, ROTATED_NAME).read_text())[0]
    assert [r.call_id for r in old] == ["3", "4", "5"]
    assert [r.call_id for r in current] == ["6"]
    assert os.path.getsize(acc_path(alice)) <= files.rotate_size
    st_ = os.lstat(acc_path(alice, ROTATED_NAME))
    assert (st_.st_uid, stat.S_IMODE(st_.st_mode)) == (alice.uid, 0o600)


def test_batch_larger_than_the_cap_still_goes_in(alice: User) -> None:
    batch = [rec(user="alice", call_id=str(i)) for i in range(5)]
    files = AccFiles(rotate_size=100)
    files.append(alice, batch[:1])
    assert files.append(alice, batch) is True
    assert parse_file(acc_path(alice).read_text())[0] == batch


def test_rename_in_home_dir(alice: User) -> None:
    home.write_file(alice, "acc", b"x\n")
    with home.SrDir.open(alice) as sr:
        assert sr.rename("acc", "acc.1") is True
        assert sr.rename("acc", "acc.1") is False
        with pytest.raises(ValueError):
            sr.rename("acc.1", "../escape")
    assert acc_path(alice, "acc.1").read_bytes() == b"x\n"


def test_replace_keeps_frozen_records() -> None:
    r = rec()
    with pytest.raises(AttributeError):
        r.event = "end"  # type: ignore[misc]
    assert replace(r, event="end", duration=1).duration == 1


def _man_lines(page: str, prefix: str) -> list[str]:
    text = (REPO / "man" / page).read_text()
    return [line.replace("\\-", "-") for line in text.splitlines() if line.startswith(prefix)]


def test_man_page_examples_parse_and_agree() -> None:
    lines = _man_lines("sr.5", "2026\\-12\\-04T")
    records = [parse_line(line) for line in lines]
    assert [r.event for r in records] == ["start", "answer", "end", "start", "failure"]
    start, answer, end = records[:3]
    assert end.duration == end.time - answer.time
    assert {r.user for r in records} == {"jan"}
    # What sipd itself would write for them is byte for byte the same.
    assert [format_line(r) for r in records] == lines

"""The alias map, the trusted trunks and the admin files they are read from."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from srfs.files.adminfile import (
    AdminFileError,
    WatchedAdminFile,
    read_admin_file,
    replace_admin_file,
)
from srfs.files.aliases import AliasMap, parse_aliases, valid_alias
from srfs.files.trunks import parse_trunks

EXAMPLE = """\
# name: owner
1003: jan
01727221221: jan
+441727238471: acme

  # indented comment
sales.desk :  acme
"""


def test_example_map() -> None:
    amap, problems = parse_aliases(EXAMPLE)
    assert problems == []
    assert amap.owner_of("1003") == "jan"
    assert amap.names_of("jan") == ("01727221221", "1003")
    assert amap.names_of("acme") == ("+441727238471", "sales.desk")
    assert amap.names_of("bob") == ()
    assert amap.owns("jan", "1003") and amap.owns("jan", "jan")
    assert not amap.owns("bob", "1003")
    assert not amap.owns("jan", "+441727238471")
    assert amap.render() == (
        "+441727238471: acme\nsales.desk: acme\n01727221221: jan\n1003: jan\n"
    )
    again, _ = parse_aliases(amap.render())
    assert again.owners == amap.owners


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("1003 jan", "expected 'name: owner'"),
        ("1003:", "expected 'name: owner'"),
        (": jan", "expected 'name: owner'"),
        ("10 03: jan", "not a valid SIP user part"),
        ("1003;x=y: jan", "not a valid SIP user part"),
        ("1003: jan bob", "not a valid user name"),
        ("jan: jan", "owns their own name"),
    ],
)
def test_bad_lines_are_skipped_with_a_reason(line: str, reason: str) -> None:
    amap, problems = parse_aliases(f"1004: bob\n{line}\n")
    assert amap.owners == {"1004": "bob"}
    assert len(problems) == 1
    assert problems[0].line == 2
    assert reason in problems[0].reason


def test_a_name_given_to_two_owners_keeps_its_old_owner() -> None:
    before, _ = parse_aliases("1003: jan\n1004: bob\n")
    after, problems = parse_aliases("1003: jan\n1004: bob\n1003: mallory\n1005: bob\n", before)
    assert after.owner_of("1003") == "jan"
    assert after.owner_of("1005") == "bob"
    assert [p.line for p in problems] == [3]
    assert "neither line is used" in problems[0].reason
    # Without an earlier owner the name stays unmapped: nobody gets it by accident.
    fresh, _ = parse_aliases("2000: jan\n2000: bob\n")
    assert fresh.owner_of("2000") is None
    # The same line twice is harmless.
    twice, problems = parse_aliases("2000: jan\n2000: jan\n")
    assert twice.owner_of("2000") == "jan" and "repeats line 1" in problems[0].reason


def test_a_users_own_name_cannot_be_given_away() -> None:
    amap, problems = parse_aliases("bob: jan\n1003: jan\n", is_user=lambda n: n == "bob")
    assert amap.owner_of("bob") is None
    assert amap.owns("bob", "bob") and not amap.owns("jan", "bob")
    assert "user's own address" in problems[0].reason


def test_valid_alias() -> None:
    assert valid_alias("+441727238471") and valid_alias("sales.desk")
    assert not valid_alias("") and not valid_alias("a b") and not valid_alias("x" * 129)
    assert AliasMap().owns("jan", "jan")


def test_trunks() -> None:
    tmap, problems = parse_trunks(
        "# user: networks\n"
        "acme: 198.51.100.7/32\n"
        "globex: 203.0.113.16/29, 2001:db8:5::/64\n"
        "mallory: 198.51.100.0/24\n"
        "eve: 0.0.0.0/0\n"
        "bad: 1.2.3.4/33\n"
        "worse 1.2.3.4\n"
    )
    assert tmap.user_at("198.51.100.7") == "acme"
    assert tmap.user_at("198.51.100.8") is None
    assert tmap.user_at("203.0.113.23") == "globex"
    assert tmap.user_at("[2001:db8:5::9]") == "globex"
    assert tmap.user_at("::ffff:198.51.100.7") == "acme"
    assert tmap.user_at("pbx.example.com") is None
    assert [p.line for p in problems] == [4, 5, 6, 7]
    assert "overlaps" in problems[0].reason
    assert "every address" in problems[1].reason
    assert tmap.networks_of("globex") and not tmap.networks_of("mallory")


def test_trunk_presentation_options() -> None:
    tmap, problems = parse_trunks(
        "acme: 198.51.100.7/32 present=any\n"
        "globex: 203.0.113.16/29, 2001:db8:5::/64 present=+4930* present=+4989*\n"
        "globex: 203.0.113.40/32 present=0800*\n"
        "initech: 192.0.2.9 present=\n"
        "hooli: 192.0.2.10 colour=blue\n"
        "umbrella: present=any\n"
        "plain: 192.0.2.11\n"
    )
    assert [p.line for p in problems] == [4, 5, 6]
    assert "present=any" in problems[0].reason
    assert tmap.presents("acme", "+4930123456") and tmap.presents("acme", "anything")
    assert tmap.presents("globex", "x", "+4930123") and tmap.presents("globex", "08001234")
    assert not tmap.presents("globex", "+4940123") and not tmap.presents("globex", None)
    # Without the option a trunk presents nothing but its owner's numbers.
    assert not tmap.presents("plain", "+4930123456")
    assert tmap.presentation == {"acme": ("*",), "globex": ("+4930*", "+4989*", "0800*")}
    assert "acme: 198.51.100.7/32 present=*\n" in tmap.render()
    # The options count when a reload compares maps.
    again, _ = parse_trunks("acme: 198.51.100.7/32\n")
    assert again.networks == parse_trunks("acme: 198.51.100.7/32 present=any\n")[0].networks
    assert again.presentation != tmap.presentation


def test_admin_file_checks(tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    assert read_admin_file(str(path), owner=os.getuid()) is None
    path.write_text("1003: jan\n")
    path.chmod(0o644)
    data, _ = read_admin_file(str(path), owner=os.getuid()) or (b"", None)
    assert data == b"1003: jan\n"
    path.chmod(0o664)
    with pytest.raises(AdminFileError, match="writable by group or others"):
        read_admin_file(str(path), owner=os.getuid())
    path.chmod(0o644)
    with pytest.raises(AdminFileError, match="owned by uid"):
        read_admin_file(str(path), owner=os.getuid() + 1)
    link = tmp_path / "link"
    link.symlink_to(path)
    with pytest.raises(AdminFileError, match="is a symlink"):
        read_admin_file(str(link), owner=os.getuid())
    (tmp_path / "dir").mkdir()
    with pytest.raises(AdminFileError, match="not a regular file"):
        read_admin_file(str(tmp_path / "dir"), owner=os.getuid())


def test_replace_admin_file_is_atomic_and_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    path.write_text("old\n")
    replace_admin_file(str(path), b"1003: jan\n", owner=os.getuid())
    assert path.read_bytes() == b"1003: jan\n"
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["aliases"]
    with pytest.raises(AdminFileError, match="cannot write"):
        replace_admin_file(str(tmp_path / "missing" / "aliases"), b"x", owner=os.getuid())


def test_watched_file_rereads_only_on_change(tmp_path: Path) -> None:
    path = tmp_path / "aliases"
    watched = WatchedAdminFile(str(path), owner=os.getuid())
    assert watched.poll() == b""  # absent: empty, once
    assert watched.poll() is None
    path.write_text("1003: jan\n")
    path.chmod(0o644)
    assert watched.poll() == b"1003: jan\n"
    assert watched.poll() is None
    assert watched.poll(force=True) == b"1003: jan\n"
    path.chmod(0o666)
    assert watched.poll() is None
    assert watched.problem is not None and "writable" in watched.problem
    path.chmod(0o644)
    assert watched.poll() == b"1003: jan\n"
    assert watched.problem is None
    path.unlink()
    assert watched.poll() == b""


def test_ownership_keeps_the_maps_in_force_when_a_file_goes_bad(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sipd.core.ownership import Ownership

    aliases, trunks = tmp_path / "aliases", tmp_path / "trunks"
    aliases.write_text("1003: jan\n1004: bob\n")
    trunks.write_text("acme: 198.51.100.7/32\n")
    for p in (aliases, trunks):
        p.chmod(0o644)
    own = Ownership(str(aliases), str(trunks), owner=os.getuid(), is_user=lambda n: n == "bob")
    assert own.apply(own.load())
    assert own.owns("jan", "1003") and own.owns("jan", "jan") and not own.owns("jan", "1004")
    assert own.names_of("bob") == ("1004",)
    assert own.trunk_user_at("198.51.100.7") == "acme"
    assert not own.apply(own.load())  # nothing changed, nothing re-read

    aliases.write_text("1003: jan\n1003: mallory\nbob: jan\n")
    aliases.chmod(0o644)
    caplog.clear()
    assert own.apply(own.load())
    assert own.owner_of("1003") == "jan"  # the conflict keeps the old owner
    assert own.owner_of("1004") is None  # removed from the file
    assert own.owner_of("bob") is None
    assert sum("neither line is used" in r.message for r in caplog.records) == 1
    assert sum("user's own address" in r.message for r in caplog.records) == 1

    aliases.chmod(0o666)
    caplog.clear()
    assert not own.apply(own.load())
    assert own.owns("jan", "1003")
    assert any("writable by group or others" in r.message for r in caplog.records)
    caplog.clear()
    own.apply(own.load())
    assert not caplog.records  # said once per change, not on every poll

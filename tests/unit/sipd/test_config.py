"""The settings table and what is made from it: what SIGHUP reloads."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from sipd.config import KEYS, build, changed, check_values, reread
from sipd.io.reload import LIVE


def test_every_live_key_has_its_way_into_force() -> None:
    assert set(LIVE) == {k.name for k in KEYS if k.live}


def test_reread_applies_the_command_line_again(tmp_path: Path) -> None:
    conf = tmp_path / "sipd.toml"
    conf.write_text('realm = "file.invalid"\nmax_contacts = 3\n')
    options = check_values({"realm": "option.invalid"}, source="command line")
    first = build(check_values({"realm": "file.invalid", "max_contacts": 3}, "f"), options,
                  str(conf), config_required=True)
    conf.write_text('realm = "changed.invalid"\nmax_contacts = 5\ngroup = "staff"\n')
    again = reread(first)
    assert again.realm == "option.invalid"  # the option still wins
    assert (again.max_contacts, again.group) == (5, "staff")
    assert changed(first, again) == ["group", "max_contacts"]
    assert changed(first, replace(first)) == []

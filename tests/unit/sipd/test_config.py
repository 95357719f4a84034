"""The settings table and what is made from it: the sample file, and what SIGHUP reloads."""

from __future__ import annotations

import re
import subprocess
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from sipd.config import (
    KEYS,
    Settings,
    build,
    changed,
    check_values,
    reread,
    rtpengine_address,
    sample_config,
)
from sipd.io.reload import LIVE
from tests.sipclient import ROOT, SIPD

SETTING = re.compile(r"^#(\w+) = (.*)$", re.M)


def uncommented(sample: str) -> dict[str, object]:
    """The sample with every key line's ``#`` taken away, read as TOML."""
    return tomllib.loads("\n".join(f"{k} = {v}" for k, v in SETTING.findall(sample)))


def test_the_sample_lists_every_key_once_in_table_order() -> None:
    names = [name for name, _ in SETTING.findall(sample_config())]
    assert names == [k.name for k in KEYS]


def test_the_sample_uncommented_is_the_built_in_defaults() -> None:
    values = check_values(uncommented(sample_config()), source="sample")
    settings = build(values, {}, "sample")
    defaults = Settings()
    differ = [k.name for k in KEYS if getattr(settings, k.name) != getattr(defaults, k.name)]
    # The realm's default is the host's name, which no literal can say:
    # the sample shows an example, which must pass the check all the same.
    assert differ == ["realm"]
    assert settings.realm == "sip.example.org"


def test_the_sample_says_for_each_key_whether_sighup_applies_it() -> None:
    sample = sample_config()
    for key in KEYS:
        block = sample.split(f"\n#{key.name} = ")[0].rsplit("\n\n", 1)[1]
        assert block.endswith("[reload]" if key.live else "[restart]"), (key.name, block)


def test_print_sample_config_ignores_the_configuration_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("frob = \n")
    done = subprocess.run([*SIPD, "-c", str(broken), "--print-sample-config"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30, check=False)
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == sample_config()


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


@pytest.mark.parametrize(("text", "normal", "address"), [
    ("udp:127.0.0.1:2223", "udp:127.0.0.1:2223", ("127.0.0.1", 2223)),
    ("127.0.0.1:2223", "udp:127.0.0.1:2223", ("127.0.0.1", 2223)),
    ("UDP:[::1]:22222", "udp:[::1]:22222", ("::1", 22222)),
])
def test_rtpengine_is_an_address_and_a_port(text: str, normal: str,
                                            address: tuple[str, int]) -> None:
    assert check_values({"rtpengine": text}, "f")["rtpengine"] == normal
    assert rtpengine_address(normal) == address


def test_no_rtpengine_no_relay_and_nat_once_there_is_one() -> None:
    defaults = Settings()
    assert (defaults.rtpengine, defaults.media_relay) == ("", "nat")
    assert check_values({"rtpengine": ""}, "f") == {"rtpengine": ""}


def test_sighup_changes_media_relay_for_new_calls_and_rtpengine_waits_for_a_restart() -> None:
    from sipd.io.daemon import build as build_daemon
    from sipd.io.reload import apply_settings

    settings = replace(Settings(), realm="test.invalid", wtmp=False,
                       rtpengine="udp:127.0.0.1:2223")
    daemon = build_daemon(settings, ports={5060}, hosts=["127.0.0.1"])
    assert daemon.media is not None and daemon.media.mode == "nat"
    assert daemon.proxy.forker.media is daemon.media
    live, waiting = apply_settings(daemon, replace(settings, media_relay="always",
                                                   rtpengine="udp:127.0.0.1:2224"))
    assert (live, waiting) == (["media_relay"], ["rtpengine"])
    assert daemon.media.mode == "always"
    assert daemon.settings.rtpengine == "udp:127.0.0.1:2223"

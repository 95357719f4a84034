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
    ConfigError,
    HostPort,
    Settings,
    build,
    changed,
    check_values,
    describe,
    parse_metrics_listen,
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


# --- metrics_listen ---------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:9100", HostPort("127.0.0.1", 9100)),
    (" 10.0.0.5:9101 ", HostPort("10.0.0.5", 9101)),
    ("[::1]:9100", HostPort("::1", 9100)),
    ("[2001:DB8::7]:80", HostPort("2001:db8::7", 80)),
    ("0.0.0.0:9100", HostPort("0.0.0.0", 9100)),
    ("", None),
])
def test_metrics_listen_takes_host_port_and_bracketed_ipv6(text: str,
                                                           expected: HostPort | None) -> None:
    assert parse_metrics_listen(text) == expected
    assert check_values({"metrics_listen": text}, "f") == {"metrics_listen": expected}


@pytest.mark.parametrize(("value", "message"), [
    ("localhost:9100", "bad metrics_listen address 'localhost:9100': 'localhost' is not an "
                       "IP address"),
    ("127.0.0.1", "bad metrics_listen address '127.0.0.1': expected HOST:PORT"),
    ("127.0.0.1:0", "bad metrics_listen address '127.0.0.1:0': bad port '0'"),
    ("127.0.0.1:65536", "bad port '65536'"),
    ("127.0.0.1:http", "bad port 'http'"),
    ("::1:9100", "write an IPv6 address in brackets, [ADDR]:PORT"),
    ("[::1:9100", "expected [IPv6]:PORT"),
    ("[::1]9100", "expected [IPv6]:PORT"),
    ("tcp:127.0.0.1:9100", "'tcp:127.0.0.1' is not an IP address"),
    ("http://127.0.0.1:9100/metrics", "is not an IP address"),
    (9100, "metrics_listen must be a string, HOST:PORT or [IPv6]:PORT, not 9100"),
    (["127.0.0.1:9100"], "metrics_listen must be a string"),
])
def test_metrics_listen_refuses_anything_else_in_one_line(value: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        check_values({"metrics_listen": value}, "sipd.toml")
    text = str(caught.value)
    assert text.startswith("sipd.toml: ") and message in text, text
    assert "\n" not in text


@pytest.mark.parametrize(("listen", "metrics"), [
    ("tcp:127.0.0.1:5060", "127.0.0.1:5060"),
    ("0.0.0.0:9100", "127.0.0.1:9100"),
    ("127.0.0.1:9100", "0.0.0.0:9100"),
    ("[::]:9100", "[::1]:9100"),
])
def test_metrics_listen_may_not_take_a_sip_tcp_port(listen: str, metrics: str) -> None:
    values = check_values({"listen": [listen], "metrics_listen": metrics}, "f")
    with pytest.raises(ConfigError, match="is taken by the SIP listen address"):
        build(values, {}, "f")


@pytest.mark.parametrize(("listen", "metrics"), [
    ("udp:127.0.0.1:9100", "127.0.0.1:9100"),  # UDP and TCP ports are apart
    ("[::]:9100", "127.0.0.1:9100"),  # IPv6 sockets are IPv6-only
    ("127.0.0.2:9100", "127.0.0.1:9100"),
])
def test_metrics_listen_beside_sip_listeners(listen: str, metrics: str) -> None:
    values = check_values({"listen": [listen], "metrics_listen": metrics}, "f")
    assert str(build(values, {}, "f").metrics_listen) == metrics


def test_metrics_listen_is_off_by_default_and_shown_as_written() -> None:
    assert Settings().metrics_listen is None
    assert 'metrics_listen = ""' in describe(Settings(realm="x.invalid"))
    on = build(check_values({"metrics_listen": "[::1]:9100"}, "f"), {}, "f")
    assert 'metrics_listen = "[::1]:9100"' in describe(replace(on, realm="x.invalid"))
    assert '\n#metrics_listen = ""\n' in sample_config()


def test_metrics_listen_waits_for_a_restart() -> None:
    key = next(k for k in KEYS if k.name == "metrics_listen")
    assert not key.live and "metrics_listen" not in LIVE
    old = Settings()
    new = build(check_values({"metrics_listen": "127.0.0.1:9100"}, "f"), {}, "f")
    assert changed(old, new) == ["metrics_listen"]


@pytest.mark.parametrize(("key", "value"), [
    ("member_refresh_interval", 0), ("member_refresh_interval", -5),
    ("member_refresh_interval", True), ("member_full_interval", 0),
    ("member_full_interval", "300"), ("retry_after", 0), ("retry_after", 2.5),
])
def test_directory_intervals_and_retry_after_must_be_positive(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"{key} must be"):
        check_values({key: value}, "sipd.toml")


def test_directory_settings_default_to_what_sipd_8_says() -> None:
    s = Settings()
    assert (s.member_refresh_interval, s.member_full_interval, s.retry_after) == (20.0, 300.0, 30)
    checked = check_values({"member_refresh_interval": 30, "member_full_interval": 3600,
                            "retry_after": 120}, "sipd.toml")
    assert checked == {"member_refresh_interval": 30.0, "member_full_interval": 3600.0,
                       "retry_after": 120}

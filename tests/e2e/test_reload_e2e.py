"""SIGHUP on a real sipd: sipd.conf read again, live keys in force, the rest named once."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_register_e2e import REALM, Phone
from tests.sipclient import Daemon, UdpClient, running_sipd, status_of, wait_for
from tests.unixusers import FakeUnix, give_passwords


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("alice",))


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path = tmp_path / "sipd.toml"
    path.write_text('max_contacts = 1\noverflow = "reject"\n')
    return path


@pytest.fixture
def sipd(tmp_path: Path, unix: FakeUnix, conf: Path,
         passwords: dict[str, str]) -> Iterator[Daemon]:
    with running_sipd(tmp_path, "-c", str(conf), unix=unix) as daemon:
        yield daemon
    (unix["alice"].home / ".sr" / "usrloc").unlink(missing_ok=True)


def reload(daemon: Daemon, what: str) -> None:
    seen = daemon.log.count(what)
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: daemon.log.count(what) > seen, f"{what!r} in the log")


def test_a_sighup_while_sipd_is_still_starting_waits_for_it(sipd: Daemon) -> None:
    # running_sipd returns at sipd's first answer, usually a moment before
    # it is ready: a reload asked for then (SIGHUP's default action would
    # end the process) is carried out once it is.
    sipd.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP received" in sipd.log or sipd.proc.poll() is not None,
             "the SIGHUP to be heard")
    assert sipd.proc.poll() is None, sipd.log
    log = sipd.log
    assert log.index("sipd ready") < log.index("SIGHUP received")
    sipd.ping()


def register(daemon: Daemon, password: str, port: int) -> int:
    phone = Phone(daemon, "alice", password)
    try:
        return status_of(phone.register(contact=f"<sip:alice@127.0.0.1:{port}>"))
    finally:
        phone.close()


def test_live_keys_take_effect_on_sighup(sipd: Daemon, conf: Path,
                                         passwords: dict[str, str]) -> None:
    assert register(sipd, passwords["alice"], 5901) == 200
    assert register(sipd, passwords["alice"], 5902) == 403  # max_contacts 1, overflow reject
    assert "DEBUG" not in sipd.log
    conf.write_text('max_contacts = 2\noverflow = "reject"\nlog_level = "debug"\n')
    reload(sipd, "sipd.conf reloaded")
    assert "sipd.conf reloaded: log_level = debug, max_contacts = 2 in force" in sipd.log
    assert register(sipd, passwords["alice"], 5902) == 200
    assert register(sipd, passwords["alice"], 5903) == 403
    noise = UdpClient("127.0.0.1", sipd.port)
    try:
        noise.send(b"not SIP at all\r\n\r\n")
    finally:
        noise.close()
    wait_for(lambda: ": DEBUG: dropped non-SIP input" in sipd.log, "a debug line")
    assert "in force only after a restart" not in sipd.log


def test_keys_that_need_a_restart_are_named_in_one_line(sipd: Daemon, conf: Path,
                                                        passwords: dict[str, str]) -> None:
    conf.write_text('max_contacts = 1\noverflow = "reject"\ngroup = "staff"\n'
                    'max_message_size = 4096\nrealm = "other.invalid"\n')
    reload(sipd, "in force only after a restart")
    lines = [line for line in sipd.log.splitlines() if "sipd.conf" in line]
    # The realm comes from the command line (-r), which still wins: unchanged.
    assert lines[-1].endswith(
        "sipd: WARNING: sipd.conf: group, max_message_size changed; in force only after a restart")
    # Still the old group and realm: alice registers as before.
    assert register(sipd, passwords["alice"], 5911) == 200
    # Asked again, the same keys are named again, and nothing is applied twice.
    reload(sipd, "in force only after a restart")
    assert sipd.log.count("group, max_message_size changed") == 2
    assert "sipd.conf reloaded" not in sipd.log


def test_a_bad_file_leaves_the_settings_in_force(sipd: Daemon, conf: Path,
                                                 passwords: dict[str, str]) -> None:
    conf.write_text("max_contacts = 2\nfrob = 1\n")
    reload(sipd, "not reloaded")
    assert (f"sipd: ERROR: sipd.conf not reloaded, the settings in force stay: {conf}: "
            "unknown setting 'frob'") in sipd.log
    assert register(sipd, passwords["alice"], 5921) == 200
    assert register(sipd, passwords["alice"], 5922) == 403  # still max_contacts 1
    conf.write_text("max_contacts = 1\nmax_expires = 10\n")
    reload(sipd, "not reloaded")
    assert "not reloaded, the settings in force stay: min_expires (60) is larger than max_expires (10)" in sipd.log
    assert sipd.ping() == 200

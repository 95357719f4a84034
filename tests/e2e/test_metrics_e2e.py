"""/run/sr/metrics of a real sipd after real traffic, checked by promtool.

promtool (Debian package prometheus) lints what Prometheus would scrape:
the exposition format, HELP and TYPE, counters ending in _total, base
units. The figures themselves are checked against the traffic sent.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.test_register_e2e import REALM, Phone
from tests.sipclient import Daemon, UdpClient, options, running_sipd, status_of, wait_for
from tests.unixusers import FakeUnix, give_passwords

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0,
    reason="needs /dev/fuse and root to mount the state filesystem",
)

SAMPLE = re.compile(r"(?P<series>[a-z_]+(?:\{[^}]*\})?) (?P<value>\S+)")


@pytest.fixture(scope="module")
def passwords(unix: FakeUnix) -> dict[str, str]:
    return give_passwords(unix, REALM, ("alice",))


@pytest.fixture
def busy_sipd(tmp_path: Path, unix: FakeUnix, mnt: Path,
              passwords: dict[str, str]) -> Iterator[Daemon]:
    """A sipd with a mount that has registered, refused, throttled and answered."""
    conf = tmp_path / "sipd.toml"
    conf.write_text(f'mount = "{mnt}"\n')
    try:
        with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True) as daemon:
            wait_for(lambda: (mnt / "alice").exists(), "the mount")
            phone = Phone(daemon, "alice", passwords["alice"])
            # Another port: alice's phone that registered stays unthrottled.
            guesser = Phone(daemon, "alice", "wrong")
            try:
                assert status_of(phone.register()) == 200
                # The fifth failure of one user from one address starts a block.
                for _ in range(5):
                    assert status_of(guesser.register()) == 401
                assert status_of(guesser.register()) == 403
            finally:
                phone.close()
                guesser.close()
            c = UdpClient("127.0.0.1", daemon.port)
            try:
                broken = options(via_port=c.port).replace(b"CSeq: 1 OPTIONS", b"CSeq: x OPTIONS")
                assert status_of(c.request(broken)) == 400
            finally:
                c.close()
            yield daemon
    finally:
        (unix["alice"].home / ".sr" / "usrloc").unlink(missing_ok=True)


def samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if not line.startswith("#"):
            m = SAMPLE.fullmatch(line)
            assert m, line
            out[m["series"]] = float(m["value"])
    return out


def test_promtool_passes_the_metrics_of_a_busy_sipd(busy_sipd: Daemon, mnt: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: run 'make setup' (Debian package prometheus)")
    text = (mnt / "metrics").read_text()
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=30)
    assert (r.returncode, r.stdout + r.stderr) == (0, ""), text
    got = samples(text)
    assert got["sipd_auth_failures_total"] == 5
    assert got["sipd_auth_throttled_total"] == 1
    assert got["sipd_auth_blocks_total"] == 1
    assert got["sipd_auth_successes_total"] == 1
    assert got['sipd_responses_total{class="2xx"}'] >= 2  # the REGISTER and the pings
    # 401 for each of the seven challenges and the five failures, 403, 400.
    assert got['sipd_responses_total{class="4xx"}'] == 7 + 5 + 1 + 1
    assert got['sipd_responses_total{class="5xx"}'] == 0
    assert got["sipd_bad_requests_total"] == 1
    assert got["sipd_contacts"] == 1 and got["sipd_registered_users"] == 1
    assert got["sipd_received_bytes_total"] > 0
    assert time.time() - 120 < got["sipd_start_time_seconds"] < time.time()


def test_status_stays_short_and_readable(busy_sipd: Daemon, mnt: Path) -> None:
    lines = (mnt / "status").read_text().splitlines()
    assert [line.split(": ", 1)[0] for line in lines] == [
        "version", "uptime", "listen", "transactions", "calls", "messages_in", "messages_out",
        "users", "registered_users", "aors", "contacts", "static_contacts"]
    assert "contacts: 1" in lines

"""A phone refreshing its registration costs no look-up: one job, its file, and nothing else.

A call from a caller not seen lately costs one worker trip: the look-up
that authenticates the caller also reads their call settings. A call from
a phone that registered lately costs none: its REGISTER's look-up read
them.

The account a REGISTER authenticated is remembered (``account_cache_ttl``,
600 s by default) and checked at each use by the stamp of
``~/.sr/passwd`` only (told by the watch of ``~/.sr``), so a refresh
makes no NSS call, no PAM check and no read of the file, and hands one job to a worker thread: the save of
``~/.sr/usrloc``. A password changed in the file still counts from the
next request. The figures are read from ``/run/sr/metrics``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipd.sip.digest import ha1
from tests.phone import REALM, Phone
from tests.sipclient import running_sipd, status_of, wait_for
from tests.tlshelper import SipUA, UdpChannel
from tests.unixusers import FakeUnix, UserSpec, fake_unix, give_passwords

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0,
    reason="needs /dev/fuse and root to mount the state filesystem",
)


@pytest.fixture(scope="module")
def unix() -> Iterator[FakeUnix]:
    with fake_unix([UserSpec("hot", primary="sip"), UserSpec("c1", primary="sip"),
                    UserSpec("c2", primary="sip"), UserSpec("r1", primary="sip")]) as u:
        yield u


def figure(metrics: str, name: str) -> int:
    return sum(int(float(v)) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", metrics,
                                                   re.M))


def test_a_refresh_costs_one_job_and_no_look_up(tmp_path: Path, unix: FakeUnix,
                                                mnt: Path) -> None:
    password = give_passwords(unix, REALM, ["hot"])["hot"]
    conf = tmp_path / "fs.toml"
    conf.write_text(f'mount = "{mnt}"\n')
    with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True, pam=True) as daemon:
        wait_for(lambda: (mnt / "hot").exists(), "the mount")
        with Phone(daemon.port, "hot", password) as phone:
            assert status_of(phone.register()) == 200  # the account is looked up
            assert status_of(phone.register()) == 200
            before = (mnt / "metrics").read_text()
            for _ in range(3):
                assert status_of(phone.register()) == 200
            after = (mnt / "metrics").read_text()
            jobs = figure(after, "sipd_jobs_started_total") - figure(before, "sipd_jobs_started_total")
            nss = figure(after, "sipd_nss_calls_total") - figure(before, "sipd_nss_calls_total")
            assert (jobs, nss) == (3, 0), (jobs, nss)
            # Her ~/.sr is watched: the refreshes took no stamp of the file,
            # and so the new password below is seen by the watch's event.
            assert figure(after, "sipd_home_watches") >= 1
            assert figure(after, "sipd_home_watch_overflows_total") == 0
            # A new password in the file counts at once.
            passwd = unix["hot"].home / ".sr" / "passwd"
            new = "n3w-" + password
            text = passwd.read_text()
            for algorithm in ("MD5", "SHA-256"):
                text = text.replace(ha1("hot", REALM, password, algorithm),
                                    ha1("hot", REALM, new, algorithm))
            passwd.write_text(text)
            assert status_of(phone.register()) == 401
            phone.password = new
            assert status_of(phone.register()) == 200
        (unix["hot"].home / ".sr" / "usrloc").unlink(missing_ok=True)
        assert daemon.alive()


def test_a_call_from_a_caller_not_seen_lately_costs_one_trip(tmp_path: Path, unix: FakeUnix,
                                                             mnt: Path) -> None:
    passwords = give_passwords(unix, REALM, ["c1", "c2"])
    conf = tmp_path / "fs.toml"
    conf.write_text(f'mount = "{mnt}"\nacc = false\n')
    with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True, pam=True) as daemon:
        wait_for(lambda: (mnt / "hot").exists(), "the mount")
        for caller in ("c1", "c2"):
            udp = UdpChannel("127.0.0.1", daemon.port, timeout=10)
            phone = SipUA(udp, caller, passwords[caller], via_transport="UDP",
                          sent_by=f"127.0.0.1:{udp.port}",
                          contact=f"<sip:{caller}@127.0.0.1:{udp.port}>")
            before = (mnt / "metrics").read_text()
            try:
                final, _ = phone.invite("hot")  # hot has no phone registered
            finally:
                udp.close()
            after = (mnt / "metrics").read_text()
            assert final.status == 480, final.to_bytes()
            jobs = figure(after, "sipd_jobs_started_total") - figure(before, "sipd_jobs_started_total")
            if caller == "c1":
                assert jobs >= 1  # hot's settings, looked up once
            else:
                # c2's account and settings in one trip; hot's settings are known.
                assert jobs == 1, jobs
        assert daemon.alive()


def test_a_call_from_a_phone_that_registered_lately_costs_no_trip(
        tmp_path: Path, unix: FakeUnix, mnt: Path) -> None:
    passwords = give_passwords(unix, REALM, ["hot", "r1"])
    conf = tmp_path / "fs.toml"
    conf.write_text(f'mount = "{mnt}"\nacc = false\n')
    with running_sipd(tmp_path, "-c", str(conf), unix=unix, mount=True, pam=True) as daemon:
        wait_for(lambda: (mnt / "hot").exists(), "the mount")
        # The callee's account and settings are looked up by its own REGISTER
        # (which leaves no binding: nothing rings).
        with Phone(daemon.port, "hot", passwords["hot"]) as callee:
            assert status_of(callee.register(expires=0)) == 200
        udp = UdpChannel("127.0.0.1", daemon.port, timeout=10)
        try:
            phone = SipUA(udp, "r1", passwords["r1"], via_transport="UDP",
                          sent_by=f"127.0.0.1:{udp.port}",
                          contact=f"<sip:r1@127.0.0.1:{udp.port}>")
            assert phone.register().status == 200
            before = (mnt / "metrics").read_text()
            final, _ = phone.invite("hot")
            after = (mnt / "metrics").read_text()
        finally:
            udp.close()
        assert final.status == 480, final.to_bytes()
        jobs = figure(after, "sipd_jobs_started_total") - figure(before, "sipd_jobs_started_total")
        assert jobs == 0, jobs
        for user in ("hot", "r1"):
            (unix[user].home / ".sr" / "usrloc").unlink(missing_ok=True)
        assert daemon.alive()

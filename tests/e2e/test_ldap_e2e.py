"""sipd on users from a real directory: slapd and nslcd, in a namespace of their own.

Each test gets its own slapd and nslcd (:mod:`tests.ldapdir`) and starts
sipd in their namespace, with its tree mounted there and read through
``/proc/PID/root``. What is checked is what a site with its users in LDAP
sees: membership from the directory, the load sipd puts on it when idle,
an outage of the directory, and an expiry set in it.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.ldapdir import LdapSite, ldap_site
from tests.phone import REALM, Phone
from tests.sipclient import Daemon, mount_point, running_sipd, status_of, wait_for

pytestmark = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0,
    reason="needs /dev/fuse and root to mount the state filesystem",
)


@pytest.fixture
def site() -> Iterator[LdapSite]:
    with ldap_site() as s:
        yield s


def passwords(site: LdapSite, names: list[str]) -> dict[str, str]:
    """A password per user in ``~/.sr/passwd``, set with sippasswd in the namespace."""
    out = {}
    for name in names:
        pw = f"pw-{name}-{secrets.token_hex(3)}"
        r = site.run([sys.executable, "-m", "srfs.sippasswd", "-r", REALM, "--stdin", name],
                     input=pw + "\n")
        assert r.returncode == 0, r.stderr
        out[name] = pw
    return out


@contextmanager
def ldap_sipd(site: LdapSite, tmp: Path, conf: str = "") -> Iterator[tuple[Daemon, Path]]:
    """sipd in the site's namespace, PAM on, its tree at a mount point seen from here."""
    with mount_point() as mnt:
        (tmp / "sipd.toml").write_text(f'group = "{site.group}"\nmount_enabled = true\n'
                                       f'mount = "{mnt}"\n{conf}')
        with running_sipd(tmp, "-c", str(tmp / "sipd.toml"), unix=None, pam=True, mount=True,
                          prefix=site.inside()) as daemon:
            tree = site.path(mnt)
            wait_for(lambda: (tree / "status").exists(), "the tree")
            wait_for(lambda: "sipd ready" in daemon.log, "sipd to be ready")
            yield daemon, tree


def register(daemon: Daemon, user: str, password: str, timeout: float = 5.0) -> bytes:
    with Phone(daemon.port, user, password, timeout=timeout) as phone:
        return phone.register()


def test_members_from_ldap_register_and_show_in_the_tree(site: LdapSite, tmp_path: Path) -> None:
    site.add_user("ldapjan")
    site.add_user("ldapeve", primary_sip=True)  # a member through the primary group only
    site.add_user("ldapout")
    site.add_user("ldapnew")
    site.set_members(["ldapjan"])
    pw = passwords(site, ["ldapjan", "ldapeve", "ldapout", "ldapnew"])
    with ldap_sipd(site, tmp_path) as (daemon, tree):
        assert status_of(register(daemon, "ldapjan", pw["ldapjan"])) == 200
        assert status_of(register(daemon, "ldapeve", pw["ldapeve"])) == 200
        assert status_of(register(daemon, "ldapout", pw["ldapout"])) == 401
        assert status_of(register(daemon, "ldapnew", pw["ldapnew"])) == 401
        names = set(os.listdir(tree))
        assert {"ldapjan", "ldapeve"} <= names and not {"ldapout", "ldapnew"} & names
        assert "aor=ldapjan" in (tree / "ldapjan" / "contacts").read_text()
        assert 'auth failed: user "ldapout"' in daemon.log
        # Joining the group in LDAP: in the tree at the next refresh, and the
        # refusal remembered from just before counts no longer.
        site.set_members(["ldapjan", "ldapnew"])
        joined = time.monotonic()
        wait_for(lambda: (tree / "ldapnew").exists(), "ldapnew in the tree", timeout=30)
        assert status_of(register(daemon, "ldapnew", pw["ldapnew"])) == 200
        assert time.monotonic() - joined < 30
        # Leaving it: gone from the tree and refused at the next refresh, though
        # the account answer was cached (account_cache_ttl, 60 s by default).
        assert status_of(register(daemon, "ldapjan", pw["ldapjan"])) == 200
        site.set_members(["ldapnew"])
        left = time.monotonic()
        wait_for(lambda: not (tree / "ldapjan").exists(), "ldapjan out of the tree", timeout=30)
        assert "ldapjan left group ldapsip" in daemon.log
        assert status_of(register(daemon, "ldapjan", pw["ldapjan"])) == 401
        assert time.monotonic() - left < 30


#: Searches slapd may serve an idle sipd in a minute: the group entry every
#: 20 s (3), and a full pass every 300 s at most once in the window (the
#: group and an enumeration, which gives the members' entries too).
IDLE_MINUTE_BOUND = 3 + 1 + 1 + 2


@pytest.mark.slow
def test_idle_minute_costs_the_directory_a_search_every_twenty_seconds(
        site: LdapSite, tmp_path: Path) -> None:
    for name in ("ldapa", "ldapb", "ldapc"):
        site.add_user(name)
    site.set_members(["ldapa", "ldapb", "ldapc"])
    pw = passwords(site, ["ldapa"])
    with ldap_sipd(site, tmp_path) as (daemon, tree):
        assert status_of(register(daemon, "ldapa", pw["ldapa"])) == 200
        before = site.searches()
        # The window is the measurement: an idle minute, nothing asked.
        time.sleep(60)
        during = site.search_filters(before)
        assert {"ldapa", "ldapb", "ldapc"} <= set(os.listdir(tree))
    # What sipd(8) says: about 3 searches a minute, 180 an hour, per host.
    print(f"slapd searches in an idle minute: {len(during)}: {during}")
    assert 2 <= len(during) <= IDLE_MINUTE_BOUND, during
    assert all("objectClass=posixGroup" in f for f in during[:2]), during


@pytest.mark.slow
def test_outage_keeps_everything_and_answers_new_logins_503(site: LdapSite,
                                                            tmp_path: Path) -> None:
    site.add_user("ldapjan")
    site.add_user("ldapnew")
    site.set_members(["ldapjan", "ldapnew"])
    pw = passwords(site, ["ldapjan", "ldapnew"])
    with ldap_sipd(site, tmp_path) as (daemon, tree):
        assert status_of(register(daemon, "ldapjan", pw["ldapjan"])) == 200
        binding = (tree / "ldapjan" / "contacts").read_text()
        assert "aor=ldapjan" in binding
        with site.slapd_paused():
            paused = time.monotonic()
            wait_for(lambda: "user database unavailable" in daemon.log,
                     "sipd to notice the outage", timeout=45)
            # Known: served from what was looked up before, and saved.
            with Phone(daemon.port, "ldapjan", pw["ldapjan"], timeout=20) as phone:
                assert status_of(phone.register()) == 200
                usrloc = site["ldapjan"].home / ".sr" / "usrloc"
                assert f"127.0.0.1:{phone.port}" in usrloc.read_text()
            # Never looked up: 503 and Retry-After, whatever the name. Such a
            # request may be the one that probes the directory, and waits for
            # nslcd to give up on slapd twice (the user, then the group): 3 to
            # 17 s here, more on a loaded machine. It is waited for as long
            # as a phone waits for its answer (Timer F, 32 s).
            for name, password in (("ldapnew", pw["ldapnew"]), ("ldapghost", "nothing")):
                answer = register(daemon, name, password, timeout=32)
                assert status_of(answer) == 503, answer
                assert re.search(rb"\r\nRetry-After: \d+\r\n", answer), answer
            assert {"ldapjan", "ldapnew"} <= set(os.listdir(tree))
            assert "aor=ldapjan" in (tree / "ldapjan" / "contacts").read_text()
            # The outage lasts 30 s: the window is the point.
            time.sleep(max(0.0, 30 - (time.monotonic() - paused)))
            assert {"ldapjan", "ldapnew"} <= set(os.listdir(tree))
            assert "aor=ldapjan" in (tree / "ldapjan" / "contacts").read_text()
        # Its end is noticed without a request.
        wait_for(lambda: "user database answers again" in daemon.log,
                 "sipd to notice the end of the outage", timeout=40)
        # Nobody was throttled or counted as failing for it.
        assert status_of(register(daemon, "ldapnew", pw["ldapnew"])) == 200
        log = daemon.log
    assert "auth failed" not in log and "left group" not in log, log
    assert "cannot save" not in log and "throttling" not in log, log
    # Logged once when it began and once when it ended.
    assert len(re.findall(r"sipd.auth: \w+: user database unavailable", log)) == 1, log
    assert len(re.findall(r"sipd.auth: \w+: user database answers again", log)) == 1, log


@pytest.mark.slow
def test_expiry_in_ldap_counts_within_the_cache_time_and_at_once_on_request(
        site: LdapSite, tmp_path: Path) -> None:
    names = ["ldapann", "ldapjan", "ldapkim"]
    for name in names:
        site.add_user(name)
    site.set_members(names)
    pw = passwords(site, names)
    ttl = 10
    with ldap_sipd(site, tmp_path, f"account_cache_ttl = {ttl}\n") as (daemon, tree):
        # Without a request: within account_cache_ttl.
        assert status_of(register(daemon, "ldapann", pw["ldapann"])) == 200
        cached = time.monotonic()
        site.expire("ldapann", 1)
        while status_of(register(daemon, "ldapann", pw["ldapann"])) == 200:
            assert time.monotonic() - cached < ttl + 5, "the expiry did not count"
            time.sleep(0.5)  # each try is a registration: not more often
        assert 1 < time.monotonic() - cached <= ttl + 1
        assert 'auth failed: user "ldapann"' in daemon.log and "account expired" in daemon.log
        # SIGHUP: the expiry counts at the next request.
        assert status_of(register(daemon, "ldapjan", pw["ldapjan"])) == 200
        site.expire("ldapjan", 1)
        assert status_of(register(daemon, "ldapjan", pw["ldapjan"])) == 200  # still cached
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "account states forgotten" in daemon.log, "SIGHUP to be handled")
        assert status_of(register(daemon, "ldapjan", pw["ldapjan"])) == 401
        # A root write to the control node, likewise.
        assert status_of(register(daemon, "ldapkim", pw["ldapkim"])) == 200
        site.expire("ldapkim", 1)
        assert status_of(register(daemon, "ldapkim", pw["ldapkim"])) == 200  # still cached
        (tree / "control").write_text("flush accounts\n")
        assert status_of(register(daemon, "ldapkim", pw["ldapkim"])) == 401

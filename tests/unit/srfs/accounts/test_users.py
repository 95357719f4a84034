"""srfs.accounts.users and .pamcheck: NSS lookups and the PAM account check, with fake users
(nss/pam_wrapper)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipd.proxy.users import HomeUsers
from srfs.accounts import pamcheck, users
from srfs.accounts.directory import Directory
from srfs.accounts.pamcheck import PAM_SUCCESS, PAM_USER_UNKNOWN, AccountCache, PamUnavailable
from srfs.files.userconfig import EMPTY
from srfs.user import User
from tests.unixusers import SHIPPED_PAM_SERVICE, FakeUnix, fake_unix


@pytest.fixture
def unix() -> Iterator[FakeUnix]:
    with fake_unix() as u:
        yield u


# --- in this process (the host's own NSS) -----------------------------------


def test_lookup_host_root() -> None:
    root = users.lookup("root")
    assert root is not None and root.uid == 0 and root.name == "root"
    assert users.lookup_uid(0) == root


@pytest.mark.parametrize(
    "name",
    ["", "no-such-user-srfs", "a/b", "a:b", "a\0b", "a\nb", "..", "-root", " root", "x" * 300],
)
def test_lookup_refuses_or_misses(name: str) -> None:
    assert users.lookup(name) is None


def test_lookup_uid_out_of_range() -> None:
    assert users.lookup_uid(2**40) is None


def test_missing_group() -> None:
    assert users.members("no-such-group-srfs") == []
    assert not users.group_exists("no-such-group-srfs")
    root = users.lookup("root")
    assert root is not None
    assert not users.is_sip_member(root, "no-such-group-srfs")
    # The daemon's own group is required: "not found" is an outage then.
    with pytest.raises(users.DirectoryUnavailable):
        users.is_sip_member(root, "no-such-group-srfs", required=True)


def test_unknown_user_believed_only_while_the_group_is_found() -> None:
    # nslcd says "not found" for everything when its server is out of reach.
    users.confirm_absent("no-such-user-srfs", "root")
    with pytest.raises(users.DirectoryUnavailable, match="nor group no-such-group-srfs"):
        users.confirm_absent("no-such-user-srfs", "no-such-group-srfs")
    assert Directory("r", "root", None).account("no-such-user-srfs") is None
    with pytest.raises(users.DirectoryUnavailable):
        Directory("r", "no-such-group-srfs", None).account("no-such-user-srfs")
    with pytest.raises(users.DirectoryUnavailable):
        HomeUsers("no-such-group-srfs").find("no-such-user-srfs")
    assert HomeUsers("root").find("no-such-user-srfs") == (False, EMPTY)


def test_pam_service_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAM_WRAPPER", raising=False)
    monkeypatch.setenv("PAM_WRAPPER_SERVICE_DIR", "/nowhere")
    assert pamcheck.pam_service_path("sipd") == "/etc/pam.d/sipd"
    monkeypatch.setenv("PAM_WRAPPER", "1")
    assert pamcheck.pam_service_path("sipd") == "/nowhere/sipd"
    with pytest.raises(ValueError):
        pamcheck.pam_service_path("../shadow")
    assert pamcheck.pam_service_exists("../passwd") is False


def test_pam_service_exists_in_a_fake_service_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "sipd").write_text("account required pam_permit.so\n")
        monkeypatch.setenv("PAM_WRAPPER", "1")
        monkeypatch.setenv("PAM_WRAPPER_SERVICE_DIR", d)
        assert pamcheck.pam_service_exists("sipd")
        assert not pamcheck.pam_service_exists("other-service")


def test_missing_libpam_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SRFS_LIBPAM", "libsrfs-no-such-pam.so")
    with pytest.raises(PamUnavailable):
        pamcheck.load_libpam()
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "sipd").write_text("account required pam_permit.so\n")
        monkeypatch.setenv("PAM_WRAPPER", "1")
        monkeypatch.setenv("PAM_WRAPPER_SERVICE_DIR", d)
        with pytest.raises(PamUnavailable):
            pamcheck.account_check("root", "sipd")


def test_account_check_without_service_file_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    with tempfile.TemporaryDirectory() as d:
        monkeypatch.setenv("PAM_WRAPPER", "1")
        monkeypatch.setenv("PAM_WRAPPER_SERVICE_DIR", d)
        rc, msg = pamcheck.account_check("root", "sipd")
    assert rc == pamcheck.PAM_SYSTEM_ERR
    assert msg == f"no PAM service file {d}/sipd"


def test_account_check_refuses_bad_names_without_pam() -> None:
    assert pamcheck.account_check("a\0b", "sipd") == (PAM_USER_UNKNOWN, "invalid user name")
    with pytest.raises(ValueError):
        pamcheck.account_check("root", "../etc/shadow")


def test_user_is_frozen_and_hashable() -> None:
    u = User("jan", 1001, 1001, "/home/jan")
    with pytest.raises(AttributeError):
        u.name = "bob"  # type: ignore[misc]
    assert {u: 1}[User("jan", 1001, 1001, "/home/jan")] == 1


# --- the account cache (explicit time) ----------------------------------------

OK = (PAM_SUCCESS, "Success")
EXPIRED = (13, "User account has expired")


def test_cache_keeps_answers_for_their_ttl() -> None:
    c = AccountCache(ttl=60, negative_ttl=10)
    assert c.get("jan", 0.0) is None
    c.put("jan", 100.0, OK)
    c.put("bob", 100.0, EXPIRED)
    assert c.get("jan", 159.9) == OK
    assert c.get("bob", 109.9) == EXPIRED
    assert c.get("bob", 110.0) is None  # refusals expire sooner
    assert c.get("jan", 160.0) is None
    assert len(c) == 0


def test_cache_invalidate_prune_and_bound() -> None:
    c = AccountCache(ttl=60, negative_ttl=None, max_entries=2)
    c.put("a", 0, OK)
    c.put("b", 1, EXPIRED)
    c.put("c", 2, OK)  # evicts the oldest
    assert c.get("a", 3) is None and c.get("b", 3) == EXPIRED
    c.invalidate("b")
    assert c.get("b", 3) is None
    c.put("d", 30, OK)
    c.prune(62.5)  # c (t=2) is gone, d (t=30) stays
    assert len(c) == 1 and c.get("d", 62.5) == OK
    c.invalidate()
    assert len(c) == 0


def test_cache_zero_ttl_keeps_nothing() -> None:
    c = AccountCache(ttl=0, negative_ttl=0)
    c.put("a", 0, OK)
    assert c.get("a", 0) is None
    with pytest.raises(ValueError):
        AccountCache(ttl=-1)


# --- under nss_wrapper / pam_wrapper (child processes) --------------------------


def test_fake_users_and_the_sip_group(unix: FakeUnix) -> None:
    code = """
import json
from srfs.accounts import users
out = {
    "members": [u.name for u in users.members("sip")],
    "alice": users.is_sip_member(users.lookup("alice"), "sip"),
    "bob": users.is_sip_member(users.lookup("bob"), "sip"),
    "carol": users.is_sip_member(users.lookup("carol"), "sip"),
    "lookup": [users.lookup("alice").uid, users.lookup("alice").home],
    "by_uid": users.lookup_uid(CAROL_UID).name,
    "host_user_hidden": users.lookup("daemon") is None,
    "group_exists": users.group_exists("sip"),
}
print(json.dumps(out))
""".replace("CAROL_UID", str(unix["carol"].uid))
    out = unix.python_json(code)
    assert out == {
        "members": ["alice", "bob"],  # supplementary and primary
        "alice": True,
        "bob": True,
        "carol": False,
        "lookup": [unix["alice"].uid, str(unix["alice"].home)],
        "by_uid": "carol",
        "host_user_hidden": True,
        "group_exists": True,
    }


def test_pam_account_check_with_the_test_service(unix: FakeUnix) -> None:
    assert unix.account_check("alice") == (0, "Success")
    assert unix.account_check("bob", rhost="192.0.2.7") == (0, "Success")
    rc, msg = unix.account_check("carol")
    assert rc != 0 and rc == pamcheck.PAM_AUTH_ERR, msg
    rc, msg = unix.account_check("nobody-at-all")
    assert rc == PAM_USER_UNKNOWN, msg


def test_pam_account_check_with_the_shipped_service_file(unix: FakeUnix) -> None:
    unix.add_pam_service("sipd-shipped", SHIPPED_PAM_SERVICE.read_text())
    assert unix.account_check("alice", "sipd-shipped") == (0, "Success")
    assert unix.account_check("carol", "sipd-shipped")[0] != 0
    assert unix.account_check("nobody-at-all", "sipd-shipped")[0] == PAM_USER_UNKNOWN


def test_pam_permit_and_deny_stacks(unix: FakeUnix) -> None:
    unix.add_pam_service(
        "sip-permit",
        "account required pam_succeed_if.so user ingroup sip quiet\n"
        "account required pam_permit.so\n",
    )
    unix.add_pam_service("sip-deny", "account required pam_deny.so\n")
    assert unix.account_check("alice", "sip-permit") == (0, "Success")
    assert unix.account_check("carol", "sip-permit")[0] != 0
    assert unix.account_check("alice", "sip-deny")[0] != 0


def test_pam_service_exists_under_the_wrapper(unix: FakeUnix) -> None:
    code = """
import json
from srfs.accounts.pamcheck import pam_service_exists
print(json.dumps([pam_service_exists("sipd"), pam_service_exists("sipd-missing")]))
"""
    assert unix.python_json(code) == [True, False]


def test_account_check_from_many_threads(unix: FakeUnix) -> None:
    code = """
import json
from concurrent.futures import ThreadPoolExecutor
from srfs.accounts.pamcheck import account_check
names = ["alice", "carol"] * 40
with ThreadPoolExecutor(8) as ex:
    rcs = list(ex.map(lambda n: account_check(n, "sipd")[0], names))
print(json.dumps(sorted(set(zip(names, rcs)))))
"""
    assert unix.python_json(code) == [["alice", 0], ["carol", pamcheck.PAM_AUTH_ERR]]


def test_pam_sees_the_remote_address(unix: FakeUnix) -> None:
    # pam_access refuses by PAM_RHOST: the address must reach the module.
    rules = unix.root / "access.conf"
    rules.write_text("-:ALL:192.0.2.66\n+:ALL:ALL\n")
    rules.chmod(0o644)
    unix.add_pam_service("sip-access", f"account required pam_access.so accessfile={rules}\n")
    assert unix.account_check("alice", "sip-access", rhost="192.0.2.7") == (0, "Success")
    assert unix.account_check("alice", "sip-access", rhost="192.0.2.66")[0] == pamcheck.PAM_PERM_DENIED

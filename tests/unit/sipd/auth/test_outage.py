"""A user database that fails: 503 with Retry-After, nobody's failed login, logged once.

Through the sans-IO endpoint with the registrar's in-memory directory,
made to fail the way :class:`~srfs.accounts.nss.DirectoryUnavailable`
says NSS failed (a running sipd on broken nss_wrapper files is in
tests/unit/srfs/accounts/test_nss_errors.py).
"""

from __future__ import annotations

import errno
import logging

import pytest

from sipd.auth.authenticator import DirectoryHealth, LookUp, RecentAccounts, Refused
from sipd.sip.message import Request, parse
from srfs.accounts.directory import Account
from srfs.accounts.nss import DirectoryUnavailable
from tests.unit.sipd.registrar.test_registrar import SRC, Directory, Harness


class FailingDirectory(Directory):
    failing: bool = False

    def account(self, name: str, rhost: str | None = None) -> Account | None:
        if self.failing:
            self.lookups += 1
            raise DirectoryUnavailable(errno.ETIMEDOUT, "getpwnam_r")
        return super().account(name, rhost)


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    directory = FailingDirectory()
    harness.directory = directory
    harness.auth.lookup = directory.account
    harness.auth.accounts = RecentAccounts(lambda a: True)
    return harness


def failing(h: Harness) -> FailingDirectory:
    assert isinstance(h.directory, FailingDirectory)
    return h.directory


def test_an_unknown_account_gets_503_with_retry_after_and_is_never_throttled(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    failing(h).failing = True
    for _ in range(12):  # more than the throttle's 10 failures
        answer = h.register("bob")
        assert (answer.status, answer.reason) == (503, "User database unavailable")
        assert answer.get("Retry-After") == "30"
    assert h.auth.stats.failed == 0 and h.auth.stats.throttled == 0
    assert h.auth.health.down and h.auth.health.failures == 12
    failing(h).failing = False
    h.now += 1
    assert h.register("bob").status == 200
    assert not h.auth.health.down
    assert h.register("alice", password="wrong").status == 401
    text = caplog.text
    assert text.count("user database unavailable (looking up user") == 1, text
    assert text.count("user database answers again after") == 1, text
    assert 'auth failed: user "alice"' in text and 'auth failed: user "bob"' not in text


def test_a_known_account_is_served_from_its_last_good_answer(h: Harness) -> None:
    assert h.register("alice").status == 200
    assert h.auth.accounts is not None
    h.auth.accounts.forget()  # SIGHUP, or account_cache_ttl passed
    failing(h).failing = True
    answer = h.register("alice", contacts=["<sip:alice@192.0.2.7:5070>"])
    assert answer.status == 200, answer
    assert len(h.store.lookup("alice")) == 2
    # The last good answer says which password is right.
    assert h.register("alice", password="wrong").status == 401


def test_while_down_one_lookup_probes_and_the_rest_get_503_at_once(h: Harness) -> None:
    failing(h).failing = True
    assert h.register("bob").status == 503
    challenge = h.send(h._request("bob", None, 600, None, "", None, None))
    assert challenge.status == 401
    requests = []
    for _ in range(2):
        req = parse(h._request("bob", None, 600, None, "", None, None,
                               auth=(challenge, "secret-b", "MD5", 1)))
        assert isinstance(req, Request)
        requests.append(req)
    probe = h.auth.authenticate(requests[0], SRC, h.wall, proxy=False)
    assert isinstance(probe, LookUp)
    second = h.auth.authenticate(requests[1], SRC, h.wall, proxy=False)
    assert isinstance(second, Refused) and second.status == 503
    assert ("Retry-After", "30") in second.headers


def test_retry_after_is_the_setting() -> None:
    health = DirectoryHealth()
    assert health.refusal().headers == (("Retry-After", "30"),)
    health.retry_after = 120
    refused = health.refusal()
    assert (refused.status, refused.headers) == (503, (("Retry-After", "120"),))

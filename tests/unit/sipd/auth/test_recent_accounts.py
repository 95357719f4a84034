"""The authenticator's own copy of looked-up accounts never outlives the directory's state."""

from __future__ import annotations

from sipd.auth.authenticator import RecentAccounts
from srfs.accounts.directory import Account
from srfs.user import User

JAN = User("jan", 1000, 1000, "/home/jan")


def test_an_account_is_kept_no_longer_than_its_state_in_the_directory() -> None:
    recent = RecentAccounts(lambda a: True, ttl=60, negative_ttl=10)
    recent.put("jan", Account(JAN, True, "", valid_for=5.0), 100.0)
    assert recent.get("jan", 104.9)[0] is True
    assert recent.get("jan", 105.0) == (False, None)


def test_refusals_and_unknown_users_are_kept_briefly_and_forget_drops_all() -> None:
    recent = RecentAccounts(lambda a: True, ttl=60, negative_ttl=10)
    recent.put("jan", Account(JAN, False, "account expired", valid_for=60.0), 0.0)
    recent.put("nobody", None, 0.0)
    assert recent.get("jan", 9.9)[0] and recent.get("nobody", 9.9) == (True, None)
    assert recent.get("jan", 10.0) == (False, None)
    recent.put("jan", Account(JAN, True, ""), 20.0)
    recent.forget()
    assert recent.get("jan", 20.0) == (False, None)


def test_an_account_whose_state_was_not_kept_is_not_kept_either() -> None:
    recent = RecentAccounts(lambda a: True)
    recent.put("jan", Account(JAN, True, "", valid_for=0.0), 0.0)
    assert recent.get("jan", 0.0) == (False, None)


def test_the_last_good_account_outlives_forget_until_the_directory_says_otherwise() -> None:
    fresh = {"ok": True}
    recent = RecentAccounts(lambda a: fresh["ok"], ttl=60)
    good = Account(JAN, True, "")
    recent.put("jan", good, 0.0)
    recent.forget()
    assert recent.get("jan", 1.0) == (False, None)
    assert recent.last_good("jan") is good
    # A changed ~/.sr/passwd: the old answer must not decide the password.
    fresh["ok"] = False
    assert recent.last_good("jan") is None
    fresh["ok"] = True
    recent.put("jan", Account(JAN, False, "account expired"), 2.0)
    assert recent.last_good("jan") is None
    recent.put("jan", good, 3.0)
    recent.put("jan", None, 4.0)
    assert recent.last_good("jan") is None

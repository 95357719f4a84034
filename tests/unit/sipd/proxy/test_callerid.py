"""Caller ID rules: which of a user's numbers a call goes out as."""

from __future__ import annotations

import pytest

from sipd.proxy.callerid import outbound_identity, privacy_requested
from sipd.sip.errors import SipError

OWNED = {"jan": {"jan", "1003", "01727221221"}, "acme": {"acme", "+441727238471"}}


def owns(user: str, aor: str) -> bool:
    return aor in OWNED.get(user, set())


@pytest.mark.parametrize(
    ("from_user", "caller_id", "identity"),
    [
        ("jan", None, "jan"),
        ("1003", None, "1003"),
        ("1003", "01727221221", "01727221221"),  # the setting wins when owned
        ("jan", "+441727238471", "jan"),  # a caller_id the user does not own is ignored
        ("1003", "+441727238471", "1003"),
    ],
)
def test_identity_order(from_user: str, caller_id: str | None, identity: str) -> None:
    got = outbound_identity("jan", from_user, caller_id, owns)
    assert (got.identity, got.rewrite_from) == (identity, False)


def test_a_from_the_caller_does_not_own_is_refused_or_rewritten() -> None:
    with pytest.raises(SipError) as e:
        outbound_identity("jan", "+441727238471", None, owns)
    assert e.value.status == 403
    got = outbound_identity("jan", "+441727238471", "1003", owns, "rewrite")
    assert (got.identity, got.rewrite_from) == ("1003", True)
    got = outbound_identity("jan", "mallory", None, owns, "rewrite")
    assert (got.identity, got.rewrite_from) == ("jan", True)


@pytest.mark.parametrize(
    ("values", "hidden"),
    [([], False), (["none"], False), (["id"], True), (["header; id"], True),
     (["user"], True), (["critical"], False), (["Header", "session"], True)],
)
def test_privacy(values: list[str], hidden: bool) -> None:
    assert privacy_requested(values) is hidden

"""The registration lines: one per binding put in force or ended, refreshes at debug."""

from __future__ import annotations

import logging

import pytest

from sipd.registrar.changelog import describe, log_changes
from srfs.state.location import Binding, Change, ChangeKind, RemoveReason

NOW = 1_700_000_000.0
PHONE = Binding("jan", "jan", "sip:jan@192.0.2.10:5060", NOW + 600.4,
                received="udp:203.0.113.5:40000")


def test_a_new_binding_says_who_where_from_and_for_how_long() -> None:
    assert describe(Change(ChangeKind.ADDED, PHONE), NOW) == (
        logging.INFO,
        'registered: aor "jan" contact "sip:jan@192.0.2.10:5060" from udp:203.0.113.5:40000 '
        "for 601 s")


def test_an_alias_names_its_owner_and_a_static_contact_no_source() -> None:
    trunk = Binding("1003", "jan", "sip:pbx@198.51.100.7", None)
    assert describe(Change(ChangeKind.ADDED, trunk), NOW) == (
        logging.INFO, 'contact added: aor "1003" of "jan" contact "sip:pbx@198.51.100.7" static')


@pytest.mark.parametrize(("reason", "text"), [
    (RemoveReason.UNREGISTERED, "unregistered"),
    (RemoveReason.EXPIRED, "registration expired"),
    (RemoveReason.REPLACED, "contact dropped for a newer one (max_contacts)"),
    (RemoveReason.ADMIN, "contact removed through the state filesystem"),
])
def test_each_way_a_binding_ends(reason: RemoveReason, text: str) -> None:
    level, line = describe(Change(ChangeKind.REMOVED, PHONE, reason=reason), NOW)
    assert (level, line) == (logging.INFO,
                             f'{text}: aor "jan" contact "sip:jan@192.0.2.10:5060"')


def test_a_refresh_is_debug() -> None:
    level, line = describe(Change(ChangeKind.UPDATED, PHONE, previous=PHONE), NOW)
    assert level == logging.DEBUG and line.startswith('refreshed: aor "jan"')


def test_outside_values_stay_in_their_quotes(caplog: pytest.LogCaptureFixture) -> None:
    forged = Binding('jan" contact "sip:x\n', "jan", 'sip:a"b@192.0.2.1', NOW + 60)
    with caplog.at_level(logging.INFO, logger="sipd.registrar"):
        log_changes([Change(ChangeKind.ADDED, forged)], NOW)
    (message,) = [r.getMessage() for r in caplog.records]
    assert message == ('contact added: aor "jan\\x22 contact \\x22sip:x\\x0a" of "jan" '
                       'contact "sip:a\\x22b@192.0.2.1" for 60 s')

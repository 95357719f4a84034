"""srfs.state.location: the in-memory location store and binding identity."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
)

from srfs.state.location import (
    Binding,
    Change,
    ChangeKind,
    LocationStatistics,
    LocationStore,
    RemoveReason,
    contact_key,
)

T0 = 1_700_000_000.0


def mk(
    contact: str = "sip:jan@192.0.2.10:5060",
    *,
    aor: str = "jan",
    user: str = "jan",
    expires: float | None = T0 + 3600,
    q: float = 1.0,
    registered: float = T0,
    **kw: Any,
) -> Binding:
    return Binding(
        aor=aor, user=user, contact=contact, expires=expires, q=q, registered=registered, **kw
    )


def heap_size(store: LocationStore) -> int:
    return len(store._heap)


# ------------------------------------------------------------------ Binding


def test_binding_static_and_remaining() -> None:
    static = mk(expires=None)
    assert static.static
    assert static.remaining(T0) is None
    b = mk(expires=T0 + 10)
    assert not b.static
    assert b.remaining(T0) == 10
    assert b.remaining(T0 + 0.5) == 10  # rounded up
    assert b.remaining(T0 + 9.999) == 1
    assert b.remaining(T0 + 10) == 0
    assert b.remaining(T0 + 50) == 0  # never negative


@pytest.mark.parametrize("kw", [
    {},
    {"instance": "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>", "reg_id": 1},
    {"path": ("<sip:edge.example.com;lr>",), "received": "udp:198.51.100.1:4000",
     "ua": "Phone/1", "callid": "c", "cseq": 7, "q": 0.5},
    {"contact": "tel:+15551234567"},
])
def test_since_is_the_binding_first_registered_then(kw: dict[str, Any]) -> None:
    b = mk(**kw)
    assert b.since(b.registered) is b
    older = b.since(T0 - 60)
    assert older == replace(b, registered=T0 - 60)
    assert older.key == b.key and older.registered == T0 - 60
    assert older.ua is b.ua and older.aor is b.aor


# ------------------------------------------------------------ upsert, lookup


def test_upsert_adds_then_updates_keeping_first_registration_time() -> None:
    store = LocationStore()
    first = mk(expires=T0 + 100, registered=T0, callid="c1", cseq=1)
    c1 = store.upsert(first)
    assert c1.kind is ChangeKind.ADDED
    assert c1.binding == first
    assert c1.previous is None and c1.reason is None
    assert store.lookup("jan") == [first]

    refresh = mk(expires=T0 + 500, registered=T0 + 400, callid="c1", cseq=2, ua="Phone/2")
    c2 = store.upsert(refresh)
    assert c2.kind is ChangeKind.UPDATED
    assert c2.previous == first
    assert c2.binding == replace(refresh, registered=T0)
    [stored] = store.lookup("jan")
    assert stored.registered == T0  # of the first registration
    assert stored.expires == T0 + 500
    assert stored.cseq == 2 and stored.ua == "Phone/2"
    assert store.get("jan", first.key) == stored
    assert store.statistics().bindings == 1


def test_upsert_with_an_equivalent_spelling_updates_the_same_binding() -> None:
    store = LocationStore()
    store.upsert(mk("sip:jan@Host.Example.COM"))
    change = store.upsert(mk("SIP:jan@host.example.com:5060;ob", expires=T0 + 7200))
    assert change.kind is ChangeKind.UPDATED
    [b] = store.lookup("jan")
    assert b.contact == "SIP:jan@host.example.com:5060;ob"  # the latest spelling is kept
    assert b.expires == T0 + 7200


def test_lookup_orders_by_q_then_most_recent_registration() -> None:
    store = LocationStore()
    a = mk("sip:jan@192.0.2.1", q=0.5, registered=T0 + 1)
    b = mk("sip:jan@192.0.2.2", q=1.0, registered=T0 + 2)
    c = mk("sip:jan@192.0.2.3", q=0.5, registered=T0 + 3)
    d = mk("sip:jan@192.0.2.4", q=1.0, registered=T0 + 4)
    e = mk("sip:jan@192.0.2.5", q=0.0, registered=T0 + 5)
    for x in (a, b, c, d, e):
        store.upsert(x)
    assert [x.contact for x in store.lookup("jan")] == [
        d.contact, b.contact, c.contact, a.contact, e.contact
    ]
    # A refresh keeps the first registration time, so it does not reorder.
    store.upsert(replace(a, registered=T0 + 100, expires=T0 + 9999))
    assert [x.contact for x in store.lookup("jan")][2:4] == [c.contact, a.contact]


def test_lookup_and_get_of_unknown_aor() -> None:
    store = LocationStore()
    assert store.lookup("nobody") == []
    assert store.get("nobody", "uri:x") is None
    store.upsert(mk())
    assert store.get("jan", "uri:nope") is None


# --------------------------------------------------------------- contact_key

EQUIVALENT = [
    # scheme and host are case-insensitive
    ("sip:jan@Example.COM", "SIP:jan@example.com"),
    ("sip:jan@EXAMPLE.com:5070", "sip:jan@example.com:5070"),
    # the default port is spelled out
    ("sip:jan@example.com", "sip:jan@example.com:5060"),
    ("sip:jan@192.0.2.10", "sip:jan@192.0.2.10:5060"),
    ("sips:jan@example.com", "sips:jan@example.com:5061"),
    ("sip:example.com", "sip:example.com:5060"),
    # escapes in the user part
    ("sip:%6Aan@example.com", "sip:jan@example.com"),
    ("sip:j%61n@example.com", "sip:ja%6e@example.com"),
    ("sip:j%6fn@example.com", "sip:j%6Fn@example.com"),
    ("sip:%C3%A9@example.com", "sip:\u00e9@example.com"),
    # parameters other than transport/user/maddr/ttl/method do not count
    ("sip:jan@example.com;ob", "sip:jan@example.com"),
    ("sip:jan@example.com;rinstance=abc;lr", "sip:jan@example.com;rinstance=def"),
    ("sip:jan@example.com;x-foo=1", "sip:jan@example.com;x-foo=2"),
    # significant parameters: names and values case-insensitive, order free
    ("sip:jan@example.com;transport=TCP", "sip:jan@example.com;Transport=tcp"),
    (
        "sip:jan@example.com;transport=udp;user=ip;ob",
        "sip:jan@example.com:5060;user=ip;transport=udp",
    ),
    (
        "sip:jan@example.com;maddr=239.255.255.1;ttl=15",
        "sip:jan@EXAMPLE.com;ttl=15;maddr=239.255.255.1",
    ),
    # password and telephone-subscriber user parts
    ("sip:jan:secret@example.com", "sip:jan:secret@example.com:5060"),
    (
        "sip:+1-212-555-0101;phone-context=example.com@example.com;user=phone",
        "sip:+1-212-555-0101;phone-context=example.com@EXAMPLE.COM:5060;user=phone",
    ),
    # IPv6 references
    ("sip:jan@[2001:db8::1]", "sip:jan@[2001:DB8::1]:5060"),
    ("sips:jan@[2001:db8::1]", "sips:jan@[2001:db8::1]:5061"),
    ("sip:jan@[2001:db8::1]:5070;transport=tcp", "sip:jan@[2001:DB8::1]:5070;transport=TCP"),
    ("sip:jan@[2001:db8::1]", "sip:jan@[2001:0db8:0:0:0:0:0:1]"),
    ("sip:jan@[::ffff:192.0.2.1]:5070", "sip:jan@[::FFFF:c000:201]:5070"),
]

DIFFERENT = [
    # the user part is case-sensitive
    ("sip:Jan@example.com", "sip:jan@example.com"),
    ("sip:jan:a@example.com", "sip:jan:b@example.com"),
    ("sip:jan@example.com", "sip:jon@example.com"),
    ("sip:example.com", "sip:jan@example.com"),
    ("sip:jan@example.com", "sip:jan@example.org"),
    ("sip:jan@example.com", "sips:jan@example.com"),
    # ports
    ("sip:jan@example.com:5060", "sip:jan@example.com:5070"),
    ("sip:jan@example.com", "sip:jan@example.com:5061"),
    ("sips:jan@example.com", "sips:jan@example.com:5060"),
    # significant parameters: present in one only, or different values
    ("sip:jan@example.com", "sip:jan@example.com;transport=udp"),
    ("sip:jan@example.com;transport=udp", "sip:jan@example.com;transport=tcp"),
    ("sip:jan@example.com", "sip:jan@example.com;user=phone"),
    ("sip:jan@example.com;user=ip", "sip:jan@example.com;user=phone"),
    ("sip:jan@example.com", "sip:jan@example.com;maddr=239.255.255.1"),
    ("sip:jan@example.com;maddr=239.255.255.1", "sip:jan@example.com;maddr=239.255.255.2"),
    ("sip:jan@example.com;ttl=15", "sip:jan@example.com;ttl=16"),
    ("sip:jan@example.com", "sip:jan@example.com;ttl=15"),
    ("sip:jan@example.com", "sip:jan@example.com;method=INVITE"),
    # IPv6
    ("sip:jan@[2001:db8::1]", "sip:jan@[2001:db8::2]"),
    ("sip:jan@[2001:db8::1]:5060", "sip:jan@[2001:db8::1]:5070"),
    ("sip:jan@[2001:db8::1]", "sip:jan@2001:db8::1"),
    # distinct escaped octets stay distinct, even when they are not UTF-8
    ("sip:%e9@example.com", "sip:%ff@example.com"),
    ("sip:%40jan@example.com", "sip:jan@example.com"),
]


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_contact_key_equivalent(a: str, b: str) -> None:
    assert contact_key(a) == contact_key(b)
    assert mk(a).key == mk(b).key


@pytest.mark.parametrize(("a", "b"), DIFFERENT)
def test_contact_key_different(a: str, b: str) -> None:
    assert contact_key(a) != contact_key(b)
    assert mk(a).key != mk(b).key


def test_contact_key_of_other_schemes_is_the_text() -> None:
    assert contact_key(" tel:+12125550101 ") == "tel:+12125550101"
    assert contact_key("tel:+1") != contact_key("sip:+1@example.com")


def test_contact_key_is_idempotent_on_its_own_uri_part() -> None:
    for a, _ in EQUIVALENT + DIFFERENT:
        assert contact_key(a) == contact_key(a)


# ------------------------------------------------------ instance and reg-id

INSTANCE = "<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"


def test_same_instance_different_reg_id_are_two_bindings() -> None:
    store = LocationStore()
    store.upsert(mk("sip:jan@192.0.2.1;ob", instance=INSTANCE, reg_id=1))
    change = store.upsert(mk("sip:jan@192.0.2.1;ob", instance=INSTANCE, reg_id=2))
    assert change.kind is ChangeKind.ADDED
    assert len(store.lookup("jan")) == 2


def test_same_instance_same_reg_id_new_contact_is_the_same_binding() -> None:
    store = LocationStore()
    first = mk("sip:jan@192.0.2.1;ob", instance=INSTANCE, reg_id=1, registered=T0)
    store.upsert(first)
    moved = mk(
        "sip:jan@198.51.100.7:5062;transport=tcp;ob",
        instance=INSTANCE,
        reg_id=1,
        registered=T0 + 60,
        received="tcp:198.51.100.7:5062",
    )
    change = store.upsert(moved)
    assert change.kind is ChangeKind.UPDATED
    assert change.previous == first
    [b] = store.lookup("jan")
    assert b.contact == moved.contact
    assert b.received == "tcp:198.51.100.7:5062"
    assert b.registered == T0


def test_instance_without_reg_id_is_its_own_identity() -> None:
    store = LocationStore()
    store.upsert(mk("sip:jan@192.0.2.1", instance=INSTANCE))
    assert store.upsert(mk("sip:jan@192.0.2.99", instance=INSTANCE)).kind is ChangeKind.UPDATED
    # with a reg-id it is a different flow, and a plain contact is another binding
    assert store.upsert(mk("sip:jan@192.0.2.1", instance=INSTANCE, reg_id=1)).kind is (
        ChangeKind.ADDED
    )
    assert store.upsert(mk("sip:jan@192.0.2.99")).kind is ChangeKind.ADDED
    assert len(store.lookup("jan")) == 3
    assert mk(instance="<urn:uuid:a>").key != mk(instance="<urn:uuid:b>").key


# ----------------------------------------------- removal and the user index


def test_remove_returns_the_change_or_none() -> None:
    store = LocationStore()
    b = mk()
    store.upsert(b)
    assert store.remove("jan", "uri:nope", RemoveReason.ADMIN) is None
    assert store.remove("nobody", b.key, RemoveReason.ADMIN) is None
    change = store.remove("jan", b.key, RemoveReason.UNREGISTERED)
    assert change == Change(ChangeKind.REMOVED, b, reason=RemoveReason.UNREGISTERED)
    assert store.lookup("jan") == []
    assert store.remove("jan", b.key, RemoveReason.UNREGISTERED) is None
    assert store.users() == [] and store.aors_of_user("jan") == []
    assert list(store) == []


def test_remove_aor_removes_every_binding_of_that_aor_only() -> None:
    store = LocationStore()
    bs = [mk(f"sip:jan@192.0.2.{i}") for i in range(1, 4)]
    other = mk("sip:jan@192.0.2.1", aor="1003")
    for b in [*bs, other]:
        store.upsert(b)
    changes = store.remove_aor("jan", RemoveReason.ADMIN)
    assert sorted(c.binding.contact for c in changes) == sorted(b.contact for b in bs)
    assert all(c.kind is ChangeKind.REMOVED and c.reason is RemoveReason.ADMIN for c in changes)
    assert store.lookup("jan") == []
    assert store.lookup("1003") == [other]
    assert store.aors_of_user("jan") == ["1003"]
    assert store.remove_aor("jan", RemoveReason.ADMIN) == []
    assert store.remove_aor("nobody", RemoveReason.ADMIN) == []


def test_user_index_follows_adds_and_removes() -> None:
    store = LocationStore()
    j1 = mk("sip:jan@192.0.2.1", aor="jan", q=0.5)
    j2 = mk("sip:jan@192.0.2.2", aor="jan", q=1.0)
    j3 = mk("sip:jan@192.0.2.3", aor="1003")
    b1 = mk("sip:bob@192.0.2.9", aor="bob", user="bob")
    for b in (j1, j2, j3, b1):
        store.upsert(b)
    assert store.users() == ["bob", "jan"]
    assert store.aors_of_user("jan") == ["1003", "jan"]
    assert store.aors_of_user("bob") == ["bob"]
    assert store.aors_of_user("carol") == []
    assert store.bindings_of_user("jan") == [j3, j2, j1]  # per AOR, lookup order
    assert store.bindings_of_user("carol") == []

    store.remove("jan", j1.key, RemoveReason.ADMIN)
    assert store.aors_of_user("jan") == ["1003", "jan"]  # j2 is still there
    store.remove("jan", j2.key, RemoveReason.ADMIN)
    assert store.aors_of_user("jan") == ["1003"]
    store.remove("1003", j3.key, RemoveReason.ADMIN)
    assert store.aors_of_user("jan") == []
    assert store.users() == ["bob"]
    assert store.bindings_of_user("jan") == []
    assert store.statistics().aors == 1


def test_user_index_when_an_aor_changes_owner() -> None:
    """An alias handed to another user: the old owner's index must not keep it."""
    store = LocationStore()
    old = mk("sip:phone@192.0.2.1", aor="1003", user="jan")
    store.upsert(old)
    new = mk("sip:phone@192.0.2.1", aor="1003", user="bob", registered=T0 + 5)
    assert store.upsert(new).kind is ChangeKind.UPDATED
    assert store.aors_of_user("bob") == ["1003"]
    assert store.aors_of_user("jan") == []
    assert store.bindings_of_user("jan") == []
    assert [b.user for b in store.bindings_of_user("bob")] == ["bob"]
    assert store.users() == ["bob"]

    # Two owners' bindings in one AOR: each sees only its own.
    other = mk("sip:desk@192.0.2.2", aor="1003", user="jan")
    store.upsert(other)
    assert store.aors_of_user("jan") == ["1003"]
    assert store.bindings_of_user("jan") == [other]
    assert [b.contact for b in store.bindings_of_user("bob")] == ["sip:phone@192.0.2.1"]
    store.remove("1003", new.key, RemoveReason.ADMIN)
    assert store.aors_of_user("bob") == []
    assert store.users() == ["jan"]
    store.remove("1003", other.key, RemoveReason.ADMIN)
    assert store.users() == []


# -------------------------------------------------------------------- expiry


def test_expire_removes_exactly_the_due_bindings() -> None:
    store = LocationStore()
    a = mk("sip:jan@192.0.2.1", expires=T0 + 10)
    b = mk("sip:jan@192.0.2.2", expires=T0 + 20)
    c = mk("sip:jan@192.0.2.3", expires=T0 + 20)
    d = mk("sip:bob@192.0.2.4", aor="bob", user="bob", expires=T0 + 30)
    s = mk("sip:pbx@198.51.100.7", aor="bob", user="bob", expires=None)
    for x in (a, b, c, d, s):
        store.upsert(x)
    assert store.expire(T0) == []
    assert store.expire(T0 + 9.999) == []
    [ca] = store.expire(T0 + 10)  # at the expiry time counts
    assert ca == Change(ChangeKind.REMOVED, a, reason=RemoveReason.EXPIRED)
    removed = store.expire(T0 + 25)
    assert sorted(x.binding.contact for x in removed) == [b.contact, c.contact]
    assert store.aors_of_user("jan") == []
    assert [x.binding for x in store.expire(T0 + 10**9)] == [d]
    assert store.lookup("bob") == [s]  # static: never
    assert store.expire(T0 + 10**12) == []
    assert store.statistics().expired == 4


def test_expire_ignores_stale_heap_entries_of_refreshed_bindings() -> None:
    store = LocationStore()
    b = mk(expires=T0 + 100)
    store.upsert(b)
    store.upsert(replace(b, expires=T0 + 200))
    assert store.expire(T0 + 150) == []
    assert [x.expires for x in store.lookup("jan")] == [T0 + 200]
    assert [x.binding.expires for x in store.expire(T0 + 200)] == [T0 + 200]
    assert store.expire(T0 + 1000) == []


def test_expire_after_a_refresh_to_an_earlier_time() -> None:
    store = LocationStore()
    b = mk(expires=T0 + 200)
    store.upsert(b)
    store.upsert(replace(b, expires=T0 + 50))
    assert store.next_expiry() == T0 + 50
    assert len(store.expire(T0 + 50)) == 1
    assert store.expire(T0 + 200) == []  # the stale entry finds nothing


def test_expire_after_remove_and_re_add() -> None:
    store = LocationStore()
    b = mk(expires=T0 + 100)
    store.upsert(b)
    store.remove("jan", b.key, RemoveReason.UNREGISTERED)
    store.upsert(replace(b, expires=T0 + 300, registered=T0 + 90))
    assert store.expire(T0 + 100) == []
    [again] = store.lookup("jan")
    assert again.registered == T0 + 90  # a new binding, not a refresh
    assert len(store.expire(T0 + 300)) == 1


def test_expire_never_touches_static_bindings_even_after_a_dynamic_past() -> None:
    store = LocationStore()
    b = mk(expires=T0 + 10)
    store.upsert(b)
    store.upsert(replace(b, expires=None))  # becomes static
    assert store.expire(T0 + 10**9) == []
    assert store.lookup("jan")[0].static
    # and back to dynamic: then it expires
    store.upsert(replace(b, expires=T0 + 10**9 + 5))
    assert len(store.expire(T0 + 10**9 + 5)) == 1


def test_next_expiry() -> None:
    store = LocationStore()
    assert store.next_expiry() is None
    store.upsert(mk("sip:pbx@198.51.100.7", expires=None))
    assert store.next_expiry() is None
    store.upsert(mk("sip:jan@192.0.2.1", expires=T0 + 30))
    store.upsert(mk("sip:jan@192.0.2.2", expires=T0 + 20))
    store.upsert(mk("sip:jan@192.0.2.3", aor="1003", expires=T0 + 25))
    assert store.next_expiry() == T0 + 20
    store.expire(T0 + 20)
    assert store.next_expiry() == T0 + 25
    store.expire(T0 + 29)
    assert store.next_expiry() == T0 + 30
    store.expire(T0 + 30)
    assert store.next_expiry() is None


def test_next_expiry_is_never_later_than_the_real_one_and_converges() -> None:
    store = LocationStore()
    b = mk(expires=T0 + 10)
    store.upsert(b)
    for i in range(1, 6):
        store.upsert(replace(b, expires=T0 + 10 + i * 10))
    # May be early (stale entries); expiring at it moves it on until the real one.
    steps = 0
    while (when := store.next_expiry()) is not None and when < T0 + 60:
        assert store.expire(when) == []
        steps += 1
    assert steps <= 5
    assert store.next_expiry() == T0 + 60
    assert len(store.expire(T0 + 60)) == 1
    assert store.next_expiry() is None


def test_heap_stays_bounded_when_one_binding_is_refreshed_10000_times() -> None:
    store = LocationStore()
    b = mk(expires=T0 + 3600)
    store.upsert(b)
    peak = 0
    for i in range(1, 10_001):
        store.upsert(replace(b, expires=T0 + 3600 + i, cseq=i))
        peak = max(peak, heap_size(store))
    assert peak <= 100, peak  # without any expire() in between
    assert store.statistics().bindings == 1
    nxt = store.next_expiry()
    assert nxt is not None and nxt <= T0 + 13_600
    # and with expire() calls that find nothing due
    for i in range(10_001, 20_001):
        store.upsert(replace(b, expires=T0 + 3600 + i, cseq=i))
        if i % 7 == 0:
            assert store.expire(T0) == []
        peak = max(peak, heap_size(store))
    assert peak <= 100, peak
    [x] = store.lookup("jan")
    assert x.cseq == 20_000 and x.registered == T0
    assert store.expire(T0 + 3600 + 19_999) == []
    assert len(store.expire(T0 + 3600 + 20_000)) == 1
    assert heap_size(store) <= 100


def test_heap_is_bounded_with_many_bindings_refreshed() -> None:
    store = LocationStore()
    bs = [mk(f"sip:jan@192.0.2.{i}", expires=T0 + 100) for i in range(50)]
    for rnd in range(40):
        for b in bs:
            store.upsert(replace(b, expires=T0 + 100 + rnd))
    assert heap_size(store) <= 4 * 50 + 1
    assert len(store.expire(T0 + 139)) == 50
    assert heap_size(store) <= 64


# --------------------------------------------------------------- subscribers


def test_subscribers_hear_every_change_in_order_with_reasons() -> None:
    store = LocationStore()
    seen: list[tuple[str, ChangeKind, str, RemoveReason | None]] = []
    second: list[Change] = []

    def first_sub(c: Change) -> None:
        # the store has already changed when a subscriber hears of it
        present = store.get(c.binding.aor, c.binding.key) is not None
        assert present == (c.kind is not ChangeKind.REMOVED)
        seen.append(("1", c.kind, c.binding.contact, c.reason))

    def second_sub(c: Change) -> None:
        seen.append(("2", c.kind, c.binding.contact, c.reason))
        second.append(c)

    store.subscribe(first_sub)
    store.subscribe(second_sub)
    a = mk("sip:jan@192.0.2.1", expires=T0 + 10)
    b = mk("sip:jan@192.0.2.2", expires=T0 + 100)
    c = mk("sip:jan@192.0.2.3", aor="1003", expires=None)
    returned = [store.upsert(a), store.upsert(b), store.upsert(replace(b, cseq=9))]
    returned += store.expire(T0 + 10)
    returned.append(store.upsert(c))
    r = store.remove("jan", b.key, RemoveReason.REPLACED)
    assert r is not None
    returned.append(r)
    returned.append(store.upsert(a))
    returned += store.remove_aor("jan", RemoveReason.UNREGISTERED)
    r = store.remove("1003", c.key, RemoveReason.ADMIN)
    assert r is not None
    returned.append(r)
    assert store.remove("1003", c.key, RemoveReason.ADMIN) is None  # nothing to hear

    expected = [
        (ChangeKind.ADDED, a.contact, None),
        (ChangeKind.ADDED, b.contact, None),
        (ChangeKind.UPDATED, b.contact, None),
        (ChangeKind.REMOVED, a.contact, RemoveReason.EXPIRED),
        (ChangeKind.ADDED, c.contact, None),
        (ChangeKind.REMOVED, b.contact, RemoveReason.REPLACED),
        (ChangeKind.ADDED, a.contact, None),
        (ChangeKind.REMOVED, a.contact, RemoveReason.UNREGISTERED),
        (ChangeKind.REMOVED, c.contact, RemoveReason.ADMIN),
    ]
    assert seen == [(n, *e) for e in expected for n in ("1", "2")]
    assert second == returned
    assert second[2].previous == b and second[2].binding.cseq == 9


# ---------------------------------------------------------------- statistics


def test_statistics_counts() -> None:
    store = LocationStore()
    assert store.statistics() == LocationStatistics()
    store.upsert(mk("sip:jan@192.0.2.1", expires=T0 + 10))
    store.upsert(mk("sip:jan@192.0.2.2", expires=T0 + 10))
    store.upsert(mk("sip:jan@192.0.2.2", expires=T0 + 20))  # update: not added
    store.upsert(mk("sip:pbx@198.51.100.7", aor="acme", user="acme", expires=None))
    store.upsert(mk("sip:pbx@198.51.100.8", aor="acme", user="acme", expires=None))
    store.upsert(mk("sip:pbx@198.51.100.9", aor="acme", user="acme", expires=None))
    store.upsert(mk("sip:pbx@198.51.100.9", aor="acme", user="acme", expires=T0 + 10))
    store.remove("acme", mk("sip:pbx@198.51.100.9", aor="acme", user="acme").key,
                 RemoveReason.ADMIN)
    s = store.statistics()
    assert (s.aors, s.bindings, s.static_bindings, s.added, s.removed, s.expired) == (
        2, 4, 2, 5, 1, 0
    )
    store.expire(T0 + 15)
    store.remove_aor("acme", RemoveReason.ADMIN)
    s = store.statistics()
    assert (s.aors, s.bindings, s.static_bindings, s.added, s.removed, s.expired) == (
        1, 1, 0, 5, 4, 1
    )
    s.bindings = 999  # a copy
    assert store.statistics().bindings == 1
    store.expire(T0 + 20)
    s = store.statistics()
    assert (s.aors, s.bindings, s.removed, s.expired) == (0, 0, 5, 2)


# ----------------------------------------------- model-based stateful check

# Contact spellings with the identity they must have: equal ids, equal key.
CONTACTS = [
    ("sip:jan@192.0.2.10", "A"),
    ("SIP:jan@192.0.2.10:5060", "A"),
    ("sip:jan@192.0.2.10;ob", "A"),
    ("sip:jan@192.0.2.10;transport=tcp", "B"),
    ("sip:jan@192.0.2.10:5060;TRANSPORT=TCP", "B"),
    ("sip:jan@[2001:db8::1]", "C"),
    ("sip:jan@[2001:DB8::1]:5060", "C"),
    ("sips:jan@192.0.2.10", "D"),
    ("sips:jan@192.0.2.10:5061", "D"),
    ("sip:Jan@192.0.2.10", "E"),
]
AORS = {"jan": "jan", "1003": "jan", "bob": "bob", "shared": "carol"}


class StoreVsModel(RuleBasedStateMachine):
    """LocationStore against a dict {(aor, identity): Binding}."""

    keys = Bundle("keys")

    def __init__(self) -> None:
        super().__init__()
        self.store = LocationStore()
        self.model: dict[tuple[str, object], Binding] = {}
        self.now = T0
        self.heard: list[Change] = []
        self.store.subscribe(self.heard.append)
        self.added = self.removed = self.expired = 0

    def _returned(self, changes: list[Change]) -> None:
        assert self.heard == changes
        self.heard.clear()

    @rule(
        target=keys,
        aor=st.sampled_from(sorted(AORS)),
        contact=st.sampled_from(CONTACTS),
        flow=st.sampled_from([None, ("<urn:uuid:1>", None), ("<urn:uuid:1>", 1),
                              ("<urn:uuid:1>", 2), ("<urn:uuid:2>", 1)]),
        lifetime=st.one_of(st.none(), st.integers(0, 60)),
        q=st.sampled_from([0.0, 0.5, 1.0]),
        other_owner=st.booleans(),
    )
    def upsert(
        self,
        aor: str,
        contact: tuple[str, str],
        flow: tuple[str, int | None] | None,
        lifetime: int | None,
        q: float,
        other_owner: bool,
    ) -> tuple[str, object, str]:
        user = "dave" if other_owner else AORS[aor]
        uri, ident = contact
        b = Binding(
            aor=aor,
            user=user,
            contact=uri,
            expires=None if lifetime is None else self.now + lifetime,
            q=q,
            instance=flow[0] if flow else None,
            reg_id=flow[1] if flow else None,
            registered=self.now,
        )
        identity: object = ("flow", flow) if flow else ident
        mkey = (aor, identity)
        old = self.model.get(mkey)
        expected = b if old is None else replace(b, registered=old.registered)
        change = self.store.upsert(b)
        self._returned([change])
        assert change.binding == expected
        if old is None:
            assert change.kind is ChangeKind.ADDED
            self.added += 1
        else:
            assert change.kind is ChangeKind.UPDATED
            assert change.previous == old
        self.model[mkey] = expected
        return (aor, identity, b.key)

    @rule(mkey=keys, reason=st.sampled_from(list(RemoveReason)))
    def remove(self, mkey: tuple[str, object, str], reason: RemoveReason) -> None:
        aor, identity, key = mkey
        old = self.model.pop((aor, identity), None)
        if old is None:
            # already gone (removed or expired): nothing happens, nobody hears
            assert self.store.remove(aor, key, reason) is None
            self._returned([])
            return
        assert old.key == key
        change = self.store.remove(aor, key, reason)
        assert change == Change(ChangeKind.REMOVED, old, reason=reason)
        self._returned([change])
        self.removed += 1
        if reason is RemoveReason.EXPIRED:
            self.expired += 1
        assert self.store.remove(aor, old.key, reason) is None

    @rule(mkey=consumes(keys))
    def remove_aor(self, mkey: tuple[str, object, str]) -> None:
        aor = mkey[0]
        gone = {k: b for k, b in self.model.items() if k[0] == aor}
        changes = self.store.remove_aor(aor, RemoveReason.ADMIN)
        self._returned(changes)
        assert sorted((c.binding for c in changes), key=repr) == sorted(gone.values(), key=repr)
        for k in gone:
            del self.model[k]
        self.removed += len(gone)

    @rule(step=st.integers(0, 40))
    def expire(self, step: int) -> None:
        self.now += step
        due = {
            k: b for k, b in self.model.items() if b.expires is not None and b.expires <= self.now
        }
        changes = self.store.expire(self.now)
        self._returned(changes)
        assert all(c.kind is ChangeKind.REMOVED and c.reason is RemoveReason.EXPIRED
                   for c in changes)
        assert sorted((c.binding for c in changes), key=repr) == sorted(due.values(), key=repr)
        for k in due:
            del self.model[k]
        self.removed += len(due)
        self.expired += len(due)

    @invariant()
    def same_bindings(self) -> None:
        assert sorted(self.store, key=repr) == sorted(self.model.values(), key=repr)
        for (aor, _), b in self.model.items():
            assert self.store.get(aor, b.key) == b

    @invariant()
    def lookups(self) -> None:
        for aor in AORS:
            found = self.store.lookup(aor)
            want = [b for (a, _), b in self.model.items() if a == aor]
            assert sorted(found, key=repr) == sorted(want, key=repr)
            order = [(-b.q, -b.registered) for b in found]
            assert order == sorted(order)

    @invariant()
    def user_index(self) -> None:
        users = {b.user for b in self.model.values()}
        assert self.store.users() == sorted(users)
        assert self.store.user_count() == len(users)
        for user in [*users, "nobody"]:
            mine = [b for b in self.model.values() if b.user == user]
            assert self.store.aors_of_user(user) == sorted({b.aor for b in mine})
            got = self.store.bindings_of_user(user)
            assert sorted(got, key=repr) == sorted(mine, key=repr)
            assert [b.aor for b in got] == sorted(b.aor for b in got)

    @invariant()
    def statistics_and_expiry(self) -> None:
        s = self.store.statistics()
        assert s.bindings == len(self.model)
        assert s.aors == len({a for a, _ in self.model})
        assert s.static_bindings == sum(1 for b in self.model.values() if b.static)
        assert (s.added, s.removed, s.expired) == (self.added, self.removed, self.expired)
        dynamic = [b.expires for b in self.model.values() if b.expires is not None]
        nxt = self.store.next_expiry()
        if dynamic:
            assert nxt is not None and nxt <= min(dynamic)
        # at most 4 AORs x 9 identities exist at once: the heap stays small
        assert heap_size(self.store) <= 4 * 4 * 9 + 1


StoreVsModel.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None
)
TestStoreVsModel = StoreVsModel.TestCase

"""srfs.state.calls: the table of calls in progress and its ``calls`` lines."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from srfs.files.usrloc import tokenize
from srfs.state.calls import Call, CallChange, CallChangeKind, CallTable, format_call
from tests import REPO

T0 = 1_796_406_302.25  # 2026-12-04T17:45:02Z and a quarter


def leg(call_id: str = "c1", user: str = "jan", direction: str = "out", **kw: object) -> Call:
    fields: dict[str, object] = {
        "call_id": call_id,
        "user": user,
        "peer": "sip:bob@example.com" if direction == "out" else "sip:jan@example.com",
        "direction": direction,
        "state": "ringing",
        "start": T0,
        "from_uri": "sip:jan@example.com",
        "to_uri": "sip:bob@example.com",
        "expires": T0 + 600,
    }
    fields.update(kw)
    return Call(**fields)  # type: ignore[arg-type]


@pytest.fixture
def table() -> CallTable:
    return CallTable()


def test_both_parties_see_the_call(table: CallTable) -> None:
    assert table.add(leg(user="jan", direction="out"))
    assert table.add(leg(user="bob", direction="in"))
    assert "c1" in table and len(table) == 1
    assert [c.user for c in table.legs("c1")] == ["jan", "bob"]  # caller first
    assert table.users() == ["bob", "jan"]
    assert table.of_user("jan")[0].direction == "out"
    assert table.of_user("bob")[0].peer == "sip:jan@example.com"
    assert table.of_user("carol") == [] and table.legs("nope") == []


def test_same_leg_twice_is_not_added(table: CallTable) -> None:
    seen: list[CallChange] = []
    table.subscribe(seen.append)
    assert table.add(leg())
    assert not table.add(leg(start=T0 + 5))
    assert table.of_user("jan")[0].start == T0
    assert [c.kind for c in seen] == [CallChangeKind.ADDED]
    assert table.statistics().started == 1


def test_self_call_has_two_legs_for_one_user(table: CallTable) -> None:
    table.add(leg(direction="out"))
    table.add(leg(direction="in"))
    assert [c.direction for c in table.of_user("jan")] == ["in", "out"]
    assert len(table) == 1
    assert len(table.remove("c1")) == 2
    assert table.users() == []


def test_answer_changes_ringing_legs_once(table: CallTable) -> None:
    seen: list[CallChange] = []
    table.subscribe(seen.append)
    table.add(leg(user="jan"))
    table.add(leg(user="bob", direction="in"))
    changed = table.answer("c1", T0 + 7, T0 + 7 + 3600)
    assert [(c.user, c.state, c.answered_at, c.expires) for c in changed] == [
        ("jan", "answered", T0 + 7, T0 + 7 + 3600), ("bob", "answered", T0 + 7, T0 + 7 + 3600)]
    assert table.answer("c1", T0 + 9, None) == []  # a 2xx retransmission
    assert table.answer("unknown", T0, None) == []
    assert table.of_user("bob")[0].answered_at == T0 + 7
    assert [c.kind for c in seen].count(CallChangeKind.ANSWERED) == 2
    stats = table.statistics()
    assert (stats.calls, stats.ringing, stats.answered) == (1, 0, 1)


def test_remove_notifies_and_forgets(table: CallTable) -> None:
    seen: list[CallChange] = []
    table.add(leg())
    table.add(leg(user="bob", direction="in"))
    table.subscribe(seen.append)
    gone = table.remove("c1")
    assert {c.user for c in gone} == {"jan", "bob"}
    assert [(c.kind, c.expired) for c in seen] == [(CallChangeKind.REMOVED, False)] * 2
    assert "c1" not in table and table.users() == [] and list(table) == []
    assert table.remove("c1") == []


def test_expire_with_explicit_time(table: CallTable) -> None:
    seen: list[CallChange] = []
    table.subscribe(seen.append)
    table.add(leg("a", expires=T0 + 10))
    table.add(leg("b", expires=T0 + 20))
    table.add(leg("forever", expires=None))
    assert table.next_expiry() == T0 + 10
    assert table.expire(T0 + 9.99) == []
    assert [c.call_id for c in table.expire(T0 + 10)] == ["a"]
    assert seen[-1].kind is CallChangeKind.REMOVED and seen[-1].expired
    # A refresh moves the deadline: the old heap entry is stale, not fatal.
    assert [c.expires for c in table.refresh("b", T0 + 100)] == [T0 + 100]
    assert table.expire(T0 + 50) == []
    assert "b" in table
    assert [c.call_id for c in table.expire(T0 + 100)] == ["b"]
    assert table.expire(T0 + 10**9) == []
    assert [c.call_id for c in table] == ["forever"]
    assert table.statistics().expired == 2


def test_heap_stays_small_under_many_refreshes(table: CallTable) -> None:
    table.add(leg())
    for i in range(10_000):
        table.refresh("c1", T0 + i)
    assert len(table._heap) <= 256
    assert table.next_expiry() == T0 + 9_999  # stale entries are skipped
    assert [c.call_id for c in table.expire(T0 + 9_999)] == ["c1"]


_OPS = st.lists(st.tuples(
    st.sampled_from(["add", "answer", "refresh", "remove", "expire", "ask"]),
    st.sampled_from(["a", "b", "c"]),
    st.integers(0, 50),
), max_size=60)


@given(_OPS)
def test_next_expiry_follows_every_change(ops: list[tuple[str, str, int]]) -> None:
    """Asked between any changes (the daemon asks after every send), it is the earliest expiry."""
    table = CallTable()
    for op, call_id, t in ops:
        if op == "add":
            table.add(leg(call_id, expires=T0 + t))
            table.add(leg(call_id, user="bob", direction="in", expires=T0 + t))
        elif op == "answer":
            table.answer(call_id, T0, T0 + t)
        elif op == "refresh":
            table.refresh(call_id, T0 + t)
        elif op == "remove":
            table.remove(call_id)
        elif op == "expire":
            table.expire(T0 + t)
        expiries = [c.expires for c in table if c.expires is not None]
        assert table.next_expiry() == (min(expiries) if expiries else None), (op, call_id, t)


def test_answered_legs_keep_everything_but_their_state_and_times(table: CallTable) -> None:
    table.add(leg("c1", expires=T0 + 10))
    before = table.legs("c1")[0]
    (after,) = table.answer("c1", T0 + 3, T0 + 3600)
    # Against dataclasses.replace: a field added to Call later is kept too.
    assert after == dataclasses.replace(before, state="answered", answered_at=T0 + 3,
                                        expires=T0 + 3600)


def test_lines_render_the_documented_format(table: CallTable) -> None:
    table.add(leg(user="jan"))
    table.add(leg("c0", user="jan", direction="in", peer="sip:carol@example.com",
                  start=T0 - 60))
    table.answer("c1", T0 + 7, None)
    assert table.lines("jan", T0 + 19.5) == [
        "c0 peer=sip:carol@example.com direction=in state=ringing "
        "start=2026-12-04T17:44:02Z duration=0",
        "c1 peer=sip:bob@example.com direction=out state=answered "
        "start=2026-12-04T17:45:02Z answered=2026-12-04T17:45:09Z duration=12",
    ]
    assert table.lines("bob", T0) == []


@pytest.mark.parametrize("hostile", [
    'x" state=answered', "a\nb", "a\r\nfake line", "\x1b[2J", "a b", "", "x\u2028y",
])
def test_hostile_values_stay_on_one_line_and_field(hostile: str) -> None:
    line = format_call(leg(call_id=hostile, peer=hostile), T0)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "\u2028" not in line
    tokens = tokenize(line)
    assert len(tokens) == 6
    assert [t.partition("=")[0] for t in tokens[1:]] == [
        "peer", "direction", "state", "start", "duration"]
    assert tokens[2:4] == ["direction=out", "state=ringing"]


def test_duration_agrees_with_printed_times() -> None:
    c = leg(state="answered", answered_at=T0 + 0.7)  # 17:45:02.95
    assert c.duration(T0 + 0.74) == 0
    assert c.duration(T0 + 0.8) == 1  # 17:45:03 - 17:45:02, as the lines show
    assert c.duration(T0 - 5) == 0  # a clock step back never gives a negative
    assert leg().duration(T0 + 100) == 0


def test_man_page_example_lines_are_what_sipd_renders() -> None:
    text = (REPO / "man" / "srfs.5").read_text()
    shown = [line.replace("\\-", "-") for line in text.splitlines()
             if line.startswith(("a84b4c76e66710@pc33 ", "5f1e\\-77@"))]
    start = 1_796_406_302.0  # 2026-12-04T17:45:02Z
    table = CallTable()
    table.add(leg("a84b4c76e66710@pc33", start=start))
    table.answer("a84b4c76e66710@pc33", start + 7, None)
    table.add(leg("5f1e-77@203.0.113.9", direction="in", peer="sip:alice@example.org",
                  start=start + 18))
    assert table.lines("jan", start + 19) == shown


def test_tree_shows_each_user_their_own_calls() -> None:
    from srfs.fs.tree import Tree
    from srfs.state.location import LocationStore
    from srfs.user import User

    jan, bob = User("jan", 1001, 1001, "/home/jan"), User("bob", 1002, 1002, "/home/bob")
    table = CallTable()
    now = T0 + 30
    tree = Tree(LocationStore(), lambda: (jan, bob), started=0.0,
                calls_of=lambda user: table.lines(user, now))
    assert tree.render("/jan/calls", now) == b""
    table.add(leg(user="jan"))
    table.add(leg(user="bob", direction="in"))
    table.answer("c1", T0 + 10, None)
    jan_text = tree.render("/jan/calls", now).decode()
    bob_text = tree.render("/bob/calls", now).decode()
    assert jan_text == table.lines("jan", now)[0] + "\n"
    assert " direction=out state=answered " in jan_text and jan_text.endswith(" duration=20\n")
    assert bob_text.startswith("c1 peer=sip:jan@example.com direction=in state=answered ")
    node = tree.resolve("/bob/calls")
    assert (node.st_mode & 0o777, node.uid) == (0o400, bob.uid)


_PRINTABLE = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=80)


@given(call_id=_PRINTABLE, peer=_PRINTABLE)
def test_lines_give_back_printable_values(call_id: str, peer: str) -> None:
    tokens = tokenize(format_call(leg(call_id=call_id, peer=peer), T0))
    assert tokens[0] == call_id
    assert tokens[1] == f"peer={peer}"
    assert len(tokens) == 6


def test_srfs_call_modules_never_import_sipd() -> None:
    import subprocess
    import sys

    code = ("import sys, srfs.files.acc, srfs.state.calls; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'sipd'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

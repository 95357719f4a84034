"""srfs.fs.tree: the /run/sr tree as a pure model over the location store and configs."""

from __future__ import annotations

import errno
import math
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from srfs.files.usrloc import format_line
from srfs.fs.tree import (
    MAX_WRITE,
    Kind,
    Node,
    Stat,
    StatKind,
    Tree,
    TreeError,
    render_metrics,
    render_status,
)
from srfs.state.location import (
    UNPROBED,
    Binding,
    Change,
    ChangeKind,
    LocationStore,
    Reach,
    Reachability,
    RemoveReason,
)
from srfs.user import User

NOW = 1_700_000_000.0
STARTED = NOW - 10_000

JAN = User("jan", 1001, 1001, "/home/jan")
BOB = User("bob", 1002, 100, "/home/bob")
CAROL = User("carol", 1003, 1003, "/home/carol")  # not in the SIP group

PBX = "sip:pbx@198.51.100.7:5060"
DESK = "sip:jan@192.0.2.10:5060;transport=udp"


@dataclass
class World:
    """A tree over a real store, with a settable clock and a recording subscriber."""

    store: LocationStore
    tree: Tree
    clock: list[float]
    members: list[User]
    seen: list[Change] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    aliases: dict[str, set[str]] = field(default_factory=dict)


def make_world(
    *,
    statistics: Callable[[], Iterable[Stat]] | None = None,
    with_clock: bool = True,
    alias_map: Callable[[], str] | None = None,
    max_contacts: int | None = None,
) -> World:
    store = LocationStore()
    clock = [NOW]
    members = [JAN, BOB]
    aliases: dict[str, set[str]] = {}

    def owns(user: str, aor: str) -> bool:
        return aor == user or aor in aliases.get(user, set())

    tree = Tree(
        store,
        lambda: tuple(members),
        clock=(lambda: clock[0]) if with_clock else None,
        owns=owns,
        max_contacts=max_contacts,
        statistics=statistics,
        alias_map=alias_map,
        aliases_of=lambda user: sorted(aliases.get(user, set())),
        calls_of=lambda user: [],
        root_uid=0,
        root_gid=0,
        started=STARTED,
    )
    world = World(store, tree, clock, members, aliases=aliases)
    store.subscribe(world.seen.append)
    tree.listen(world.paths.append)
    return world


@pytest.fixture
def w() -> World:
    return make_world()


def binding(contact: str = DESK, *, user: str = "jan", aor: str | None = None,
            expires: float | None = NOW + 3600, registered: float = NOW - 100,
            **kw: Any) -> Binding:
    return Binding(aor=aor or user, user=user, contact=contact, expires=expires,
                   registered=registered, **kw)


def contacts(w: World, user: str = "jan", now: float = NOW) -> str:
    return w.tree.render(f"/{user}/contacts", now).decode()


def err(call: Callable[[], object]) -> TreeError:
    with pytest.raises(TreeError) as info:
        call()
    assert info.value.reason and str(info.value) == info.value.reason
    return info.value


# ------------------------------------------------------------------ structure

# (path, kind, mode, uid, gid, is_dir)
NODES: list[tuple[str, Kind, int, int, int, bool]] = [
    ("/", Kind.ROOT, 0o755, 0, 0, True),
    ("/status", Kind.STATUS, 0o444, 0, 0, False),
    ("/metrics", Kind.METRICS, 0o444, 0, 0, False),
    ("/aliases", Kind.ALIAS_MAP, 0o644, 0, 0, False),
    ("/jan", Kind.USER, 0o700, 1001, 1001, True),
    ("/jan/contacts", Kind.CONTACTS, 0o600, 1001, 1001, False),
    ("/jan/config", Kind.CONFIG, 0o700, 1001, 1001, True),
    ("/jan/aliases", Kind.USER_ALIASES, 0o400, 1001, 1001, False),
    ("/jan/calls", Kind.CALLS, 0o400, 1001, 1001, False),
    ("/bob", Kind.USER, 0o700, 1002, 100, True),
    ("/bob/contacts", Kind.CONTACTS, 0o600, 1002, 100, False),
]


@pytest.mark.parametrize(("path", "kind", "mode", "uid", "gid", "is_dir"), NODES)
def test_lookup_gives_kind_mode_and_owner(
    w: World, path: str, kind: Kind, mode: int, uid: int, gid: int, is_dir: bool
) -> None:
    node = w.tree.lookup(path)
    assert node is not None
    assert (node.path, node.kind, node.mode, node.uid, node.gid, node.is_dir) == (
        path, kind, mode, uid, gid, is_dir)
    assert node.st_mode == (stat.S_IFDIR if is_dir else stat.S_IFREG) | mode
    assert w.tree.resolve(path) == node


@pytest.mark.parametrize(("spelling", "path"), [
    ("jan/contacts", "/jan/contacts"),
    ("/jan//contacts", "/jan/contacts"),
    ("/jan/", "/jan"),
    ("//", "/"),
    ("", "/"),
])
def test_lookup_normalises_spellings(w: World, spelling: str, path: str) -> None:
    node = w.tree.lookup(spelling)
    assert node is not None and node.path == path


def test_node_names_users_and_keys(w: World) -> None:
    w.tree.load_config("jan", "dnd = yes\n", NOW)
    node = w.tree.resolve("/jan/config/dnd")
    assert (node.kind, node.user, node.key, node.name, node.mode) == (
        Kind.SETTING, "jan", "dnd", "dnd", 0o600)
    assert (node.uid, node.gid) == (1001, 1001)
    assert w.tree.resolve("/").name == "/"
    assert w.tree.resolve("/status").user is None


# (path, errno from resolve)
MISSING: list[tuple[str, int]] = [
    ("/carol", errno.ENOENT),  # not in the SIP group
    ("/nobody/contacts", errno.ENOENT),
    ("/jan/nope", errno.ENOENT),
    ("/jan/config/dnd", errno.ENOENT),  # a key that is not set
    ("/jan/config/colour", errno.ENOENT),
    ("/status/x", errno.ENOTDIR),
    ("/jan/contacts/x", errno.ENOTDIR),
    ("/jan/../bob", errno.ENOENT),
    ("/./status", errno.ENOENT),
    ("/jan/config/dnd/x", errno.ENOENT),
]


@pytest.mark.parametrize(("path", "code"), MISSING)
def test_missing_nodes(w: World, path: str, code: int) -> None:
    assert w.tree.lookup(path) is None
    assert err(lambda: w.tree.resolve(path)).errno == code


# (path, entries)
LISTINGS: list[tuple[str, list[str]]] = [
    ("/", ["aliases", "control", "events", "metrics", "status", "bob", "jan"]),
    ("/jan", ["aliases", "calls", "config", "contacts", "events"]),
    ("/jan/config", []),
]


@pytest.mark.parametrize(("path", "entries"), LISTINGS)
def test_listdir(w: World, path: str, entries: list[str]) -> None:
    assert w.tree.listdir(path) == entries
    for name in entries:
        child = w.tree.lookup(f"{path.rstrip('/')}/{name}")
        assert child is not None and child.name == name


def test_config_dir_lists_set_keys_sorted(w: World) -> None:
    w.tree.load_config("jan", "ring_timeout = 20\ndnd = yes\ncolour = blue\n# x\n", NOW)
    assert w.tree.listdir("/jan/config") == ["dnd", "ring_timeout"]
    assert w.tree.listdir("/bob/config") == []


@pytest.mark.parametrize("path", ["/status", "/jan/contacts", "/jan/calls"])
def test_listdir_of_a_file(w: World, path: str) -> None:
    assert err(lambda: w.tree.listdir(path)).errno == errno.ENOTDIR


def test_listdir_of_nothing(w: World) -> None:
    assert err(lambda: w.tree.listdir("/carol")).errno == errno.ENOENT


def test_tree_follows_the_group(w: World) -> None:
    assert w.tree.lookup("/carol") is None
    w.members.append(CAROL)
    assert w.tree.lookup("/carol/contacts") is not None
    assert "carol" in w.tree.listdir("/")
    w.members.remove(JAN)
    assert w.tree.lookup("/jan") is None
    assert w.tree.lookup("/jan/contacts") is None
    assert w.tree.listdir("/") == ["aliases", "control", "events", "metrics", "status", "bob", "carol"]


def test_same_member_tuple_is_indexed_once() -> None:
    members: tuple[User, ...] = (JAN, BOB)
    tree = Tree(LocationStore(), lambda: members, started=0.0)
    assert tree.lookup("/jan") is not None
    index = tree.members()
    assert tree.members() is index  # same tuple: no re-index
    members = (JAN,)  # a new tuple from the provider is indexed afresh
    assert tree.members() is not index and tree.lookup("/bob") is None


def test_a_list_provider_is_reindexed_every_time() -> None:
    members = [JAN]
    tree = Tree(LocationStore(), lambda: members, started=0.0)
    assert tree.lookup("/bob") is None
    members.append(BOB)  # changed in place: must still be seen
    assert tree.lookup("/bob") is not None


@pytest.mark.parametrize("name", ["status", "metrics", "aliases", "events", ".", "..", "-x", "a/b", ""])
def test_users_who_cannot_have_a_directory(name: str) -> None:
    odd = User(name, 2000, 2000, "/home/odd")
    tree = Tree(LocationStore(), lambda: (JAN, odd), started=0.0)
    assert tree.listdir("/") == ["aliases", "control", "events", "metrics", "status", "jan"]
    assert tree.member(name) is None
    if name == "status":
        assert tree.resolve("/status").kind is Kind.STATUS


def test_sync_members_reports_changes_and_stamps_the_root(w: World) -> None:
    assert w.tree.sync_members(NOW) == (["bob", "jan"], [])
    assert w.tree.attributes("/", NOW + 5).mtime == STARTED  # the first sync is no change
    assert w.tree.sync_members(NOW + 1) == ([], [])
    w.members.append(CAROL)
    w.members.remove(BOB)
    w.paths.clear()
    assert w.tree.sync_members(NOW + 2) == (["carol"], ["bob"])
    assert w.paths == ["/"]
    assert w.tree.attributes("/", NOW + 9).mtime == NOW + 2


def test_sync_members_forgets_times_of_users_who_left(w: World) -> None:
    w.tree.sync_members(NOW)
    w.tree.apply_contacts("bob", f"{PBX} aor=bob\n".encode(), "append", NOW + 1)
    assert w.tree.attributes("/bob/contacts", NOW + 2).mtime == NOW + 1
    w.members.remove(BOB)
    w.tree.sync_members(NOW + 3)
    w.members.append(BOB)
    assert w.tree.attributes("/bob/contacts", NOW + 4).mtime == STARTED


# ------------------------------------------------------------------ reading


@pytest.mark.parametrize("path", ["/", "/jan", "/jan/config"])
def test_render_of_a_directory(w: World, path: str) -> None:
    assert err(lambda: w.tree.render(path, NOW)).errno == errno.EISDIR


def test_contacts_empty(w: World) -> None:
    assert contacts(w) == ""


def test_contacts_render_with_format_line(w: World) -> None:
    bs = [
        binding(DESK, expires=NOW + 3521, q=1.0, received="udp:203.0.113.5:40000",
                ua="Linksys/SPA3102-5.1.10", callid="217edcfa-3c466a22", cseq=65321,
                registered=NOW - 50),
        binding(PBX, expires=None, registered=NOW - 10),
        binding("sip:jan@[2001:db8::5]", expires=NOW + 60, q=0.5, ua='say "hi"',
                instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>", reg_id=1,
                path=("<sip:edge.example.org;lr>",), registered=NOW - 200),
    ]
    for b in bs:
        w.store.upsert(b)
    expected = [format_line(b, NOW, reach=UNPROBED)
                for b in sorted(bs, key=lambda b: b.registered)]
    assert contacts(w).splitlines() == expected
    assert contacts(w).endswith("\n")
    assert "expires=never" in contacts(w)


def test_contacts_show_every_aor_of_the_user_and_nobody_else(w: World) -> None:
    w.aliases["jan"] = {"1003"}
    w.store.upsert(binding(DESK, aor="1003", registered=NOW - 1))
    w.store.upsert(binding(PBX, registered=NOW - 5))
    w.store.upsert(binding("sip:bob@192.0.2.20", user="bob"))
    lines = contacts(w).splitlines()
    assert [line.split()[1] for line in lines] == ["aor=1003", "aor=jan"]
    assert contacts(w, "bob").splitlines() == [
        format_line(w.store.lookup("bob")[0], NOW, reach=UNPROBED)]


def test_contacts_order_is_stable_across_refreshes(w: World) -> None:
    w.tree.apply_contacts("jan", f"{DESK} expires=600\n".encode(), "append", NOW)
    w.tree.apply_contacts("jan", f"{PBX}\n".encode(), "append", NOW + 1)
    w.tree.apply_contacts("jan", b"sip:jan@192.0.2.99 expires=600\n", "append", NOW + 2)
    first = [line.split()[0] for line in contacts(w, now=NOW + 3).splitlines()]
    assert first == [DESK, PBX, "sip:jan@192.0.2.99"]  # appended lines come last
    # A refresh (higher q, new expiry) keeps the line where it was.
    w.tree.apply_contacts("jan", f"{DESK} expires=900 q=0.9\n".encode(), "append", NOW + 4)
    again = [line.split()[0] for line in contacts(w, now=NOW + 5).splitlines()]
    assert again == first


def test_expires_counts_down_with_now(w: World) -> None:
    w.tree.apply_contacts("jan", f"{DESK} expires=100\n".encode(), "append", NOW)
    assert "expires=100 " in contacts(w, now=NOW)
    assert "expires=40 " in contacts(w, now=NOW + 60)


def test_contacts_past_their_expiry_are_not_shown(w: World) -> None:
    w.store.upsert(binding(DESK, expires=NOW + 10))
    w.store.upsert(binding(PBX, expires=None))
    assert len(contacts(w, now=NOW + 9).splitlines()) == 2
    assert contacts(w, now=NOW + 10).split()[0] == PBX
    assert w.tree.attributes("/jan/contacts", NOW + 10).size == len(contacts(w, now=NOW + 10))


def test_setting_renders_value_and_newline(w: World) -> None:
    w.tree.load_config("jan", "display_name = Zoë\nforward=TEL:+1555\n", NOW)
    assert w.tree.render("/jan/config/display_name", NOW) == "Zoë\n".encode()
    assert w.tree.render("/jan/config/forward", NOW) == b"tel:+1555\n"


def test_user_aliases_and_calls(w: World) -> None:
    assert w.tree.render("/jan/aliases", NOW) == b""
    assert w.tree.render("/jan/calls", NOW) == b""
    w.aliases["jan"] = {"1003", "+441727238471"}
    assert w.tree.render("/jan/aliases", NOW) == b"+441727238471\n1003\n"


def test_alias_map_placeholder_and_hook() -> None:
    assert make_world().tree.render("/aliases", NOW) == b""
    w = make_world(alias_map=lambda: "# name: owner\n1003: jan\n")
    assert w.tree.render("/aliases", NOW) == b"# name: owner\n1003: jan\n"


def test_render_survives_strange_text(w: World) -> None:
    w.store.upsert(binding(DESK, ua="bad\udcffbyte and \ud800 lone"))
    data = w.tree.render("/jan/contacts", NOW)
    assert b"bad\xffbyte" in data and b"lone" in data


# ------------------------------------------------------------------ attributes


def test_attributes_size_is_render_length(w: World) -> None:
    w.tree.apply_contacts("jan", f"{DESK} expires=100\n{PBX}\n".encode(), "append", NOW)
    w.tree.load_config("jan", "dnd = yes\n", NOW)
    for path in ["/jan/contacts", "/jan/config/dnd", "/status", "/metrics", "/jan/calls",
                 "/jan/aliases", "/aliases"]:
        assert w.tree.attributes(path, NOW + 1).size == len(w.tree.render(path, NOW + 1))
    assert w.tree.attributes("/jan/contacts", NOW).size > 0


# (path, nlink, size)
DIR_ATTRS: list[tuple[str, int]] = [("/", 4), ("/jan", 3), ("/jan/config", 2)]


@pytest.mark.parametrize(("path", "nlink"), DIR_ATTRS)
def test_directory_attributes(w: World, path: str, nlink: int) -> None:
    attrs = w.tree.attributes(path, NOW)
    assert (attrs.size, attrs.nlink) == (0, nlink)
    assert attrs.node == w.tree.resolve(path)


def test_file_nlink(w: World) -> None:
    assert w.tree.attributes("/jan/contacts", NOW).nlink == 1


# ------------------------------------------------------------------ mtime


def test_mtime_defaults_to_start(w: World) -> None:
    for path in ["/", "/jan", "/jan/contacts", "/jan/config", "/aliases", "/jan/aliases"]:
        assert w.tree.attributes(path, NOW + 500).mtime == STARTED


def test_live_files_change_all_the_time(w: World) -> None:
    for path in ["/status", "/metrics", "/jan/calls"]:
        assert w.tree.attributes(path, NOW + 500).mtime == NOW + 500


def test_contacts_mtime_is_the_time_of_the_write_not_of_the_stat(w: World) -> None:
    w.tree.apply_contacts("jan", f"{PBX}\n".encode(), "append", NOW + 7)
    assert w.tree.attributes("/jan/contacts", NOW + 100).mtime == NOW + 7
    assert w.tree.attributes("/bob/contacts", NOW + 100).mtime == STARTED


def test_a_write_that_changes_nothing_keeps_the_mtime(w: World) -> None:
    w.tree.apply_contacts("jan", f"{PBX}\n".encode(), "append", NOW + 7)
    w.tree.apply_contacts("jan", f"{PBX}\n".encode(), "append", NOW + 8)
    w.tree.apply_contacts("jan", b"sip:x@192.0.2.1 expires=0\n", "append", NOW + 9)
    assert w.tree.attributes("/jan/contacts", NOW + 100).mtime == NOW + 7


def test_registrar_changes_are_stamped_with_the_clock(w: World) -> None:
    w.clock[0] = NOW + 20
    w.store.upsert(binding(DESK))  # the registrar's path: straight to the store
    assert w.tree.attributes("/jan/contacts", NOW + 50).mtime == NOW + 20
    w.clock[0] = NOW + 30
    w.store.remove("jan", binding(DESK).key, RemoveReason.UNREGISTERED)
    assert w.tree.attributes("/jan/contacts", NOW + 50).mtime == NOW + 30


def test_expiry_stamps_the_contacts(w: World) -> None:
    w.store.upsert(binding(DESK, expires=NOW + 60))
    w.clock[0] = NOW + 61
    assert len(w.store.expire(NOW + 61)) == 1
    assert w.tree.attributes("/jan/contacts", NOW + 90).mtime == NOW + 61


def test_owner_handover_stamps_both_users(w: World) -> None:
    w.store.upsert(binding(DESK, user="jan", aor="1003"))
    w.clock[0] = NOW + 5
    w.store.upsert(binding(DESK, user="bob", aor="1003"))
    assert w.tree.attributes("/jan/contacts", NOW + 9).mtime == NOW + 5
    assert w.tree.attributes("/bob/contacts", NOW + 9).mtime == NOW + 5


def test_without_a_clock_the_caller_stamps_changes() -> None:
    w = make_world(with_clock=False)
    change = w.store.upsert(binding(DESK))
    assert w.tree.attributes("/jan/contacts", NOW + 9).mtime == STARTED
    w.tree.note_change(change, NOW + 3)
    assert w.tree.attributes("/jan/contacts", NOW + 9).mtime == NOW + 3
    # Writes through the tree stamp themselves either way.
    w.tree.apply_contacts("jan", f"{PBX}\n".encode(), "append", NOW + 4)
    assert w.tree.attributes("/jan/contacts", NOW + 9).mtime == NOW + 4


def test_started_defaults_to_the_clock() -> None:
    assert Tree(LocationStore(), tuple, clock=lambda: 42.0).started == 42.0
    assert Tree(LocationStore(), tuple).started == 0.0


def test_config_mtimes(w: World) -> None:
    w.tree.load_config("jan", "dnd = yes\nring_timeout = 20\n", NOW + 1)
    assert w.tree.attributes("/jan/config", NOW + 9).mtime == NOW + 1
    assert w.tree.attributes("/jan/config/dnd", NOW + 9).mtime == NOW + 1
    # A hand edit of one value: only that key (the entries did not change).
    w.tree.load_config("jan", "# note\ndnd = yes\nring_timeout = 25\n", NOW + 2)
    assert w.tree.attributes("/jan/config", NOW + 9).mtime == NOW + 1
    assert w.tree.attributes("/jan/config/dnd", NOW + 9).mtime == NOW + 1
    assert w.tree.attributes("/jan/config/ring_timeout", NOW + 9).mtime == NOW + 2
    # Setting an existing key through the tree.
    w.tree.apply_config("jan", "dnd", b"no\n", NOW + 3)
    assert w.tree.attributes("/jan/config/dnd", NOW + 9).mtime == NOW + 3
    assert w.tree.attributes("/jan/config", NOW + 9).mtime == NOW + 1
    # A new key and a removed key change the directory.
    w.tree.apply_config("jan", "forward", b"sip:bob@example.org\n", NOW + 4)
    assert w.tree.attributes("/jan/config", NOW + 9).mtime == NOW + 4
    w.tree.remove_config("jan", "dnd", NOW + 5)
    assert w.tree.attributes("/jan/config", NOW + 9).mtime == NOW + 5
    # A key set again later starts from its new time, not a stale one.
    w.tree.apply_config("jan", "dnd", b"yes\n", NOW + 6)
    assert w.tree.attributes("/jan/config/dnd", NOW + 9).mtime == NOW + 6


def test_touch_for_hooks(w: World) -> None:
    w.tree.touch("/aliases", NOW + 3)
    assert w.tree.attributes("/aliases", NOW + 9).mtime == NOW + 3
    assert w.paths == ["/aliases"]


# ------------------------------------------------------------------ listeners


def test_listeners_hear_the_changed_paths(w: World) -> None:
    w.tree.apply_contacts("jan", f"{DESK} expires=60\n{PBX}\n".encode(), "append", NOW)
    assert w.paths == ["/jan/contacts"]  # once per write, not per binding
    w.paths.clear()
    w.tree.apply_config("jan", "dnd", b"yes\n", NOW)
    assert w.paths == ["/jan/config", "/jan/config/dnd"]
    w.paths.clear()
    w.tree.remove_config("jan", "dnd", NOW)
    assert w.paths == ["/jan/config", "/jan/config/dnd"]
    w.paths.clear()
    w.store.upsert(binding("sip:bob@192.0.2.9", user="bob"))
    assert w.paths == ["/bob/contacts"]


# ------------------------------------------------------------------ contacts: append


def test_append_adds_a_static_contact(w: World) -> None:
    changes = w.tree.apply_contacts("jan", f"{PBX}\n".encode(), "append", NOW)
    assert [c.kind for c in changes] == [ChangeKind.ADDED]
    b = w.store.lookup("jan")[0]
    assert (b.contact, b.aor, b.user, b.static, b.callid, b.cseq) == (PBX, "jan", "jan", True, "", 0)
    assert contacts(w) == f"{PBX} aor=jan expires=never q=1.0 reachable=unknown\n"
    assert w.seen == changes


def test_append_with_expires(w: World) -> None:
    w.tree.apply_contacts("jan", f"{DESK} expires=300 q=0.5 ua=\"X 1\"\n".encode(), "append", NOW)
    b = w.store.lookup("jan")[0]
    assert (b.expires, b.q, b.ua) == (NOW + 300, 0.5, "X 1")


def test_append_refreshes_the_same_binding(w: World) -> None:
    w.tree.apply_contacts("jan", f"{DESK} expires=300\n".encode(), "append", NOW)
    # Same binding (URI compared as RFC 3261 does: case of host, default port).
    changes = w.tree.apply_contacts(
        "jan", b"sip:jan@192.0.2.10;transport=UDP expires=600\n", "append", NOW + 10)
    assert [c.kind for c in changes] == [ChangeKind.UPDATED]
    assert len(w.store.lookup("jan")) == 1
    assert w.store.lookup("jan")[0].expires == NOW + 610
    assert w.store.lookup("jan")[0].registered == NOW  # first registration kept


def test_append_by_instance_id_is_one_binding(w: World) -> None:
    inst = '"<urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6>"'
    w.tree.apply_contacts("jan", f"{DESK} expires=60 instance={inst} reg_id=1\n".encode(),
                          "append", NOW)
    w.tree.apply_contacts("jan", f"sip:jan@192.0.2.77 expires=60 instance={inst} reg_id=1\n"
                          .encode(), "append", NOW)
    assert [b.contact for b in w.store.lookup("jan")] == ["sip:jan@192.0.2.77"]


def test_append_several_lines_and_skip_comments(w: World) -> None:
    data = f"# my trunk\n\n{PBX}\n   \n{DESK} expires=60\r\n".encode()
    changes = w.tree.apply_contacts("jan", data, "append", NOW)
    assert len(changes) == 2 and len(w.store.lookup("jan")) == 2


def test_append_without_final_newline(w: World) -> None:
    w.tree.apply_contacts("jan", PBX.encode(), "append", NOW)
    assert len(w.store.lookup("jan")) == 1


def test_append_nothing_changes_nothing(w: World) -> None:
    w.store.upsert(binding(DESK))
    w.seen.clear()
    assert w.tree.apply_contacts("jan", b"", "append", NOW) == []
    assert w.tree.apply_contacts("jan", b"\n# only a comment\n", "append", NOW) == []
    assert len(w.store.lookup("jan")) == 1 and w.seen == []


def test_append_expires_zero_removes_that_contact(w: World) -> None:
    w.store.upsert(binding(DESK))
    w.store.upsert(binding(PBX, expires=None))
    w.seen.clear()
    changes = w.tree.apply_contacts("jan", f"{PBX} expires=0\n".encode(), "append", NOW)
    assert [(c.kind, c.reason, c.binding.contact) for c in changes] == [
        (ChangeKind.REMOVED, RemoveReason.ADMIN, PBX)]
    assert [b.contact for b in w.store.lookup("jan")] == [DESK]
    assert w.seen == changes


def test_append_expires_at_in_the_past_removes(w: World) -> None:
    w.store.upsert(binding(DESK))
    w.tree.apply_contacts("jan", f"{DESK} expires_at={NOW - 5:.0f}\n".encode(), "append", NOW)
    assert w.store.lookup("jan") == []


def test_append_expires_zero_for_an_unknown_contact_is_no_change(w: World) -> None:
    assert w.tree.apply_contacts("jan", f"{PBX} expires=0\n".encode(), "append", NOW) == []


def test_append_add_then_remove_in_one_write(w: World) -> None:
    changes = w.tree.apply_contacts("jan", f"{PBX}\n{PBX} expires=0\n".encode(), "append", NOW)
    assert [c.kind for c in changes] == [ChangeKind.ADDED, ChangeKind.REMOVED]
    assert w.store.lookup("jan") == []


def test_append_keeps_the_other_contacts(w: World) -> None:
    w.store.upsert(binding(DESK))
    w.tree.apply_contacts("jan", f"{PBX}\n".encode(), "append", NOW)
    assert {b.contact for b in w.store.lookup("jan")} == {DESK, PBX}


def test_explicit_aor_of_the_user(w: World) -> None:
    w.tree.apply_contacts("jan", f"{PBX} aor=jan\n".encode(), "append", NOW)
    assert w.store.lookup("jan")[0].aor == "jan"


def test_an_aor_the_user_does_not_own_is_refused(w: World) -> None:
    data = f"{PBX}\n{DESK} aor=bob\n".encode()
    e = err(lambda: w.tree.apply_contacts("jan", data, "append", NOW))
    assert e.errno == errno.EACCES
    assert "line 2" in e.reason and "bob" in e.reason
    assert list(w.store) == [] and w.seen == []


def test_an_alias_widens_what_the_user_owns(w: World) -> None:
    w.aliases["jan"] = {"1003"}
    w.tree.apply_contacts("jan", f"{DESK} aor=1003\n".encode(), "append", NOW)
    b = w.store.lookup("1003")[0]
    assert (b.aor, b.user) == ("1003", "jan")
    assert contacts(w).split()[1] == "aor=1003"
    # bob does not own it
    e = err(lambda: w.tree.apply_contacts("bob", f"{PBX} aor=1003\n".encode(), "append", NOW))
    assert e.errno == errno.EACCES


def test_a_non_member_has_no_contacts_to_write(w: World) -> None:
    e = err(lambda: w.tree.apply_contacts("carol", f"{PBX}\n".encode(), "append", NOW))
    assert e.errno == errno.ENOENT


def test_bad_mode(w: World) -> None:
    with pytest.raises(ValueError):
        w.tree.apply_contacts("jan", b"", "truncate", NOW)  # type: ignore[arg-type]


# ------------------------------------------------------------------ contacts: replace


def test_replace_sets_exactly_the_lines_given(w: World) -> None:
    w.store.upsert(binding(DESK))
    w.store.upsert(binding("sip:jan@192.0.2.30"))
    w.store.upsert(binding("sip:bob@192.0.2.20", user="bob"))
    w.seen.clear()
    changes = w.tree.apply_contacts(
        "jan", f"{PBX}\n{DESK} expires=100\n".encode(), "replace", NOW)
    assert {b.contact for b in w.store.lookup("jan")} == {PBX, DESK}
    assert w.store.lookup("jan")[0].expires in (None, NOW + 100)
    kinds = sorted((c.kind.value, c.binding.contact) for c in changes)
    assert kinds == [("added", PBX), ("removed", "sip:jan@192.0.2.30"), ("updated", DESK)]
    removed = [c for c in changes if c.kind is ChangeKind.REMOVED]
    assert all(c.reason is RemoveReason.ADMIN for c in removed)
    assert len(w.store.lookup("bob")) == 1  # other users are untouched
    assert w.seen == changes


def test_replace_with_nothing_clears(w: World) -> None:
    w.store.upsert(binding(DESK))
    w.store.upsert(binding(PBX, expires=None))
    changes = w.tree.apply_contacts("jan", b"", "replace", NOW)
    assert {(c.kind, c.reason) for c in changes} == {(ChangeKind.REMOVED, RemoveReason.ADMIN)}
    assert len(changes) == 2 and w.store.lookup("jan") == []
    assert contacts(w) == ""


def test_replace_clears_every_aor_of_the_user(w: World) -> None:
    w.aliases["jan"] = {"1003"}
    w.store.upsert(binding(DESK, aor="1003"))
    w.store.upsert(binding(PBX))
    w.tree.apply_contacts("jan", b"", "replace", NOW)
    assert list(w.store) == []


def test_replace_with_expires_zero_leaves_it_out(w: World) -> None:
    w.store.upsert(binding(DESK))
    w.tree.apply_contacts("jan", f"{PBX}\n{DESK} expires=0\n".encode(), "replace", NOW)
    assert [b.contact for b in w.store.lookup("jan")] == [PBX]


def test_replace_later_line_for_the_same_binding_wins(w: World) -> None:
    data = f"{DESK} expires=0\n{DESK} expires=50\n{PBX} expires=50\n{PBX} expires=0\n"
    w.tree.apply_contacts("jan", data.encode(), "replace", NOW)
    assert [(b.contact, b.expires) for b in w.store.lookup("jan")] == [(DESK, NOW + 50)]


def test_writing_back_what_cat_showed_changes_nothing(w: World) -> None:
    w.store.upsert(binding(DESK, expires=NOW + 3521.4, received="udp:203.0.113.5:40000",
                           ua="Linksys/SPA3102-5.1.10", callid="217edcfa-3c466a22",
                           cseq=65321))
    w.store.upsert(binding(PBX, expires=None, q=0.25))
    w.store.upsert(binding("sip:jan@192.0.2.3", instance="<urn:uuid:1>", reg_id=2,
                           path=("<sip:p1;lr>", "<sip:p2;lr>"), expires=NOW + 10))
    w.seen.clear()
    shown = w.tree.render("/jan/contacts", NOW + 0.5)
    assert w.tree.apply_contacts("jan", shown, "replace", NOW + 0.5) == []
    assert w.tree.apply_contacts("jan", shown, "append", NOW + 0.5) == []
    assert w.seen == []


def test_reachability_is_appended_after_every_other_attribute(w: World) -> None:
    w.store.upsert(binding(DESK, expires=NOW + 60, received="udp:203.0.113.5:40000",
                           registered=NOW - 2))
    w.store.upsert(binding(PBX, expires=None, registered=NOW - 1))
    w.paths.clear()
    w.clock[0] = NOW + 5
    desk = next(b for b in w.store.lookup("jan") if b.contact == DESK)
    w.store.set_reachability("jan", desk.key, Reachability(Reach.YES, 0.0124))
    # The file's time moves with what a probe found: readers see the change.
    assert w.paths == ["/jan/contacts"]
    assert w.tree.attributes("/jan/contacts", NOW + 5).mtime == NOW + 5
    lines = contacts(w).splitlines()
    assert lines[0] == (f"{DESK} aor=jan expires=60 q=1.0 received=udp:203.0.113.5:40000 "
                        "reachable=yes rtt=12ms")
    assert lines[1] == f"{PBX} aor=jan expires=never q=1.0 reachable=unknown"
    w.store.set_reachability("jan", desk.key, Reachability(Reach.NO, 0.0124))
    assert contacts(w).splitlines()[0].endswith(" reachable=no rtt=12ms")
    # Written back, the measured attributes are accepted and change nothing.
    w.seen.clear()
    assert w.tree.apply_contacts("jan", contacts(w).encode(), "replace", NOW) == []
    assert w.seen == []
    assert w.store.reachability("jan", desk.key).state is Reach.NO


@pytest.mark.parametrize("attr", ["reachable=maybe", "reachable=", "rtt=12", "rtt=fast",
                                  "rtt=-3ms"])
def test_measured_attributes_are_checked_when_written(w: World, attr: str) -> None:
    with pytest.raises(TreeError) as caught:
        w.tree.apply_contacts("jan", f"{PBX} {attr}\n".encode(), "append", NOW)
    assert caught.value.errno == errno.EINVAL


def test_reachability_goes_with_its_binding(w: World) -> None:
    w.store.upsert(binding(DESK))
    b = w.store.lookup("jan")[0]
    w.store.set_reachability("jan", b.key, Reachability(Reach.NO, None))
    assert w.store.unreachable() == 1
    w.store.remove("jan", b.key, RemoveReason.UNREACHABLE)
    assert w.store.unreachable() == 0
    w.store.upsert(binding(DESK))
    assert w.store.reachability("jan", b.key) == UNPROBED
    # A binding that is not there has nothing to record.
    w.store.set_reachability("jan", "sip:nobody@192.0.2.99:5060;", Reachability(Reach.YES, 0.1))
    assert w.store.unreachable() == 0


def test_replace_edits_only_the_edited_line(w: World) -> None:
    w.store.upsert(binding(DESK))
    w.store.upsert(binding(PBX, expires=None))
    shown = contacts(w).replace("q=1.0", "q=0.5", 1)
    changes = w.tree.apply_contacts("jan", shown.encode(), "replace", NOW)
    assert [c.kind for c in changes] == [ChangeKind.UPDATED]


_LINE = st.tuples(st.integers(1, 4), st.sampled_from([None, 0, 60, 3600]))
_WRITE = st.tuples(st.sampled_from(["append", "replace"]), st.lists(_LINE, max_size=5))


@settings(max_examples=200, deadline=None)
@given(writes=st.lists(_WRITE, max_size=6))
def test_writes_match_a_line_by_line_model(writes: list[tuple[str, list[tuple[int, int | None]]]]
                                           ) -> None:
    w = make_world()
    model: dict[str, int | None] = {}
    for mode, entries in writes:
        text = ""
        if mode == "replace":
            model = {}
        for host, expires in entries:
            contact = f"sip:jan@192.0.2.{host}"
            text += contact + ("" if expires is None else f" expires={expires}") + "\n"
            if expires == 0:
                model.pop(contact, None)
            else:
                model[contact] = expires
        w.tree.apply_contacts("jan", text.encode(), mode, NOW)  # type: ignore[arg-type]
        got = {b.contact: b.remaining(NOW) for b in w.store.bindings_of_user("jan")}
        assert got == model
        # What cat shows, written back, is a no-op.
        shown = w.tree.render("/jan/contacts", NOW)
        assert w.tree.apply_contacts("jan", shown, "replace", NOW) == []
    # Every change the subscribers saw came from the tree, removals as ADMIN.
    assert all(c.reason in (None, RemoveReason.ADMIN) for c in w.seen)


# ------------------------------------------------------------------ contacts: bad lines

BAD_LINES: list[bytes] = [
    b"not-a-uri",
    b"http://example.org/",
    b"sip:jan@192.0.2.1 expire=0",  # a typo must not add a static contact
    b"sip:jan@192.0.2.1 expires=soon",
    b"sip:jan@192.0.2.1 expires=-1",
    b"sip:jan@192.0.2.1 q=2",
    b"sip:jan@192.0.2.1 ua=\"unterminated",
    b"sip:jan@192.0.2.1 received=192.0.2.1",
    b"sip:jan@192.0.2.1 noequals",
    b"sip:jan@192.0.2.1 q=1 q=1",
    b"sip:jan@192.0.2.1 aor=\"bad aor\"",
    b"sip:jan@\xff",
    b"sip:jan@192.0.2.1 " + b"x" * 5000,
]


@pytest.mark.parametrize("bad", BAD_LINES)
@pytest.mark.parametrize("mode", ["append", "replace"])
def test_a_bad_line_anywhere_applies_nothing(w: World, bad: bytes, mode: str) -> None:
    w.store.upsert(binding(DESK))
    w.seen.clear()
    w.paths.clear()
    before = list(w.store)
    data = f"{PBX}\n# fine so far\n".encode() + bad + f"\n{DESK} expires=0\n".encode()
    e = err(lambda: w.tree.apply_contacts("jan", data, mode, NOW + 5))  # type: ignore[arg-type]
    assert e.errno == errno.EINVAL
    assert e.reason.startswith("line 3") or "UTF-8" in e.reason
    assert list(w.store) == before and w.seen == [] and w.paths == []
    assert w.tree.attributes("/jan/contacts", NOW + 9).mtime == NOW  # from the upsert only


def test_the_reason_names_the_problem(w: World) -> None:
    e = err(lambda: w.tree.apply_contacts("jan", b"sip:a@b\nsip:a@b expire=0\n", "append", NOW))
    assert e.reason == "line 2: unknown attribute 'expire'"


def test_too_big_a_write(w: World) -> None:
    data = (f"{PBX}\n" * (MAX_WRITE // len(PBX) + 2)).encode()
    assert err(lambda: w.tree.apply_contacts("jan", data, "append", NOW)).errno == errno.EFBIG
    assert list(w.store) == []


def lines(n: int, start: int = 0, extra: str = "") -> bytes:
    return "".join(f"sip:jan@192.0.2.{i}{extra}\n" for i in range(start, start + n)).encode()


def test_max_contacts_refuses_growth_beyond_the_limit() -> None:
    w = make_world(max_contacts=3)
    w.tree.apply_contacts("jan", lines(3), "append", NOW)
    e = err(lambda: w.tree.apply_contacts("jan", lines(1, 10), "append", NOW))
    assert e.errno == errno.EDQUOT and "max_contacts is 3" in e.reason
    assert len(w.store.lookup("jan")) == 3
    # Refreshing, swapping one for another and replacing within the limit are fine.
    w.tree.apply_contacts("jan", lines(3, extra=" expires=60"), "append", NOW)
    swap = lines(1, 0, " expires=0") + lines(1, 10)
    w.tree.apply_contacts("jan", swap, "append", NOW)
    w.tree.apply_contacts("jan", lines(3, 20), "replace", NOW)
    assert len(w.store.lookup("jan")) == 3
    e = err(lambda: w.tree.apply_contacts("jan", lines(4, 30), "replace", NOW))
    assert e.errno == errno.EDQUOT and len(w.store.lookup("jan")) == 3


def test_max_contacts_counts_the_aor_not_the_user() -> None:
    w = make_world(max_contacts=2)
    w.aliases["jan"] = {"1003"}
    w.aliases["bob"] = {"1003"}
    w.tree.apply_contacts("bob", lines(2, extra=" aor=1003"), "append", NOW)
    e = err(lambda: w.tree.apply_contacts("jan", lines(1, 5, " aor=1003"), "append", NOW))
    assert e.errno == errno.EDQUOT
    w.tree.apply_contacts("jan", lines(2, 5), "append", NOW)  # another AOR: fine


def test_an_aor_over_a_lowered_limit_may_shrink_and_refresh() -> None:
    w = make_world(max_contacts=5)
    w.tree.apply_contacts("jan", lines(5), "append", NOW)
    w.tree.max_contacts = 2
    w.tree.apply_contacts("jan", lines(5, extra=" q=0.5"), "replace", NOW)
    w.tree.apply_contacts("jan", lines(4), "replace", NOW)
    assert len(w.store.lookup("jan")) == 4
    assert err(lambda: w.tree.apply_contacts("jan", lines(1, 9), "append",
                                             NOW)).errno == errno.EDQUOT


def test_parse_contacts_validates_without_applying(w: World) -> None:
    bs = w.tree.parse_contacts("jan", f"{PBX}\n{DESK} expires=10\n".encode(), NOW)
    assert [(b.contact, b.user, b.expires) for b in bs] == [(PBX, "jan", None),
                                                            (DESK, "jan", NOW + 10)]
    assert list(w.store) == []


# ------------------------------------------------------------------ the generic write path


def test_commit_contacts_append_and_replace(w: World) -> None:
    r = w.tree.commit("/jan/contacts", f"{PBX}\n".encode(), append=True, now=NOW)
    assert [c.kind for c in r.changes] == [ChangeKind.ADDED] and r.config is None
    w.tree.commit("/jan/contacts", f"{DESK}\n".encode(), append=True, now=NOW)
    assert len(w.store.lookup("jan")) == 2
    r = w.tree.commit("/jan/contacts", f"{DESK}\n".encode(), append=False, now=NOW)
    assert [c.kind for c in r.changes] == [ChangeKind.REMOVED]
    assert [b.contact for b in w.store.lookup("jan")] == [DESK]
    w.tree.commit("/jan/contacts", b"", append=False, now=NOW)
    assert w.store.lookup("jan") == []


# (path, errno of a write)
READ_ONLY: list[tuple[str, int]] = [
    ("/status", errno.EACCES),
    ("/metrics", errno.EACCES),
    ("/jan/aliases", errno.EACCES),
    ("/jan/calls", errno.EACCES),
    ("/aliases", errno.EOPNOTSUPP),
    ("/", errno.EISDIR),
    ("/jan", errno.EISDIR),
    ("/jan/config", errno.EISDIR),
    ("/carol/contacts", errno.ENOENT),
    ("/jan/bogus", errno.ENOENT),
    ("/status/x", errno.ENOTDIR),
]


@pytest.mark.parametrize(("path", "code"), READ_ONLY)
def test_writes_where_none_are_taken(w: World, path: str, code: int) -> None:
    assert err(lambda: w.tree.check_open(path, write=True)).errno == code
    assert err(lambda: w.tree.check_write(path, b"x\n", NOW, complete=True)).errno == code
    assert err(lambda: w.tree.commit(path, b"x\n", append=False, now=NOW)).errno == code
    assert list(w.store) == []


@pytest.mark.parametrize("path", ["/status", "/metrics", "/jan/aliases", "/jan/calls",
                                  "/aliases", "/jan/contacts", "/"])
def test_reads_are_open_everywhere(w: World, path: str) -> None:
    assert w.tree.check_open(path, write=False).path == path


@pytest.mark.parametrize(("path", "writable"), [
    ("/jan/contacts", True), ("/aliases", True), ("/status", False), ("/jan/calls", False),
    ("/jan", False),
])
def test_node_writable(w: World, path: str, writable: bool) -> None:
    assert w.tree.resolve(path).writable is writable


def test_check_write_contacts_checks_finished_lines_only(w: World) -> None:
    tree = w.tree
    tree.check_write("/jan/contacts", f"{PBX}\nsip:half".encode(), NOW, complete=False)
    tree.check_write("/jan/contacts", b"garbage without newline", NOW, complete=False)
    e = err(lambda: tree.check_write("/jan/contacts", b"garbage\n", NOW, complete=False))
    assert e.errno == errno.EINVAL
    e = err(lambda: tree.check_write("/jan/contacts", b"garbage", NOW, complete=True))
    assert e.errno == errno.EINVAL
    e = err(lambda: tree.check_write("/jan/contacts", b"sip:a@b aor=bob\n", NOW, complete=False))
    assert e.errno == errno.EACCES
    assert list(w.store) == []


# ------------------------------------------------------------------ config


def test_set_a_new_key_through_the_tree(w: World) -> None:
    w.tree.load_config("jan", "# my phone\ncolour = blue\n", NOW)
    node = w.tree.check_create("/jan/config/dnd")
    assert (node.kind, node.key, node.mode, node.uid) == (Kind.SETTING, "dnd", 0o600, 1001)
    assert w.tree.lookup("/jan/config/dnd") is None  # not there until committed
    r = w.tree.commit("/jan/config/dnd", b"on\n", append=False, now=NOW)
    change = r.config
    assert change is not None and r.changes == ()
    assert (change.user, change.key, change.value, change.changed) == (JAN, "dnd", "yes", True)
    assert change.text == "# my phone\ncolour = blue\ndnd = yes\n"
    assert change.data == change.text.encode()
    assert w.tree.render("/jan/config/dnd", NOW) == b"yes\n"
    assert w.tree.config("jan").flag("dnd")
    assert w.tree.listdir("/jan/config") == ["dnd"]


def test_set_an_existing_key_in_place(w: World) -> None:
    w.tree.load_config("jan", "# a\ndnd = no\n# b\n", NOW)
    change = w.tree.apply_config("jan", "dnd", b"yes\n", NOW)
    assert change.text == "# a\ndnd = yes\n# b\n"


# (data written, stored value) for config/<key> writes
CONFIG_WRITES: list[tuple[str, bytes, str]] = [
    ("dnd", b"yes\n", "yes"),
    ("dnd", b"yes", "yes"),
    ("dnd", b"TRUE\r\n", "yes"),
    ("dnd", b"0\n", "no"),
    ("ring_timeout", b"045\n", "45"),
    ("forward", b"SIP:bob@example.org\n", "sip:bob@example.org"),
    ("forward_noanswer", b"tel:+441727238471\n", "tel:+441727238471"),
    ("display_name", "  Zoë  \n".encode(), "Zoë"),
    ("caller_id", b"jan\n", "jan"),
]


@pytest.mark.parametrize(("key", "data", "value"), CONFIG_WRITES)
def test_config_writes_are_validated_and_normalised(
    w: World, key: str, data: bytes, value: str
) -> None:
    change = w.tree.apply_config("jan", key, data, NOW)
    assert change.value == value
    assert w.tree.render(f"/jan/config/{key}", NOW) == (value + "\n").encode()
    w.tree.check_write(f"/jan/config/{key}", data, NOW, complete=True)


BAD_CONFIG_WRITES: list[tuple[str, bytes]] = [
    ("dnd", b"maybe\n"),
    ("dnd", b"yes\nno\n"),
    ("dnd", b"yes\n\n"),
    ("ring_timeout", b"0\n"),
    ("ring_timeout", b"1000\n"),
    ("forward", b"bob\n"),
    ("display_name", b"a\tb\n"),
    ("display_name", b"\xff\n"),
    ("display_name", b"x" * 5000),
    ("caller_id", b"bob\n"),  # not one of jan's AORs
    ("caller_id", b"a b\n"),
]


@pytest.mark.parametrize(("key", "data"), BAD_CONFIG_WRITES)
def test_bad_config_values_change_nothing(w: World, key: str, data: bytes) -> None:
    w.tree.load_config("jan", "# keep\ndnd = no\n", NOW)
    before = w.tree.config("jan")
    e = err(lambda: w.tree.apply_config("jan", key, data, NOW + 1))
    assert e.errno == errno.EINVAL and e.reason.startswith(key)
    assert w.tree.config("jan") is before
    e = err(lambda: w.tree.check_write(f"/jan/config/{key}", data, NOW, complete=True))
    assert e.errno == errno.EINVAL
    assert w.paths == ["/jan/config", "/jan/config/dnd"]  # only from the load


def test_caller_id_may_be_an_alias(w: World) -> None:
    w.aliases["jan"] = {"1003"}
    assert w.tree.apply_config("jan", "caller_id", b"1003\n", NOW).value == "1003"


def test_check_write_config_in_progress(w: World) -> None:
    tree = w.tree
    tree.check_write("/jan/config/dnd", b"may", NOW, complete=False)  # not finished yet
    assert err(lambda: tree.check_write("/jan/config/dnd", b"maybe\n", NOW,
                                        complete=False)).errno == errno.EINVAL
    assert err(lambda: tree.check_write("/jan/config/dnd", b"yes\nx", NOW,
                                        complete=False)).errno == errno.EINVAL
    tree.check_write("/jan/config/dnd", b"yes\n", NOW, complete=False)
    tree.check_write("/jan/config/dnd", b"", NOW, complete=True)  # empty = remove: fine
    assert tree.lookup("/jan/config/dnd") is None


def test_same_value_again_is_no_change(w: World) -> None:
    w.tree.apply_config("jan", "dnd", b"yes\n", NOW)
    w.paths.clear()
    change = w.tree.apply_config("jan", "dnd", b"on\n", NOW + 5)
    assert (change.changed, change.value, change.text) == (False, "yes", "dnd = yes\n")
    assert w.paths == []
    assert w.tree.attributes("/jan/config/dnd", NOW + 9).mtime == NOW


def test_empty_write_removes_the_key(w: World) -> None:
    w.tree.load_config("jan", "# c\ndnd = yes\nforward = tel:+1555\n", NOW)
    r = w.tree.commit("/jan/config/dnd", b"", append=False, now=NOW)
    assert r.config is not None
    assert (r.config.value, r.config.changed) == (None, True)
    assert r.config.text == "# c\nforward = tel:+1555\n"
    assert w.tree.lookup("/jan/config/dnd") is None
    assert w.tree.listdir("/jan/config") == ["forward"]
    # A blank line is empty too.
    assert w.tree.apply_config("jan", "forward", b"  \n", NOW).value is None
    # Emptying a key that is not set: nothing to do, nothing to write.
    again = w.tree.apply_config("jan", "dnd", b"", NOW)
    assert (again.changed, again.text) == (False, "# c\n")


def test_append_to_a_setting_sets_it(w: World) -> None:
    w.tree.apply_config("jan", "dnd", b"no\n", NOW)
    r = w.tree.commit("/jan/config/dnd", b"yes\n", append=True, now=NOW)
    assert r.config is not None and r.config.value == "yes"


def test_rm_a_setting(w: World) -> None:
    w.tree.load_config("jan", "dnd = yes\n# tail\n", NOW)
    change = w.tree.unlink("/jan/config/dnd", NOW)
    assert (change.key, change.value, change.text, change.changed) == ("dnd", None, "# tail\n",
                                                                      True)
    assert w.tree.lookup("/jan/config/dnd") is None
    assert err(lambda: w.tree.unlink("/jan/config/dnd", NOW)).errno == errno.ENOENT
    assert err(lambda: w.tree.remove_config("jan", "dnd", NOW)).errno == errno.ENOENT


# (path, errno of unlink)
UNLINKS: list[tuple[str, int]] = [
    ("/jan/contacts", errno.EPERM),
    ("/status", errno.EPERM),
    ("/jan/aliases", errno.EPERM),
    ("/jan/config", errno.EISDIR),
    ("/jan", errno.EISDIR),
    ("/jan/config/forward", errno.ENOENT),
    ("/carol/config/dnd", errno.ENOENT),
]


@pytest.mark.parametrize(("path", "code"), UNLINKS)
def test_unlink_elsewhere(w: World, path: str, code: int) -> None:
    assert err(lambda: w.tree.unlink(path, NOW)).errno == code


# (path, errno of create)
CREATES: list[tuple[str, int]] = [
    ("/jan/config/colour", errno.EPERM),
    ("/jan/config/DND", errno.EPERM),
    ("/jan/notes", errno.EPERM),
    ("/jan/config.tmp", errno.EPERM),
    ("/newfile", errno.EPERM),
    ("/carol/config/dnd", errno.ENOENT),
    ("/jan/contacts/x", errno.ENOTDIR),
    ("/", errno.EEXIST),
]


@pytest.mark.parametrize(("path", "code"), CREATES)
def test_create_only_known_keys(w: World, path: str, code: int) -> None:
    assert err(lambda: w.tree.check_create(path)).errno == code


def test_create_names_the_known_keys(w: World) -> None:
    e = err(lambda: w.tree.check_create("/jan/config/colour"))
    assert "dnd" in e.reason and "forward_noanswer" in e.reason


def test_commit_to_an_unknown_key_file(w: World) -> None:
    e = err(lambda: w.tree.commit("/jan/config/colour", b"blue\n", append=False, now=NOW))
    assert e.errno == errno.EPERM


def test_config_api_errors(w: World) -> None:
    assert err(lambda: w.tree.apply_config("jan", "colour", b"x", NOW)).errno == errno.ENOENT
    assert err(lambda: w.tree.apply_config("carol", "dnd", b"yes", NOW)).errno == errno.ENOENT
    assert err(lambda: w.tree.remove_config("carol", "dnd", NOW)).errno == errno.ENOENT


def test_load_config_returns_problems_and_shows_valid_keys(w: World) -> None:
    cfg = w.tree.load_config("jan", b"dnd = maybe\nforward = tel:+1555\nfoo = 1\n", NOW)
    assert [p.lineno for p in cfg.problems] == [1, 3]
    assert w.tree.listdir("/jan/config") == ["forward"]
    w.tree.load_config("jan", None, NOW + 1)
    assert w.tree.listdir("/jan/config") == []
    assert w.tree.attributes("/jan/config", NOW + 2).mtime == NOW + 1


def test_forget_config(w: World) -> None:
    w.tree.load_config("jan", "dnd = yes\n", NOW)
    w.tree.forget_config("jan")
    assert w.tree.listdir("/jan/config") == []


def test_config_edits_keep_the_users_lines(w: World) -> None:
    original = "# Jan's settings\n\ncolour = blue\nnonsense here\ndnd = no\n"
    w.tree.load_config("jan", original, NOW)
    text = w.tree.apply_config("jan", "forward", b"sip:bob@example.org\n", NOW).text
    text = w.tree.apply_config("jan", "dnd", b"yes\n", NOW).text
    assert text == ("# Jan's settings\n\ncolour = blue\nnonsense here\ndnd = yes\n"
                    "forward = sip:bob@example.org\n")
    text = w.tree.remove_config("jan", "forward", NOW).text
    assert text == "# Jan's settings\n\ncolour = blue\nnonsense here\ndnd = yes\n"
    assert w.tree.config("jan").text == text


# ------------------------------------------------------------------ status and metrics


def daemon_stats() -> list[Stat]:
    return [
        Stat("version", "0.1.0", "The running sipd version.", StatKind.INFO),
        Stat("uptime_seconds", 3600.25, "Seconds since start."),
        Stat("listen", ("udp:0.0.0.0:5060", "tcp:[::]:5060"), "Listening sockets.",
             StatKind.INFO),
        Stat("transactions", 4, "Transactions in progress."),
        Stat("calls", 1, "Calls in progress."),
        Stat("messages_in", 120, "SIP messages received.", StatKind.COUNTER),
        Stat("messages_out", 118, "SIP messages sent.", StatKind.COUNTER),
        Stat("requests", 7, "Requests by method.", StatKind.COUNTER,
             labels=(("method", "REGISTER"),), status=False),
        Stat("requests", 2, "Requests by method.", StatKind.COUNTER,
             labels=(("method", "INVITE"),), status=False),
        Stat("bad_input", 0, "Unusable datagrams \\ streams\nper cause.", StatKind.COUNTER,
             labels=(("cause", 'quote " and \\ and\nnewline'),), status=False),
        Stat("load", math.nan, "Not a number."),
        Stat("limit", math.inf, "Infinite.", status=False),
    ]


def populated() -> World:
    w = make_world(statistics=daemon_stats)
    w.store.upsert(binding(DESK))
    w.store.upsert(binding(PBX, expires=None))
    w.store.upsert(binding("sip:bob@192.0.2.20", user="bob", expires=NOW + 10))
    w.store.expire(NOW + 11)
    return w


def test_status_lines() -> None:
    w = populated()
    text = w.tree.render("/status", NOW).decode()
    assert text.splitlines() == [
        "version: 0.1.0",
        "uptime_seconds: 3600.25",
        "listen: udp:0.0.0.0:5060 tcp:[::]:5060",
        "transactions: 4",
        "calls: 1",
        "messages_in: 120",
        "messages_out: 118",
        "load: nan",
        "users: 2",
        "registered_users: 1",
        "aors: 1",
        "contacts: 2",
        "static_contacts: 1",
    ]
    assert all(re.fullmatch(r"[a-z_]+(\{.*\})?: [^\n]*", line) for line in text.splitlines())


def test_status_without_a_provider() -> None:
    text = make_world().tree.render("/status", NOW).decode()
    assert text.startswith("users: 2\n")


def test_status_labels_and_line_breaks() -> None:
    text = render_status([
        Stat("requests", 3, "h", StatKind.COUNTER, labels=(("method", "BYE"),)),
        Stat("motd", "two\nlines\r", "h", StatKind.INFO),
        Stat("ratio", 2.0, "h"),
        Stat("flag", True, "h"),
    ])
    assert text == 'requests{method="BYE"}: 3\nmotd: two lines \nratio: 2\nflag: 1\n'


def test_the_provider_overrides_the_trees_own_figures() -> None:
    w = make_world(statistics=lambda: [Stat("users", 99, "Mine.")])
    lines = w.tree.render("/status", NOW).decode().splitlines()
    assert lines[0] == "users: 99"
    assert sum(line.startswith("users:") for line in lines) == 1


_SAMPLE_RE = re.compile(
    r"(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)"
    r"(?P<labels>\{(?:[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\\n]|\\[\\\"n])*\",?)*\})?"
    r" (?P<value>[-+]?(?:[0-9]+(?:\.[0-9]*)?(?:e[-+]?[0-9]+)?|Inf|NaN))"
)


def parse_metrics(text: str) -> dict[str, tuple[str, str, list[str]]]:
    """name -> (help, type, sample lines); asserts the exposition format rules."""
    out: dict[str, tuple[str, str, list[str]]] = {}
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in helps, f"second HELP for {name}"
            helps[name] = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name in helps, "HELP comes before TYPE"
            assert name not in types
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped")
            types[name] = kind
        else:
            m = _SAMPLE_RE.fullmatch(line)
            assert m, f"not a sample line: {line!r}"
            name = m.group("name")
            assert name in types, f"sample before its TYPE: {line!r}"
            # All samples of a metric are together: the last block is this one.
            assert list(types)[-1] == name, f"{name} split into two groups"
            out.setdefault(name, (helps[name], types[name], []))[2].append(line)
    assert set(out) == set(types)
    return out


def test_metrics_are_prometheus_text() -> None:
    w = populated()
    metrics = parse_metrics(w.tree.render("/metrics", NOW).decode())
    assert all(name.startswith("sipd_") for name in metrics)
    assert metrics["sipd_version_info"] == (
        "The running sipd version.", "gauge", ['sipd_version_info{version="0.1.0"} 1'])
    assert metrics["sipd_listen_info"][2] == [
        'sipd_listen_info{listen="udp:0.0.0.0:5060"} 1',
        'sipd_listen_info{listen="tcp:[::]:5060"} 1',
    ]
    assert metrics["sipd_uptime_seconds"][2] == ["sipd_uptime_seconds 3600.25"]
    assert metrics["sipd_messages_in_total"][:2] == ("SIP messages received.", "counter")
    assert metrics["sipd_messages_in_total"][2] == ["sipd_messages_in_total 120"]
    assert metrics["sipd_requests_total"][2] == [
        'sipd_requests_total{method="REGISTER"} 7',
        'sipd_requests_total{method="INVITE"} 2',
    ]
    assert metrics["sipd_bad_input_total"][0] == "Unusable datagrams \\\\ streams\\nper cause."
    assert metrics["sipd_bad_input_total"][2] == [
        'sipd_bad_input_total{cause="quote \\" and \\\\ and\\nnewline"} 0']
    assert metrics["sipd_load"][2] == ["sipd_load NaN"]
    assert metrics["sipd_limit"][2] == ["sipd_limit +Inf"]
    # The tree's own figures, counters included (metrics: "the same and more").
    assert metrics["sipd_contacts"][2] == ["sipd_contacts 2"]
    assert metrics["sipd_static_contacts"][2] == ["sipd_static_contacts 1"]
    assert metrics["sipd_users"][2] == ["sipd_users 2"]
    assert metrics["sipd_contacts_added_total"][2] == ["sipd_contacts_added_total 3"]
    assert metrics["sipd_contacts_expired_total"][2] == ["sipd_contacts_expired_total 1"]
    assert metrics["sipd_contacts_removed_total"][1] == "counter"


def test_every_status_figure_is_also_a_metric() -> None:
    w = populated()
    status_keys = {line.split(":")[0].split("{")[0]
                   for line in w.tree.render("/status", NOW).decode().splitlines()}
    names = set(parse_metrics(w.tree.render("/metrics", NOW).decode()))
    for key in status_keys:
        assert {f"sipd_{key}", f"sipd_{key}_total", f"sipd_{key}_info"} & names, key


def test_metrics_group_samples_given_apart() -> None:
    text = render_metrics([
        Stat("requests", 1, "By method.", StatKind.COUNTER, labels=(("method", "BYE"),)),
        Stat("calls", 0, "Calls."),
        Stat("requests", 2, "By method.", StatKind.COUNTER, labels=(("method", "ACK"),)),
        Stat("answered_total", 5, "Already _total.", StatKind.COUNTER),
        Stat("build_info", "x", "Already _info.", StatKind.INFO),
    ])
    metrics = parse_metrics(text)
    assert list(metrics) == ["sipd_requests_total", "sipd_calls", "sipd_answered_total",
                             "sipd_build_info"]
    assert len(metrics["sipd_requests_total"][2]) == 2
    assert metrics["sipd_build_info"][2] == ['sipd_build_info{build="x"} 1']


def test_a_figure_for_people_only_stays_out_of_metrics() -> None:
    stats = [Stat("uptime", 42, "Seconds since start.", metrics=False),
             Stat("start_time_seconds", 1.5e9, "Start.", status=False)]
    assert render_status(stats) == "uptime: 42\n"
    assert list(parse_metrics(render_metrics(stats))) == ["sipd_start_time_seconds"]


def test_a_series_given_twice_is_sent_once() -> None:
    # Prometheus refuses a whole scrape that repeats a series; the first wins.
    text = render_metrics([
        Stat("requests", 1, "By method.", StatKind.COUNTER, labels=(("method", "BYE"),)),
        Stat("requests", 9, "By method.", StatKind.COUNTER, labels=(("method", "BYE"),)),
        Stat("requests", 2, "By method.", StatKind.COUNTER, labels=(("method", "ACK"),)),
        Stat("calls", 0, "Calls."),
        Stat("calls", 3, "Calls, as a counter.", StatKind.COUNTER),
        Stat("calls_total", 4, "Named like the counter above.", StatKind.COUNTER),
    ])
    metrics = parse_metrics(text)
    assert metrics["sipd_requests_total"][2] == ['sipd_requests_total{method="BYE"} 1',
                                                 'sipd_requests_total{method="ACK"} 2']
    assert metrics["sipd_calls"] == ("Calls.", "gauge", ["sipd_calls 0"])
    assert metrics["sipd_calls_total"] == ("Calls, as a counter.", "counter",
                                           ["sipd_calls_total 3"])


def test_empty_metrics() -> None:
    assert render_metrics([]) == "" and render_status([]) == ""


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"name": "Bad-Name", "value": 1}, "name"),
    ({"name": "9lives", "value": 1}, "name"),
    ({"name": "ok", "value": 1, "labels": (("bad-label", "x"),)}, "label"),
    ({"name": "ok", "value": 1, "labels": (("__reserved", "x"),)}, "label"),
    ({"name": "ok", "value": "text"}, "INFO"),
    ({"name": "ok", "value": 1, "kind": StatKind.INFO}, "INFO"),
    ({"name": "ok", "value": ("a",), "kind": StatKind.COUNTER}, "INFO"),
    ({"name": "calls_total", "value": 1}, "gauge may not be named \\*_total"),
    ({"name": "delay_sum", "value": 1}, "gauge may not be named \\*_sum"),
])
def test_stat_checks_itself(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Stat(help="h", **kwargs)  # type: ignore[arg-type]


def test_stat_checks_a_name_it_knows_again_for_another_kind_or_value() -> None:
    # What passed once is not checked again, but only for the same kind.
    Stat("seen_total", 1, "h", StatKind.COUNTER)
    Stat("seen_total", 2, "h", StatKind.COUNTER)
    with pytest.raises(ValueError, match="gauge may not be named"):
        Stat("seen_total", 1, "h", StatKind.GAUGE)
    with pytest.raises(ValueError, match="INFO"):
        Stat("seen_total", "text", "h", StatKind.COUNTER)


def test_metrics_of_a_name_that_changes_kind_or_help_between_renders() -> None:
    first = render_metrics([Stat("churn", 1, "One.", StatKind.COUNTER)])
    assert first == "# HELP sipd_churn_total One.\n# TYPE sipd_churn_total counter\nsipd_churn_total 1\n"
    again = render_metrics([Stat("churn", 2, "Two.", StatKind.GAUGE, (("k", "v"),)),
                            Stat("churn", 3, "Two.", StatKind.GAUGE)])
    assert again == ('# HELP sipd_churn Two.\n# TYPE sipd_churn gauge\nsipd_churn{k="v"} 2\n'
                     "sipd_churn 3\n")


# ------------------------------------------------------------------ purity


def test_tree_and_userconfig_import_neither_sipd_nor_pyfuse3() -> None:
    code = (
        "import sys, srfs.fs.tree, srfs.files.userconfig; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('sipd', 'pyfuse3', 'trio')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_node_is_a_value() -> None:
    a = Node("/jan", Kind.USER, 0o700, 1001, 1001, True, "jan")
    assert a == replace(a) and hash(a) == hash(replace(a))


# ------------------------------------------------------------ the alias map


def test_alias_map_writes_are_checked_line_by_line_and_handed_on() -> None:
    w = make_world(alias_map=lambda: "1003: jan\n")
    w.tree.check_open("/aliases", write=True)
    r = w.tree.commit("/aliases", b"# a comment\n1004: bob\n", append=True, now=NOW)
    assert r.aliases is not None
    assert (r.aliases.data, r.aliases.append) == (b"# a comment\n1004: bob\n", True)
    assert r.changes == () and r.config is None
    # An unfinished last line is checked only when the write completes.
    w.tree.check_write("/aliases", b"1005: bob\n1006", NOW, complete=False)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"1003 jan\n", "expected 'name: owner'"),
        (b"1003: jan\n1003: bob\n", "neither line is used"),
        (b"bob: jan\n", "user's own address"),
        (b"10 03: jan\n", "not a valid SIP user part"),
        (b"\xff: jan\n", "not UTF-8"),
    ],
)
def test_alias_map_write_refused(data: bytes, reason: str) -> None:
    w = make_world(alias_map=lambda: "")
    e = err(lambda: w.tree.commit("/aliases", data, append=False, now=NOW))
    assert e.errno == errno.EINVAL and reason in e.reason
    e = err(lambda: w.tree.check_write("/aliases", data, NOW, complete=True))
    assert e.errno == errno.EINVAL


def test_alias_map_append_is_checked_against_the_map_in_force() -> None:
    w = make_world(alias_map=lambda: "1003: jan\n")
    e = err(lambda: w.tree.check_write("/aliases", b"1003: bob\n", NOW, complete=False, append=True))
    assert e.errno == errno.EINVAL and "neither line is used" in e.reason
    # Replacing the map may give the name to someone else.
    w.tree.check_write("/aliases", b"1003: bob\n", NOW, complete=False, append=False)


# ------------------------------------------------------------ the control node


def test_control_takes_known_commands_and_reads_empty() -> None:
    w = make_world()
    node = w.tree.check_open("/control", write=True)
    assert (node.mode, node.uid, node.is_dir) == (0o600, 0, False)
    assert w.tree.render("/control", NOW) == b""
    r = w.tree.commit("/control", b"flush accounts\n\n  flush   accounts", append=False, now=NOW)
    assert r.commands == ("flush accounts", "flush accounts") and r.changes_something
    assert w.tree.commit("/control", b"\n", append=True, now=NOW).changes_something is False
    # An unfinished last line is checked only when the write completes.
    w.tree.check_write("/control", b"flush accounts\nflu", NOW, complete=False)


@pytest.mark.parametrize("data", [b"flush\n", b"flush accounts now\n", b"reboot\n",
                                  b"flush accounts\nforget all\n", b"\xff\n"])
def test_control_refuses_anything_else(data: bytes) -> None:
    w = make_world()
    e = err(lambda: w.tree.commit("/control", data, append=False, now=NOW))
    assert e.errno == errno.EINVAL
    e = err(lambda: w.tree.check_write("/control", data, NOW, complete=False))
    assert e.errno == errno.EINVAL

"""srfs.fs.fuse without a mount: the content a read-only open snapshots."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from srfs.fs import fuse
from srfs.fs.fuse import SrFs
from srfs.fs.tree import Tree
from srfs.state.location import Binding, LocationStore
from srfs.user import User

NOW = 1_700_000_000.0
JAN = User("jan", 1001, 1001, "/home/jan")
DESK = "sip:jan@192.0.2.10:5060;transport=udp"
PBX = "sip:pbx@198.51.100.7:5060"


class Fs:
    def __init__(self) -> None:
        self.clock = [NOW]
        self.store = LocationStore()
        self.tree = Tree(self.store, lambda: (JAN,), clock=lambda: self.clock[0], started=NOW - 10)
        self.tree.sync_members(NOW)
        self.store.upsert(Binding(aor="jan", user="jan", contact=DESK, expires=NOW + 3600,
                                  registered=NOW - 5, ua="Desk/1.0", callid="c1", cseq=1))
        self.ops = SrFs(self.tree, clock=lambda: self.clock[0])
        self.renders = 0
        render: Callable[[str, float], bytes] = self.tree.render

        def counting(path: str, now: float) -> bytes:
            self.renders += 1
            return render(path, now)

        self.tree.render = counting  # type: ignore[method-assign]
        self.ino = self.ops._ino("/jan/contacts")

    def getattr_size(self) -> int:
        return int(self.ops._attributes(self.ino, self.clock[0]).st_size)

    def open_snapshot(self, flags: int = os.O_RDONLY) -> bytes:
        fh = self.ops._open(self.ino, flags, self.clock[0]).fh
        snapshot = self.ops._handles[fh].snapshot
        del self.ops._handles[fh]
        return snapshot


@pytest.fixture
def fs() -> Fs:
    return Fs()


def test_open_after_getattr_renders_once(fs: Fs) -> None:
    # The kernel asks for the attributes before every open (default_permissions).
    size = fs.getattr_size()
    snapshot = fs.open_snapshot()
    assert fs.renders == 1
    assert len(snapshot) == size and DESK.encode() in snapshot


def test_a_change_after_getattr_is_seen_by_the_open(fs: Fs) -> None:
    fs.getattr_size()
    fs.store.upsert(Binding(aor="jan", user="jan", contact=PBX, expires=None, registered=NOW))
    snapshot = fs.open_snapshot()
    assert PBX.encode() in snapshot and DESK.encode() in snapshot
    fs.getattr_size()
    fs.tree.commit("/jan/contacts", b"", append=False, now=NOW)  # ": > contacts"
    assert fs.open_snapshot() == b""


def test_an_old_render_is_not_reused(fs: Fs) -> None:
    fs.getattr_size()
    fs.clock[0] += fuse.RENDER_REUSE * 2
    snapshot = fs.open_snapshot()
    assert fs.renders == 2 and DESK.encode() in snapshot


def test_each_render_serves_one_open_and_writers_render_afresh(fs: Fs) -> None:
    fs.getattr_size()
    fs.open_snapshot()
    fs.open_snapshot()
    assert fs.renders == 2
    fs.getattr_size()
    fs.open_snapshot(os.O_RDWR)
    assert fs.renders == 4


def test_membership_change_drops_every_kept_render(fs: Fs) -> None:
    fs.getattr_size()
    fs.ops._on_tree_change("/")
    fs.open_snapshot()
    assert fs.renders == 2

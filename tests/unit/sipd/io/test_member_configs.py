"""The look at every member's ~/.sr/config: what changed is read, the rest costs
a look at the home watch, or one lstat without it."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipd.io.statefs import MemberConfigs
from srfs.files import home
from srfs.files.homewatch import HomeWatch
from srfs.user import User
from tests.unixusers import FakeUnix, fake_unix


@pytest.fixture(scope="module")
def unix() -> Iterator[FakeUnix]:
    with fake_unix(pam_service=None) as u:
        yield u


@pytest.fixture
def users(unix: FakeUnix) -> Iterator[tuple[User, User]]:
    alice, bob = unix["alice"].user, unix["bob"].user
    yield alice, bob
    for user in (alice, bob):
        (Path(user.home) / ".sr" / "config").unlink(missing_ok=True)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The users whose home was opened, in order."""
    seen: list[str] = []
    real = home.SrDir.open.__func__  # type: ignore[attr-defined]

    def counting(cls: type[home.SrDir], user: User, *, create: bool = False,
                 watch: HomeWatch | None = None) -> home.SrDir:
        seen.append(user.name)
        return real(cls, user, create=create, watch=watch)  # type: ignore[no-any-return]

    monkeypatch.setattr(home.SrDir, "open", classmethod(counting))
    return seen


def write_config(user: User, text: str) -> None:
    home.write_file(user, "config", text.encode())


@pytest.fixture(params=[False, True], ids=["stamps", "watched"])
def watch(request: pytest.FixtureRequest) -> Iterator[HomeWatch | None]:
    if not request.param:
        yield None
        return
    w = HomeWatch(["config"])
    try:
        yield w
    finally:
        w.close()


def test_an_unchanged_file_is_neither_opened_nor_answered(
        users: tuple[User, User], opened: list[str], watch: HomeWatch | None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    alice, bob = users
    write_config(alice, "ring_timeout = 20\n")
    configs = MemberConfigs(watch)
    opened.clear()
    stamped: list[str] = []
    real_stamps = home.stamps_of

    def stamps_of(users_: list[User], name: str) -> list[home.Stamp | None]:
        stamped.extend(u.name for u in users_)
        return real_stamps(users_, name)

    monkeypatch.setattr(home, "stamps_of", stamps_of)

    first = configs.changed([alice, bob])
    assert [(u.name, c is not None) for u, c in first] == [("alice", True), ("bob", False)]
    assert opened == ["alice", "bob"]

    opened.clear()
    stamped.clear()
    assert configs.changed([alice, bob]) == []
    assert opened == [], "an unchanged file (or an absent one) was opened again"
    # Watched, an unchanged file costs no lstat either.
    assert stamped == ([] if watch is not None else ["alice", "bob"])

    # A hand edit, and a file where there was none: both read, and only they.
    write_config(alice, "ring_timeout = 45\n")
    write_config(bob, "ring_timeout = 30\n")
    again = configs.changed([alice, bob])
    assert sorted(u.name for u, _ in again) == ["alice", "bob"]
    texts = {u.name: c.text if c else None for u, c in again}
    assert texts == {"alice": "ring_timeout = 45\n", "bob": "ring_timeout = 30\n"}

    # Removed: answered once, as no file.
    (Path(bob.home) / ".sr" / "config").unlink()
    assert [(u.name, c) for u, c in configs.changed([alice, bob])] == [("bob", None)]
    assert configs.changed([alice, bob]) == []


def test_a_member_who_left_is_read_again_on_return(users: tuple[User, User]) -> None:
    alice, _ = users
    write_config(alice, "ring_timeout = 20\n")
    configs = MemberConfigs()
    assert len(configs.changed([alice])) == 1
    assert configs.changed([alice]) == []
    configs.forget(alice)
    assert [u.name for u, _ in configs.changed([alice])] == ["alice"]


def test_a_moved_home_is_read_again(users: tuple[User, User]) -> None:
    alice, _ = users
    configs = MemberConfigs()
    assert len(configs.changed([alice])) == 1
    elsewhere = User(alice.name, alice.uid, alice.gid, alice.home + "/")
    assert [u for u, _ in configs.changed([elsewhere])] == [elsewhere]


def test_a_refused_file_is_logged_once_and_left_out(
        users: tuple[User, User], caplog: pytest.LogCaptureFixture) -> None:
    alice, _ = users
    write_config(alice, "ring_timeout = 20\n")
    os.chmod(Path(alice.home) / ".sr" / "config", 0o666)
    configs = MemberConfigs()
    with caplog.at_level(logging.WARNING, logger="sipd.statefs"):
        for _ in range(3):
            assert configs.changed([alice]) == []
    refusals = [r for r in caplog.records if "ignoring config of alice" in r.getMessage()]
    assert len(refusals) == 1, caplog.text
    os.chmod(Path(alice.home) / ".sr" / "config", 0o600)
    assert [u.name for u, _ in configs.changed([alice])] == ["alice"]

"""The account-state tasks: the probe of a failing user database, the control node's command."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio

from sipd.auth.authenticator import DirectoryHealth
from sipd.io import accounts
from srfs.accounts import users
from srfs.accounts.nss import DirectoryUnavailable, GroupEntry
from srfs.files.homewatch import HomeWatch


def probed(monkeypatch: pytest.MonkeyPatch, answers: list[object], *,
           down: bool) -> tuple[DirectoryHealth, list[str]]:
    """Run the probe until the directory is up and 5 intervals more, the group
    look-up giving ``answers`` in turn."""
    health = DirectoryHealth()
    if down:
        health.failed("user jan", DirectoryUnavailable(errno.ETIMEDOUT, "getpwnam_r"), 0.0)
    asked: list[str] = []

    def group_entry(name: str) -> GroupEntry | None:
        asked.append(name)
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        assert answer is None or isinstance(answer, GroupEntry)
        return answer

    monkeypatch.setattr(users, "group_entry", group_entry)
    interval = 0.01
    daemon: Any = SimpleNamespace(auth=SimpleNamespace(health=health),
                                  settings=SimpleNamespace(group="sip",
                                                           member_refresh_interval=interval))

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(accounts.probe_directory, daemon, trio.CapacityLimiter(1))
            with trio.fail_after(10):
                while health.down:
                    await trio.sleep(interval)
            await trio.sleep(5 * interval)
            nursery.cancel_scope.cancel()

    trio.run(main)
    return health, asked


def test_no_probe_while_the_directory_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    health, asked = probed(monkeypatch, [], down=False)
    assert asked == [] and not health.down


def test_the_end_of_an_outage_is_noticed_without_a_request(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    gone = DirectoryUnavailable(errno.ENOENT, "getgrnam_r")
    found = GroupEntry("sip", 1000, ("jan",))
    health, asked = probed(monkeypatch, [gone, None, found], down=True)
    # One look-up per interval while down, none once it answers.
    assert asked == ["sip", "sip", "sip"]
    assert not health.down and not health.probing
    assert health.failures == 2  # the first failure and the probe's
    assert len([r for r in caplog.records if "answers again" in r.message]) == 1


def test_control_flushes_every_account_cache() -> None:
    calls: list[str] = []
    daemon: Any = SimpleNamespace(
        directory=SimpleNamespace(forget=lambda: calls.append("directory")),
        auth=SimpleNamespace(accounts=SimpleNamespace(forget=lambda: calls.append("auth"))),
        proxy=SimpleNamespace(user_lookup=SimpleNamespace(forget=lambda: calls.append("proxy"))),
        membership=SimpleNamespace(force_full=lambda: calls.append("membership")),
        statefs=SimpleNamespace(wake=lambda: calls.append("group re-read")))
    accounts.control(daemon, "flush accounts")
    assert calls == ["directory", "auth", "proxy", "membership", "group re-read"]


def test_the_home_watch_reader_empties_the_queue_that_no_check_reads(tmp_path: Path) -> None:
    """sipd's own writes in ~/.sr are events too: without requests that check,
    the reader task must keep the kernel's queue from overflowing."""
    sr = tmp_path / ".sr"
    sr.mkdir()
    watch = HomeWatch(["config"])
    fd = os.open(sr, os.O_RDONLY | os.O_DIRECTORY)
    try:
        st = os.fstat(fd)
        first = watch.arm("jan", fd, (st.st_dev, st.st_ino))
        assert first is not None

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(accounts.drain_home_watch, watch)
                for _ in range(3):
                    (sr / "usrloc").write_bytes(b"x\n")  # not a watched name
                    (sr / "config").write_bytes(b"a = 1\n")
                    with trio.fail_after(5):
                        while watch._poll.poll(0):  # the reader has not read it yet
                            await trio.sleep(0.01)
                nursery.cancel_scope.cancel()

        trio.run(main)
        # Read by the reader, not by a check: the generation moved on.
        assert watch.current("jan") not in (None, first)
        assert watch.overflows == 0
    finally:
        os.close(fd)
        watch.close()

"""The worker threads: outcomes come back on the event loop, lanes keep order, pools are bounded."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import trio

from sipd.core.work import Job, Outcome
from sipd.io.workers import Workers
from srfs.files import home
from srfs.files.home import FileWriter, HomeError
from srfs.user import User
from tests.unit.srfs.files.srdirs import homewrite, make_sr, sr_path
from tests.unixusers import FakeUnix, fake_unix


class Heard:
    def __init__(self) -> None:
        self.items: list[tuple[str, Any, BaseException | None]] = []
        self.threads: set[int] = set()
        self.changed = trio.Event()

    def deliver(self, job: Job[Any], outcome: Outcome[Any]) -> None:
        # Always on the event loop's thread.
        self.threads.add(threading.get_ident())
        self.items.append((job.name, outcome.value, outcome.error))
        self.changed.set()
        self.changed = trio.Event()

    async def wait(self, count: int) -> None:
        with trio.fail_after(10):
            while len(self.items) < count:
                await self.changed.wait()


def test_outcomes_and_errors_come_back_on_the_loop() -> None:
    heard = Heard()

    async def main() -> None:
        workers = Workers(heard.deliver)
        workers.submit(Job(lambda: 42, name="answer"))

        def fail() -> None:
            raise OSError(5, "boom")

        workers.submit(Job(fail, name="fail"))
        await heard.wait(2)
        workers.close()
        assert heard.threads == {threading.get_ident()}
        assert workers.failed == 1

    trio.run(main)
    got = {name: (value, error) for name, value, error in heard.items}
    assert got["answer"] == (42, None)
    assert isinstance(got["fail"][1], OSError)


def test_a_lane_runs_one_job_at_a_time_in_order() -> None:
    heard = Heard()
    running = [0]
    most = [0]
    lock = threading.Lock()

    def step(n: int) -> Any:
        def run() -> int:
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            time.sleep(0.002 * (10 - n))  # earlier jobs take longer
            with lock:
                running[0] -= 1
            return n
        return run

    async def main() -> None:
        workers = Workers(heard.deliver)
        for n in range(10):
            workers.submit(Job(step(n), queue="lane", name=f"j{n}"))
        await heard.wait(10)
        workers.close()

    trio.run(main)
    assert [value for _, value, _ in heard.items] == list(range(10))
    assert most[0] == 1


def test_a_hanging_directory_holds_only_its_own_threads() -> None:
    heard = Heard()
    hang = threading.Event()

    async def main() -> None:
        workers = Workers(heard.deliver, home_threads=2, directory_threads=2)
        for n in range(5):
            workers.submit(Job(hang.wait, name=f"nss{n}", directory=True))
        for n in range(4):
            workers.submit(Job(lambda: None, name=f"home{n}"))
        await heard.wait(4)
        assert all(name.startswith("home") for name, _, _ in heard.items)
        assert workers.threads(directory=True) == 2  # the other three look-ups wait
        assert workers.threads() == 2
        hang.set()
        await heard.wait(9)
        workers.close()

    try:
        trio.run(main)
    finally:
        hang.set()


def test_held_jobs_start_no_thread_until_released() -> None:
    heard = Heard()

    async def main() -> None:
        workers = Workers(heard.deliver)
        workers.hold()
        workers.submit(Job(lambda: 1, name="held"))
        await trio.sleep(0.05)
        assert heard.items == [] and workers.threads() == 0
        workers.release()
        await heard.wait(1)
        workers.close()

    trio.run(main)


def test_a_failing_continuation_is_logged_and_the_loop_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    heard = Heard()

    def deliver(job: Job[Any], outcome: Outcome[Any]) -> None:
        if job.name == "bad":
            raise RuntimeError("bug")
        heard.deliver(job, outcome)

    async def main() -> None:
        workers = Workers(deliver)
        workers.submit(Job(lambda: None, name="bad"))
        workers.submit(Job(lambda: 2, name="good"))
        await heard.wait(1)
        workers.close()

    with caplog.at_level(logging.ERROR, logger="sipd"):
        trio.run(main)
    assert "internal error in the continuation of bad" in caplog.text
    assert heard.items[0][:2] == ("good", 2)


# --- the writing thread ---------------------------------------------------------


@pytest.fixture
def unix() -> Iterator[FakeUnix]:
    with fake_unix(pam_service=None) as u:
        yield u


@pytest.fixture
def writer(monkeypatch: pytest.MonkeyPatch) -> Iterator[FileWriter]:
    """A FileWriter on the C path: the wheel's, or the checkout's C file compiled."""
    with homewrite() as module:
        monkeypatch.setattr(home, "_Writer", module.Writer)
        monkeypatch.setattr(home, "_write_batch", module.write_batch)
        yield FileWriter()


def writing(files: Sequence[tuple[User, str, bytes]], name: str) -> Job[Any]:
    """A job that only writes ``files``: its value is the errors, by user."""
    def run() -> Any:
        raise AssertionError("a job with writes is not run in a pool thread")

    def wrote(errors: Sequence[BaseException | None]) -> dict[str, BaseException | None]:
        return {user.name: error for (user, _, _), error in zip(files, errors, strict=True)}

    return Job(run, name=name, writes=files, wrote=wrote)


def test_jobs_with_writes_go_to_the_writing_thread_in_order(
        unix: FakeUnix, writer: FileWriter) -> None:
    alice, bob = unix["alice"].user, unix["bob"].user
    make_sr(alice)
    heard = Heard()
    names: list[str] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            workers = Workers(heard.deliver, writer=writer)
            nursery.start_soon(workers.serve_writes)
            workers.hold()
            for n in range(5):
                workers.submit(writing([(alice, "usrloc", b"%d\n" % n)], f"alice {n}"))
            await trio.sleep(0.05)
            # Held: nothing written, no thread started (capabilities, sipd(8)).
            assert heard.items == [] and not (sr_path(alice) / "usrloc").exists()
            assert [t.name for t in threading.enumerate() if t.name == "sipd-writer"] == []
            workers.release()
            # bob has no ~/.sr: the writing thread makes it on the Python path.
            workers.submit(writing([(bob, "usrloc", b"b\n")], "bob"))
            workers.submit(Job(lambda: 7, name="no writes"))
            await heard.wait(7)
            names.extend(t.name for t in threading.enumerate())
            workers.close()
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert "sipd-writer" in names
    got = {name: (value, error) for name, value, error in heard.items}
    assert [name for name, _, _ in heard.items if name.startswith("alice")] == [
        f"alice {n}" for n in range(5)]
    assert got["alice 4"] == ({"alice": None}, None)
    assert got["bob"] == ({"bob": None}, None)
    assert got["no writes"] == (7, None)
    assert heard.threads == {threading.get_ident()}
    assert (sr_path(alice) / "usrloc").read_bytes() == b"4\n"
    assert (sr_path(bob) / "usrloc").read_bytes() == b"b\n"
    assert not any(t.name == "sipd-writer" for t in threading.enumerate())


def test_the_threads_carry_their_names_where_ps_and_proc_show_them() -> None:
    heard = Heard()

    def comm() -> str:
        with open("/proc/thread-self/comm") as f:
            return f.read().strip()

    async def main() -> None:
        workers = Workers(heard.deliver)
        workers.submit(Job(comm, name="home"))
        workers.submit(Job(comm, name="directory", directory=True))
        await heard.wait(2)
        workers.close()

    trio.run(main)
    got = {name: value for name, value, _ in heard.items}
    # Python 3.11 leaves a new thread named after the process.
    assert got == {"home": "sipd-home-1", "directory": "sipd-dir-1"}


def test_a_file_the_writing_thread_cannot_write_gets_its_error(
        unix: FakeUnix, writer: FileWriter) -> None:
    alice = unix["alice"].user
    make_sr(alice)
    (sr_path(alice) / "usrloc").mkdir()  # a directory where the file goes
    heard = Heard()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            workers = Workers(heard.deliver, writer=writer)
            nursery.start_soon(workers.serve_writes)
            workers.submit(writing([(alice, "usrloc", b"a\n")], "alice"))
            await heard.wait(1)
            workers.close()
            nursery.cancel_scope.cancel()

    trio.run(main)
    [(_, value, error)] = heard.items
    assert error is None and isinstance(value["alice"], HomeError)
    assert (sr_path(alice) / "usrloc").is_dir()


def test_close_writes_the_queue_and_later_jobs_go_to_the_pool(
        unix: FakeUnix, writer: FileWriter) -> None:
    alice = unix["alice"].user
    make_sr(alice)
    heard = Heard()

    async def main() -> None:
        workers = Workers(heard.deliver, writer=writer)
        for n in range(20):
            workers.submit(writing([(alice, "usrloc", b"%d\n" % n)], f"alice {n}"))
        # Nothing reads the eventfd here: close() still writes all twenty.
        workers.close()
        assert (sr_path(alice) / "usrloc").read_bytes() == b"19\n"
        late = Job(lambda: "pool", name="late", writes=[(alice, "usrloc", b"late\n")],
                   wrote=lambda errors: "writer")
        workers.submit(late)
        await heard.wait(1)

    trio.run(main)
    assert heard.items == [("late", "pool", None)]


def test_a_broken_writing_thread_fails_its_queue_and_the_pool_takes_over(
        unix: FakeUnix, writer: FileWriter, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    alice = unix["alice"].user
    make_sr(alice)
    heard = Heard()

    def broken() -> None:
        raise home.WriterBroken(1)

    monkeypatch.setattr(writer, "serve", broken)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            workers = Workers(heard.deliver, writer=writer)
            nursery.start_soon(workers.serve_writes)
            workers.submit(writing([(alice, "usrloc", b"a\n")], "first"))
            await heard.wait(1)
            workers.submit(Job(lambda: "pool", name="second", writes=[(alice, "usrloc", b"b\n")],
                               wrote=lambda errors: "writer"))
            await heard.wait(2)
            workers.close()
            nursery.cancel_scope.cancel()

    with caplog.at_level(logging.ERROR, logger="sipd"):
        trio.run(main)
    assert isinstance(heard.items[0][2], home.WriterBroken)
    assert heard.items[1] == ("second", "pool", None)
    assert "the writing thread ended" in caplog.text


def test_a_batch_the_writer_refuses_goes_to_the_pool_from_then_on(
        unix: FakeUnix, writer: FileWriter, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    alice = unix["alice"].user
    make_sr(alice)
    heard = Heard()

    def refuse(items: object) -> int:
        raise TypeError("a bug")

    monkeypatch.setattr(writer, "submit", refuse)

    async def main() -> None:
        workers = Workers(heard.deliver, writer=writer)
        for name in ("first", "second"):
            workers.submit(Job(lambda: "pool", name=name, writes=[(alice, "usrloc", b"a\n")],
                               wrote=lambda errors: "writer"))
        await heard.wait(2)
        workers.close()

    with caplog.at_level(logging.ERROR, logger="sipd"):
        trio.run(main)
    assert sorted(heard.items) == [("first", "pool", None), ("second", "pool", None)]
    assert caplog.text.count("the writing thread refused") == 1

"""The worker threads: outcomes come back on the event loop, lanes keep order, pools are bounded."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
import trio

from sipd.core.work import Job, Outcome
from sipd.io.workers import Workers


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

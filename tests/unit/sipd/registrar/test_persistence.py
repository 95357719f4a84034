"""Group commit: the answers of a batch go out once its files are on disk, and only then."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from sipd.core.work import Action, Job, Outcome
from sipd.registrar.persistence import Persistence
from srfs.accounts import users
from srfs.files import home
from srfs.files.usrloc import Check, UsrlocFiles, check_file, render_file
from srfs.state.location import Binding, LocationStore, Op
from tests.unixusers import FakeUnix, UserSpec, fake_unix

NOW = 1_700_000_000.0
NAMES = ("ann", "ben", "cat", "dan")


@pytest.fixture
def unix() -> Iterator[FakeUnix]:
    with fake_unix([UserSpec(n, primary="sip") for n in NAMES]) as u:
        yield u


def binding(user: str, n: int = 1) -> Binding:
    return Binding(aor=user, user=user, contact=f"sip:{user}@192.0.2.{n}:5060",
                   expires=NOW + 3600, registered=NOW)


def upsert(b: Binding) -> Any:
    def plan(wall: float) -> Sequence[Op]:
        return [b]
    return plan


class Answers:
    """What each commit's ``finish`` heard, in order."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, BaseException | None]] = []

    def finish(self, tag: str) -> Any:
        def done(outcome: Outcome[None], now: float) -> list[Action]:
            self.heard.append((tag, outcome.error))
            return []
        return done


def persistence(unix: FakeUnix) -> tuple[Persistence, LocationStore]:
    store = LocationStore()
    p = Persistence(store, UsrlocFiles(), write_through=True, flush_interval=1.0)
    p.wall = lambda now: NOW + now
    p.know([unix[n].user for n in NAMES])
    return p, store


def jobs(actions: list[Action]) -> list[Job[Any]]:
    found = [a for a in actions if isinstance(a, Job)]
    assert len(found) == len(actions)
    return found


def run(job: Job[Any], now: float = 0.0) -> list[Action]:
    try:
        outcome: Outcome[Any] = Outcome(job.run())
    except Exception as exc:  # noqa: BLE001 - as the I/O layer does
        outcome = Outcome(error=exc)
    return job.done(outcome, now)


def on_disk(unix: FakeUnix, name: str) -> list[Binding]:
    return UsrlocFiles.load(unix[name].user, NOW)[0]


def test_commits_during_a_write_form_the_next_batch_of_one_job(unix: FakeUnix) -> None:
    p, store = persistence(unix)
    answers = Answers()
    first = jobs(p.commit("ann", upsert(binding("ann")), answers.finish("ann"), 0.0))
    assert len(first) == 1
    # While ann's file is on its way, three users commit: nothing starts.
    for name in ("ben", "cat", "dan"):
        assert p.commit(name, upsert(binding(name)), answers.finish(name), 0.1) == []
    assert answers.heard == [] and store.bindings_of_user("ann") == []
    second = jobs(run(first[0], 0.2))
    # ann is answered once on disk and in the store; the other three are one job.
    assert answers.heard == [("ann", None)]
    assert on_disk(unix, "ann") == [binding("ann")] == store.bindings_of_user("ann")
    assert len(second) == 1 and "3 usrloc" in second[0].name
    for name in ("ben", "cat", "dan"):
        assert on_disk(unix, name) == [] and store.bindings_of_user(name) == []
    assert run(second[0], 0.3) == []
    assert answers.heard[1:] == [("ben", None), ("cat", None), ("dan", None)]
    for name in ("ben", "cat", "dan"):
        assert on_disk(unix, name) == [binding(name)] == store.bindings_of_user(name)
    assert p.stats.batches == 2 and p.stats.writes == 4


def test_one_user_commits_stay_in_order_one_per_batch(unix: FakeUnix) -> None:
    p, store = persistence(unix)
    answers = Answers()
    first = jobs(p.commit("ann", upsert(binding("ann", 1)), answers.finish("a1"), 0.0))
    p.commit("ann", upsert(binding("ann", 2)), answers.finish("a2"), 0.0)
    p.commit("ben", upsert(binding("ben")), answers.finish("b1"), 0.0)
    second = jobs(run(first[0], 0.1))
    assert answers.heard == [("a1", None)]
    # ann's second commit is planned against the store her first one left.
    third = run(second[0], 0.2)
    assert third == [] and answers.heard[1:] == [("a2", None), ("b1", None)]
    assert on_disk(unix, "ann") == [binding("ann", 1), binding("ann", 2)]


def test_a_file_that_cannot_be_written_refuses_only_its_own_commit(unix: FakeUnix) -> None:
    p, store = persistence(unix)
    answers = Answers()
    first = jobs(p.commit("ann", upsert(binding("ann")), answers.finish("ann"), 0.0))
    p.commit("ben", upsert(binding("ben")), answers.finish("ben"), 0.0)
    p.commit("cat", upsert(binding("cat")), answers.finish("cat"), 0.0)
    # ben's ~/.sr is a symlink: his file is refused, never followed.
    ben_home = unix["ben"].home
    elsewhere = ben_home / "elsewhere"
    elsewhere.mkdir()
    os.chown(elsewhere, unix["ben"].uid, unix["ben"].gid)
    os.symlink(elsewhere, ben_home / ".sr")
    second = jobs(run(first[0], 0.1))
    run(second[0], 0.2)
    heard = dict(answers.heard)
    assert heard["ann"] is None and heard["cat"] is None
    assert heard["ben"] is not None and "symlink" in str(heard["ben"])
    assert store.bindings_of_user("ben") == []  # not acknowledged, not in force
    assert list(elsewhere.iterdir()) == []
    assert on_disk(unix, "cat") == [binding("cat")]
    assert p.stats.write_errors == 1
    # No temporary file is left behind in the homes that were written.
    for name in ("ann", "cat"):
        assert [f for f in os.listdir(Path(unix[name].home) / ".sr") if f.startswith(".")] == []


def test_a_refused_plan_is_answered_at_once_and_the_next_commit_goes_on(unix: FakeUnix) -> None:
    p, store = persistence(unix)
    answers = Answers()

    def refuse(wall: float) -> Sequence[Op]:
        raise ValueError("no")

    assert p.commit("ann", refuse, answers.finish("r"), 0.0) == []
    assert answers.heard[0][0] == "r" and isinstance(answers.heard[0][1], ValueError)
    first = jobs(p.commit("ann", upsert(binding("ann")), answers.finish("ok"), 0.0))
    run(first[0])
    assert answers.heard[1] == ("ok", None)
    assert p.stats.commits_refused == 1


def test_the_next_batch_waits_for_no_timer_however_quick_the_last(unix: FakeUnix) -> None:
    # A batch durable in a millisecond: what queued meanwhile starts at
    # once, not after a hold (which made bigger batches that cost more).
    p, _ = persistence(unix)
    answers = Answers()
    first = jobs(p.commit("ann", upsert(binding("ann")), answers.finish("ann"), 10.0))
    assert p.commit("ben", upsert(binding("ben")), answers.finish("ben"), 10.0005) == []
    second = jobs(run(first[0], 10.001))
    assert answers.heard == [("ann", None)] and len(second) == 1
    assert p.next_deadline() is None
    assert run(second[0], 10.002) == [] and answers.heard[1:] == [("ben", None)]
    assert p.stats.batches == 2 and p.stats.batch_seconds == pytest.approx(0.002)


def test_a_slow_group_commit_is_counted_and_logged_once_a_minute(
        unix: FakeUnix, caplog: pytest.LogCaptureFixture) -> None:
    # What a stalling disk costs each REGISTER of a group shows in the log,
    # one line a minute at most, naming the slowest group since the last one.
    p, _ = persistence(unix)
    answers = Answers()

    def one_batch(name: str, start: float, took: float) -> None:
        batch = jobs(p.commit(name, upsert(binding(name, int(start) % 200 + 1)),
                              answers.finish(name), start))
        assert run(batch[0], start + took) == []

    with caplog.at_level("WARNING", logger="sipd.persistence"):
        one_batch("ann", 0.0, 0.01)
        assert p.stats.slow_batches == 0 and caplog.records == []
        one_batch("ben", 1.0, 0.6)
        one_batch("cat", 2.0, 0.9)
        one_batch("dan", 3.0, 0.3)
        one_batch("ann", 70.0, 0.4)
    assert p.stats.slow_batches == 4
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert "1 file(s) took 0.60 s" in lines[0] and "(1 group(s) over 0.25 s" in lines[0]
    # The second line comes a minute later: the slowest held back, and all three counted.
    assert "took 0.90 s" in lines[1] and "(3 group(s) over 0.25 s" in lines[1]
    assert all(error is None for _, error in answers.heard)


def test_with_write_back_nothing_waits_for_a_batch(unix: FakeUnix) -> None:
    store = LocationStore()
    p = Persistence(store, UsrlocFiles(), write_through=False, flush_interval=5.0)
    p.wall = lambda now: NOW + now
    answers = Answers()
    for i, name in enumerate(NAMES):
        assert p.commit(name, upsert(binding(name)), answers.finish(name), 10.0 + i / 1e4) == []
    assert [tag for tag, error in answers.heard if error is None] == list(NAMES)
    assert p.next_deadline() == 10.0 + 5.0  # only the flush of the dirty users


def test_write_back_flushes_a_chunk_of_users_at_a_time(unix: FakeUnix) -> None:
    # Thousands of dirty users are neither thousands of worker trips at
    # once nor rendered all in one turn of the event loop.
    store = LocationStore()
    p = Persistence(store, UsrlocFiles(), write_through=False, flush_interval=5.0,
                    write_chunk=3)
    p.wall = lambda now: NOW + now
    p.know([unix[n].user for n in NAMES])
    answers = Answers()
    for name in NAMES:
        assert p.commit(name, upsert(binding(name)), answers.finish(name), 10.0) == []
    assert p.jobs(10.0, NOW + 10.0) == [] and p.next_deadline() == 15.0
    first = p.jobs(15.0, NOW + 15.0)
    assert len(first) == 1 and "3 usrloc" in first[0].name
    # The rest waits for the chunk in flight, then goes at once.
    assert p.next_deadline() is None and p.jobs(15.001, NOW + 15.001) == []
    second = jobs(run(first[0], 15.01))
    assert len(second) == 1 and "1 usrloc" in second[0].name
    assert run(second[0], 15.02) == []
    assert p.next_deadline() is None and p.jobs(16.0, NOW + 16.0) == []
    for name in NAMES:
        assert on_disk(unix, name) == [binding(name)]
    assert p.stats.writes == len(NAMES) and p.stats.write_errors == 0
    # The next change starts the next interval.
    assert p.commit("ann", upsert(binding("ann", 2)), answers.finish("a2"), 20.0) == []
    assert p.jobs(20.0, NOW + 20.0) == [] and p.next_deadline() == 25.0


def test_expiries_are_written_in_chunks_of_users(unix: FakeUnix) -> None:
    p, store = persistence(unix)
    p.write_chunk = 2
    for name in NAMES:
        run(jobs(p.commit(name, upsert(binding(name)), Answers().finish(name), 0.0))[0], 0.0)
    assert p.stats.writes == len(NAMES)
    assert len(store.expire(NOW + 7200)) == len(NAMES)  # every file changes
    background = p.jobs(1.0, NOW + 7200)
    assert [j.name for j in background] == ["write 2 usrloc file(s)"] * 2
    for job in background:
        assert run(job, 1.0) == []
    for name in NAMES:
        assert on_disk(unix, name) == []
    assert p.stats.writes == 2 * len(NAMES) and p.stats.write_errors == 0


def write(job: Job[Any], now: float = 0.0) -> list[Action]:
    """``job`` as the I/O layer's writing thread does it: its ``writes``, then ``wrote``."""
    assert job.writes is not None and job.wrote is not None
    return job.done(Outcome(job.wrote(home.write_files(job.writes))), now)


def test_a_batch_job_carries_the_files_it_writes(unix: FakeUnix) -> None:
    p, store = persistence(unix)
    answers = Answers()
    [job] = jobs(p.commit("ann", upsert(binding("ann")), answers.finish("ann"), 0.0))
    assert job.writes is not None
    [(account, name, data)] = job.writes
    assert (account, name) == (unix["ann"].user, "usrloc")
    check, version = check_file(data)
    assert check is Check.WHOLE and version is not None
    assert data.decode() == render_file([binding("ann")], NOW, version)
    assert write(job, 0.1) == []
    assert answers.heard == [("ann", None)]
    assert on_disk(unix, "ann") == [binding("ann")] == store.bindings_of_user("ann")


def test_a_file_written_once_in_this_run_may_go_with_one_sync(unix: FakeUnix) -> None:
    p, _ = persistence(unix)
    answers = Answers()
    [first] = jobs(p.commit("ann", upsert(binding("ann", 1)), answers.finish("a1"), 0.0))
    # Its usrloc is not this run's yet: both syncs (home.write_files).
    assert first.checksummed_for == frozenset()
    p.commit("ann", upsert(binding("ann", 2)), answers.finish("a2"), 0.0)
    p.commit("ben", upsert(binding("ben")), answers.finish("b1"), 0.0)
    [second] = jobs(write(first, 0.1))
    assert second.checksummed_for == frozenset({"ann"})
    assert second.writes is not None
    versions = {a.name: check_file(d)[1] for a, _, d in second.writes}
    one = check_file(first.writes[0][2])[1] if first.writes else None
    assert one is not None and versions["ann"] is not None and versions["ben"] is not None
    # One run, one count: each write a higher number than the one before.
    assert versions["ann"].run == versions["ben"].run == one.run
    assert one.seq < versions["ann"].seq != versions["ben"].seq
    assert write(second, 0.2) == []
    assert answers.heard == [("a1", None), ("a2", None), ("b1", None)]
    # Another run's numbers are another run's.
    other, _ = persistence(unix)
    [job] = jobs(other.commit("ann", upsert(binding("ann", 3)), answers.finish("a3"), 0.0))
    assert job.writes is not None and job.checksummed_for == frozenset()
    third = check_file(job.writes[0][2])[1]
    assert third is not None and third.run != one.run


def test_an_unknown_account_is_looked_up_before_its_file_is_written(
        unix: FakeUnix, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocationStore()
    p = Persistence(store, UsrlocFiles(), write_through=True, flush_interval=1.0)
    p.wall = lambda now: NOW + now
    p.know([unix["ann"].user])
    found = {"ben": unix["ben"].user}
    monkeypatch.setattr(users, "lookup", lambda name: found.get(name))
    answers = Answers()
    first = jobs(p.commit("ann", upsert(binding("ann")), answers.finish("ann"), 0.0))
    p.commit("ben", upsert(binding("ben")), answers.finish("ben"), 0.1)
    p.commit("zed", upsert(binding("zed")), answers.finish("zed"), 0.1)
    [look_up] = jobs(write(first[0], 0.2))
    # The directory's threads look ben and zed up; nothing is written meanwhile.
    assert look_up.directory and look_up.writes is None
    assert on_disk(unix, "ben") == []
    [written] = jobs(run(look_up, 0.3))
    assert written.writes is not None and [a for a, _, _ in written.writes] == [unix["ben"].user]
    assert write(written, 0.4) == []
    heard = dict(answers.heard)
    assert heard["ann"] is None and heard["ben"] is None
    assert isinstance(heard["zed"], LookupError) and store.bindings_of_user("zed") == []
    assert on_disk(unix, "ben") == [binding("ben")] == store.bindings_of_user("ben")
    # ben is known from now on: his next commit is written without a look-up.
    [again] = jobs(p.commit("ben", upsert(binding("ben", 2)), answers.finish("ben"), 0.5))
    assert again.writes is not None

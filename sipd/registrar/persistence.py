"""Location-store subscribers: ``~/.sr/usrloc`` files and utmp/wtmp records.

Both hear every change of the location store and turn it into blocking
:class:`~sipd.core.work.Job` s; neither is ever called by the registrar.

``sync = write-through``: a change somebody is told about (a REGISTER's
200 OK, a successful ``write`` to ``/run/sr``) is a :class:`Commit`. The
plan is made against the store, the user's file is written as it will be
(with fsync), and only then is the plan applied and the answer given. A
write that fails leaves memory as it was, so nothing is acknowledged that a
restart would lose, and nothing is in force that was refused.

Commits are written in groups: while one batch is on its way to disk,
new commits queue; when it is durable, its answers go out and everything
queued since is planned and written as the next batch, in one trip to
the I/O layer's writing thread (``Job.writes``) and one sync of each
filesystem it touches (two for a user's first file of the run),
whatever its size (:func:`srfs.files.home.write_files`). At a low rate
a batch is one commit and waits for nothing; under load the cost per
registration of the thread trip and the sync round is shared, and a
commit waits for the batch in flight at most, never for a timer: the
more the disk takes, the larger the next batch. A batch held back after
the last one (as long as that one took) would be larger and cost less
CPU per registration, but every registration under load would wait for
the hold too; the README gives the figures of both. Commits of one user
stay in order, one per batch. Changes nobody is told about (expiry) are
written at once in the background, :data:`WRITE_CHUNK` users per group,
but never while a commit of the same user is queued or in flight.
``sync = write-back``: commits apply at once, changed users are written
every ``flush_interval`` seconds, a group at a time, and
:meth:`Persistence.flush_all` writes
everything at exit.

Each file is written as its UNIX user: the one the REGISTER authenticated
as (:attr:`~sipd.core.work.Commit.owner`) or that the members list or an
earlier commit gave (:meth:`Persistence.know`), so a save costs no NSS
look-up and succeeds while a directory server is out of reach; only a
user never seen is looked up, in the directory's threads, before the
file goes to the writing thread (a look-up must not hold up the files
of others).

A commit's changes are logged once they are in force
(:mod:`sipd.registrar.changelog`): what the log says was registered is
what a restart would find.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sipd.core.work import Action, Job, Outcome
from sipd.registrar.changelog import log_changes
from srfs.accounts import users
from srfs.entropy import random_hex
from srfs.files.usrloc import UsrlocFiles, Version, render_file
from srfs.files.wtmp import LoginRecorder, WtmpError
from srfs.logtext import Tally
from srfs.state.location import Change, ChangeKind, LocationStore, Op
from srfs.user import User

log = logging.getLogger("sipd.persistence")

Finish = Callable[[Outcome[None], float], list[Action]]

#: Users written in one trip to the writing thread and one sync round when nobody
#: waits for the files (expiries, write-back's flush): one job per user
#: was thousands of trips at once every ``flush_interval`` under load.
WRITE_CHUNK = 64

#: A group commit that takes longer than this is logged and counted
#: (``usrloc_group_commits_slow``): every REGISTER of the group waited that
#: long for its 200, and at 0.5 s (T1) a phone over UDP sends it again. A
#: disk that stalls shows here, not as a slow event loop.
SLOW_BATCH = 0.25
#: Seconds between two lines about slow group commits (the rest are counted in them).
SLOW_BATCH_LOG_INTERVAL = 60.0


@dataclass
class PersistenceStats:
    writes: int = 0
    write_errors: int = 0
    commits: int = 0
    commits_refused: int = 0
    #: Group commits written (one writing-thread trip and one sync round each).
    batches: int = 0
    #: Seconds from each group's start to its answers, summed.
    batch_seconds: float = 0.0
    #: Groups that took longer than :data:`SLOW_BATCH`.
    slow_batches: int = 0


@dataclass(frozen=True, slots=True)
class _Pending:
    plan: Callable[[float], Sequence[Op]]
    finish: Finish

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, plan: Callable[[float], Sequence[Op]], finish: Finish) -> None:
        object.__setattr__(self, "plan", plan)
        object.__setattr__(self, "finish", finish)


@dataclass(frozen=True, slots=True)
class _Write:
    """One user's planned commit in a batch: its file, and what to apply once it is on disk."""

    user: str
    ops: Sequence[Op]
    pending: _Pending
    seq: int
    text: str

    # Written out: mypyc compiles this one (see sipd.io.compiled).
    def __init__(self, user: str, ops: Sequence[Op], pending: _Pending, seq: int,
                 text: str) -> None:
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "ops", ops)
        object.__setattr__(self, "pending", pending)
        object.__setattr__(self, "seq", seq)
        object.__setattr__(self, "text", text)


class Persistence:
    def __init__(
        self,
        store: LocationStore,
        files: UsrlocFiles,
        *,
        write_through: bool,
        flush_interval: float,
        write_chunk: int = WRITE_CHUNK,
    ) -> None:
        self.store = store
        self.files = files
        self.write_through = write_through
        self.flush_interval = flush_interval
        #: Monotonic time to the wall clock of plans and files; the endpoint sets it.
        self.wall: Callable[[float], float] = lambda now: now
        # Every file rendered gets the next number: a write never replaces a
        # file rendered after it (see UsrlocFiles.save). With this run's
        # number, it is the file's version (usrloc.render_file).
        self._seq = itertools.count(1)
        self._run = random_hex(8)
        #: Users whose usrloc this run has written: their next file may be
        #: written with one sync (see home.write_files' checksummed_for).
        self._written: set[str] = set()
        self._dirty: set[str] = set()
        self._next_flush: float | None = None
        #: A chunk of write-back's flush is being written.
        self._flushing = False
        #: Commits waiting for the next batch, per user in arrival order.
        self._queued: dict[str, deque[_Pending]] = {}
        #: The batch being written, if one is.
        self._batch: list[_Write] | None = None
        self.write_chunk = write_chunk
        #: When the batch in flight started (monotonic).
        self._batch_started = -math.inf
        #: A batch is being planned: commits made meanwhile (by a ``finish``) wait.
        self._starting = False
        #: The user whose committed plan is being applied: already on disk.
        self._applying: str | None = None
        self.stats = PersistenceStats()
        self._slow = Tally(SLOW_BATCH_LOG_INTERVAL)
        #: The slowest group commit since the last line about one (seconds, files).
        self._slowest = (0.0, 0)
        #: Whom each user's file is written as (see :meth:`know`).
        self._users: dict[str, User] = {}
        store.subscribe(self._changed)

    def know(self, users_: Sequence[User]) -> None:
        """Write these users' files as these UNIX users from now on (members, an
        authenticated REGISTER): no NSS look-up per write."""
        for user in users_:
            self._users[user.name] = user

    def _changed(self, change: Change) -> None:
        touched = {change.binding.user}
        if change.previous is not None:
            # An AOR that changed owner leaves the old owner's file too.
            touched.add(change.previous.user)
        touched.discard(self._applying or "")
        self._dirty.update(touched)

    # ------------------------------------------------------------ commits

    def commit(self, user: str, plan: Callable[[float], Sequence[Op]], finish: Finish,
               now: float, *, owner: User | None = None) -> list[Action]:
        """Plan, write and apply a change of ``user``'s bindings, then ``finish``.

        ``finish(outcome, now)`` gives the answer; ``outcome.error`` is the
        refusal raised by ``plan`` or the failed write, and then nothing
        was applied. Commits of one user run in the order they came.
        ``owner`` is the UNIX user ``user`` names, when the caller knows it.
        """
        if owner is not None and owner.name == user:
            self._users[user] = owner
        self._queued.setdefault(user, deque()).append(_Pending(plan, finish))
        if self._batch is not None or self._starting:
            # Group commit: it goes with the next batch, written when this one is.
            return []
        return self._start_batch(now)

    def _start_batch(self, now: float) -> list[Action]:
        """Plan every queued commit; those that change a file go to disk together.

        Commits that write nothing (refused, no change, write-back) are
        answered at once, and the user's next queued commit is planned
        behind them; of each user one commit at most joins the batch, the
        rest wait for the next one (each is planned against the store as
        the previous one left it).
        """
        actions: list[Action] = []
        self._starting = True
        try:
            while self._queued and self._batch is None:
                batch: list[_Write] = []
                wall = self.wall(now)
                for user in list(self._queued):
                    waiting = self._queued[user]
                    while waiting:
                        pending = waiting.popleft()
                        write = self._plan(user, pending, wall, now, actions)
                        if write is not None:
                            batch.append(write)
                            break
                    if not waiting:
                        del self._queued[user]
                if batch:
                    self._batch = batch
                    self._batch_started = now
                    actions.append(self._batch_job(batch))
        finally:
            self._starting = False
        if self._batch is None:
            # Changes heard while the commits ran (an expiry) are written now.
            actions.extend(self.jobs(now, self.wall(now)))
        return actions

    def _plan(self, user: str, pending: _Pending, wall: float, now: float,
              actions: list[Action]) -> _Write | None:
        """The write ``pending`` needs, or None once it is answered (into ``actions``)."""
        self.stats.commits += 1
        try:
            ops = list(pending.plan(wall))
        except Exception as exc:  # noqa: BLE001 - the refusal is the answer
            self.stats.commits_refused += 1
            actions.extend(pending.finish(Outcome(error=exc), now))
            return None
        if not ops or not self.write_through:
            log_changes(self.store.apply(ops), wall)
            actions.extend(pending.finish(Outcome(), now))
            return None
        seq = next(self._seq)
        text = render_file(self.store.preview(user, ops), wall, Version(self._run, seq))
        return _Write(user, ops, pending, seq, text)

    def _batch_job(self, batch: list[_Write]) -> Job[Any]:
        entries = [(w.user, self._users.get(w.user), w.seq, w.text) for w in batch]

        def done(outcome: Outcome[dict[str, BaseException | None]], later: float) -> list[Action]:
            self._batch = None
            took = max(later - self._batch_started, 0.0)
            self.stats.batches += 1
            self.stats.batch_seconds += took
            if took > SLOW_BATCH:
                self._slow_batch(took, len(batch), later)
            actions: list[Action] = []
            for w in batch:
                error = outcome.error if outcome.error is not None else (
                    (outcome.value or {}).get(w.user))
                result: Outcome[None] = Outcome(error=error)
                self.record(w.user, result)
                if error is None:
                    self._applying = w.user
                    try:
                        changes = self.store.apply(w.ops)
                    finally:
                        self._applying = None
                    log_changes(changes, self.wall(later))
                actions.extend(w.pending.finish(result, later))
            return actions + self._start_batch(later)

        return self._write_job(entries, done, f"save {len(batch)} usrloc file(s)")

    def _slow_batch(self, took: float, files: int, now: float) -> None:
        self.stats.slow_batches += 1
        if took > self._slowest[0]:
            self._slowest = (took, files)
        held = self._slow.count(now)
        if held is None:
            return
        slowest, size = self._slowest
        self._slowest = (0.0, 0)
        log.warning("usrloc: a group of %d file(s) took %.2f s to be written and synced, "
                    "and its REGISTERs waited as long for their answers (%d group(s) over "
                    "%g s since the last such line)", size, slowest, held, SLOW_BATCH)

    # ------------------------------------------------------------ background

    def jobs(self, now: float, wall: float) -> list[Job[Any]]:
        """Writes that are due: every dirty user at once (write-through), or
        at the flush interval (write-back), :data:`WRITE_CHUNK` users
        (``write_chunk``) per job. A user with a commit in flight waits for
        it: the commit's file must not be overtaken by one rendered without
        its plan.

        Write-back's flush is one chunk at a time, the next one rendered
        when the last is written, so that thousands of files neither stop
        the event loop while they are rendered nor fill the worker threads:
        the SIP messages that came meanwhile go between two chunks."""
        if not self._dirty:
            return []
        if not self.write_through:
            if self._next_flush is None:
                self._next_flush = now + self.flush_interval
                return []
            if now < self._next_flush or self._flushing:
                return []
            due = sorted(self._dirty)[:self.write_chunk]
            self._dirty.difference_update(due)
            if not self._dirty:
                self._next_flush = None
            self._flushing = True
            return [self._files_job(due, wall)]
        busy = set(self._queued)
        if self._batch is not None:
            busy.update(w.user for w in self._batch)
        due = sorted(u for u in self._dirty if u not in busy)
        self._dirty.difference_update(due)
        return self._files_jobs(due, wall)

    def forget_changes(self) -> None:
        """Treat the current state as on disk (just read back from it)."""
        self._dirty.clear()

    def next_deadline(self) -> float | None:
        """When write-back's next flush is due: write-through waits for no timer."""
        if not self.write_through:
            return None if self._flushing or not self._dirty else self._next_flush
        return None

    def flush_all(self, wall: float) -> list[Job[Any]]:
        """Every dirty user, now (shutdown)."""
        users_ = sorted(self._dirty)
        self._dirty.clear()
        self._next_flush = None
        return self._files_jobs(users_, wall)

    def _files_jobs(self, names: Sequence[str],
                    wall: float) -> list[Job[Any]]:
        step = self.write_chunk
        return [self._files_job(names[i:i + step], wall) for i in range(0, len(names), step)]

    def _files_job(self, names: Sequence[str], wall: float) -> Job[Any]:
        """One trip to the writing thread that writes ``names``' files as the store has
        them now, durably, in one group (as a batch of commits is)."""
        entries = []
        for u in names:
            seq = next(self._seq)
            entries.append((u, self._users.get(u), seq, render_file(
                self.store.bindings_of_user(u), wall, Version(self._run, seq))))

        def done(outcome: Outcome[dict[str, BaseException | None]], now: float) -> list[Action]:
            for name in names:
                error = outcome.error if outcome.error is not None else (
                    (outcome.value or {}).get(name))
                self.record(name, Outcome(error=error))
            if self.write_through or not self._flushing:
                return []
            self._flushing = False
            return list(self.jobs(now, self.wall(now)))  # the flush's next chunk

        return self._write_job(entries, done, f"write {len(entries)} usrloc file(s)")

    def _write_job(self, entries: Sequence[tuple[str, User | None, int, str]],
                   done: Callable[[Outcome[dict[str, BaseException | None]], float], list[Action]],
                   name: str) -> Job[Any]:
        """The job that writes ``entries`` (user, account if known, number,
        text) and hands ``done`` each user's error: one that only writes
        (``Job.writes``, for the I/O layer's writing thread) when every
        account is known; else first one that looks the others up, in the
        directory's threads, whose continuation is that writing job. So
        every usrloc file goes through the writing thread, in order, where
        there is one: a look-up that waits for a directory server holds up
        nobody else's file."""
        files = self.files
        accounts = [(known, seq, text) for _, known, seq, text in entries if known is not None]
        if len(accounts) == len(entries):
            names = [user for user, _, _, _ in entries]
            # Their usrloc is a file of this run, and so is its spare, if
            # the spare has this run's number (which the C part checks).
            checked = frozenset(user for user in names if user in self._written)

            # Each text was rendered on the event loop, so each file is one
            # consistent snapshot; its number lets the pool's writer skip it
            # if a file rendered later is already on disk.
            def run() -> dict[str, BaseException | None]:
                return files.save_many(accounts, checksummed_for=checked)

            def wrote(errors: Sequence[BaseException | None]) -> dict[str, BaseException | None]:
                return dict(zip(names, errors, strict=True))

            return Job(run, done, name=name, wrote=wrote, writes=[
                (account, UsrlocFiles.NAME, text.encode("utf-8", "surrogateescape"))
                for account, _, text in accounts], checksummed_for=checked)
        unknown = [user for user, known, _, _ in entries if known is None]

        def look_up() -> dict[str, User | None]:
            return {user: users.lookup(user) for user in unknown}

        def found(outcome: Outcome[dict[str, User | None]], now: float) -> list[Action]:
            accounts = outcome.value or {}
            self.know([a for a in accounts.values() if a is not None])
            missing: dict[str, BaseException | None] = {
                user: outcome.error or LookupError(f"user {user} no longer exists")
                for user in unknown if accounts.get(user) is None}
            rest = [(user, known or accounts.get(user), seq, text)
                    for user, known, seq, text in entries if user not in missing]

            def joined(written: Outcome[dict[str, BaseException | None]],
                       later: float) -> list[Action]:
                if written.error is not None:
                    return done(written, later)
                return done(Outcome({**(written.value or {}), **missing}), later)

            if not rest:
                return done(Outcome(missing), now)
            return [self._write_job(rest, joined, name)]

        return Job(look_up, found, name=f"look up {len(unknown)} user(s)", directory=True)

    def record(self, user: str, outcome: Outcome[None]) -> None:
        if outcome.error is None:
            self.stats.writes += 1
            self._written.add(user)
        else:
            self.stats.write_errors += 1
            log.error("cannot save registrations of %s: %s", user, outcome.error)


class WtmpSessions:
    """utmp/wtmp login records for registrations, in one ordered lane.

    A login when a binding is created, a logout when it expires or is
    removed; refreshes write nothing. Static bindings (a trunk's fixed
    contact) are configuration, not logins. The binding-to-line map is only
    touched by jobs of the ``wtmp`` lane, which run one at a time.
    """

    LANE = "wtmp"

    def __init__(self, store: LocationStore, recorder: LoginRecorder, emit: Callable[[Job[None]], None]) -> None:
        self.recorder = recorder
        self._emit = emit
        self._lines: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        store.subscribe(self._changed)

    def _changed(self, change: Change) -> None:
        b = change.binding
        key = (b.aor, b.key)
        if change.kind is ChangeKind.ADDED and not b.static:
            host = _host_of(b.received) or "-"
            self._emit(Job(lambda: self._login(key, b.user, host, b.registered),
                           queue=self.LANE, name="wtmp login"))
        elif change.kind is ChangeKind.REMOVED and not b.static:
            self._emit(Job(lambda: self._logout(key), queue=self.LANE, name="wtmp logout"))

    def _login(self, key: tuple[str, str], user: str, host: str, when: float) -> None:
        line = self.recorder.login(user, host, when)
        with self._lock:
            self._lines[key] = line

    def logout_all(self) -> None:
        """Close every line (shutdown): the registrations outlive the daemon
        in usrloc, but nobody answers for them until it is back."""
        with self._lock:
            lines, self._lines = list(self._lines.values()), {}
        for line in lines:
            try:
                self.recorder.logout(line, time.time())
            except (WtmpError, ValueError) as exc:
                log.warning("wtmp logout of %s failed: %s", line, exc)

    def _logout(self, key: tuple[str, str]) -> None:
        with self._lock:
            line = self._lines.pop(key, None)
        if line is not None:
            self.recorder.logout(line, time.time())


def _host_of(received: str | None) -> str | None:
    if not received:
        return None
    _, _, rest = received.partition(":")
    host, _, _ = rest.rpartition(":")
    return host.strip("[]") or None

"""The worker threads that run the core's blocking jobs (NSS, PAM, files in homes).

A job goes into a queue; a worker thread runs it and hands the outcome
back to the event loop with ``run_sync_soon``, where its continuation runs
at once, in the same callback. No trio task, cancel scope or capacity
limiter per job: ``trio.to_thread.run_sync`` in a task of its own cost
about 110 µs of CPU per job, a queue and a callback about 10 µs, and a
registration needs one or two jobs.

Two pools, each with a fixed most-threads: jobs that ask the user
database (``Job.directory``) get :data:`DIRECTORY_THREADS` of their own,
so a directory server that hangs every look-up holds at most those and
home I/O keeps its :data:`HOME_THREADS`. Threads start when work is
waiting and no thread of the pool is idle, and stay (a daemon's load
comes back). Jobs of one ``queue`` (a lane) run one at a time in the order
given: the next one is handed to the pool when the previous one is done.

Threads started before the daemon gives up its capabilities would keep
them (a thread's capability sets are its own): :meth:`Workers.hold` keeps
jobs waiting, with no thread started, until :meth:`Workers.release`,
which the daemon calls once it has given them up.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from sipd.core.work import Job, Outcome

__all__ = ["DIRECTORY_THREADS", "HOME_THREADS", "Workers"]

log = logging.getLogger("sipd")

#: Threads for jobs that do not ask the user database (files in homes, wtmp, acc).
HOME_THREADS = 8
#: Threads for jobs that ask the user database (NSS, PAM).
DIRECTORY_THREADS = 4

Deliver = Callable[[Job[Any], Outcome[Any]], None]


class _Pool:
    """One set of threads and their queue; counters touched on the event loop only."""

    def __init__(self, name: str, most: int) -> None:
        self.name = name
        self.most = most
        self.queue: queue.SimpleQueue[Job[Any] | None] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        #: Jobs handed to the queue and not yet delivered back.
        self.busy = 0


class Workers:
    """Runs :class:`~sipd.core.work.Job` s in worker threads; ``deliver`` gets each outcome
    on the event loop."""

    def __init__(self, deliver: Deliver, *, home_threads: int = HOME_THREADS,
                 directory_threads: int = DIRECTORY_THREADS) -> None:
        self._deliver = deliver
        self._pools = {False: _Pool("home", home_threads),
                       True: _Pool("directory", directory_threads)}
        self._token: trio.lowlevel.TrioToken | None = None
        self._lanes: dict[str, deque[Job[Any]]] = {}
        self._held: list[Job[Any]] | None = None
        self.started = 0
        self.failed = 0

    def threads(self, directory: bool = False) -> int:
        """How many threads the pool (home I/O, or the user database's) has started."""
        return len(self._pools[directory].threads)

    def hold(self) -> None:
        """Keep jobs waiting, and start no thread, until :meth:`release`."""
        if self._held is None:
            self._held = []

    def release(self) -> None:
        held, self._held = self._held or [], None
        for job in held:
            self._hand(job)

    def submit(self, job: Job[Any]) -> None:
        """Run ``job`` (on the event loop's thread, inside ``trio.run``)."""
        self.started += 1
        if job.queue is not None:
            lane = self._lanes.get(job.queue)
            if lane is not None:
                lane.append(job)  # behind the lane's running job
                return
            self._lanes[job.queue] = deque()
        if self._held is not None:
            self._held.append(job)
            return
        self._hand(job)

    def _hand(self, job: Job[Any]) -> None:
        if self._token is None:
            self._token = trio.lowlevel.current_trio_token()
        pool = self._pools[job.directory]
        pool.busy += 1
        if pool.busy > len(pool.threads) and len(pool.threads) < pool.most:
            thread = threading.Thread(target=self._work, args=(pool, self._token),
                                      name=f"sipd-{pool.name}-{len(pool.threads) + 1}",
                                      daemon=True)
            pool.threads.append(thread)
            thread.start()
        pool.queue.put(job)

    def _work(self, pool: _Pool, token: trio.lowlevel.TrioToken) -> None:
        while True:
            job = pool.queue.get()
            if job is None:
                return
            try:
                outcome: Outcome[Any] = Outcome(job.run())
            except Exception as exc:  # noqa: BLE001 - the continuation decides
                outcome = Outcome(error=exc)
            try:
                token.run_sync_soon(self._done, pool, job, outcome)
            except trio.RunFinishedError:
                return  # the daemon is gone: nobody waits for this answer

    def _done(self, pool: _Pool, job: Job[Any], outcome: Outcome[Any]) -> None:
        pool.busy -= 1
        if outcome.error is not None:
            self.failed += 1
            log.debug("%s failed: %s", job.name, outcome.error)
        if job.queue is not None:
            lane = self._lanes[job.queue]
            if lane:
                self._hand(lane.popleft())
            else:
                del self._lanes[job.queue]
        try:
            self._deliver(job, outcome)
        except Exception:  # noqa: BLE001 - one continuation's bug must not end the loop
            log.exception("internal error in the continuation of %s", job.name)

    def close(self) -> None:
        """Let every thread end once the jobs before it are done."""
        for pool in self._pools.values():
            for _ in pool.threads:
                pool.queue.put(None)
            pool.threads.clear()

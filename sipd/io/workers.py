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

Jobs that only write files in homes (``Job.writes``) go to one writing
thread of their own instead (:class:`srfs.files.home.FileWriter`), in the
order given, while :meth:`Workers.serve_writes` runs on the event loop: it
learns which batches are written from an eventfd, so that thread needs
the GIL neither to take a batch nor to hand it back. A group commit that
went through the home pool waited for the event loop three times on the
way, under load most of its time.

Threads started before the daemon gives up its capabilities would keep
them (a thread's capability sets are its own): :meth:`Workers.hold` keeps
jobs waiting, with no thread started, until :meth:`Workers.release`,
which the daemon calls once it has given them up.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import trio

from sipd.core.work import Job, Outcome
from srfs.files.home import FileWriter, HomeError

__all__ = ["DIRECTORY_THREADS", "HOME_THREADS", "Workers"]

log = logging.getLogger("sipd")

#: Threads for jobs that do not ask the user database (files in homes, wtmp, acc).
HOME_THREADS = 8
#: Threads for jobs that ask the user database (NSS, PAM).
DIRECTORY_THREADS = 4
#: Seconds :meth:`Workers.close` waits for the writing thread's queue.
WRITER_CLOSE_TIMEOUT = 10.0

Deliver = Callable[[Job[Any], Outcome[Any]], None]


#: ``<linux/prctl.h>``: the calling thread's name, at most 15 bytes.
_PR_SET_NAME = 15


def name_os_thread() -> None:
    """Give the calling thread its ``threading`` name where ``ps -T``, ``top -H``,
    perf and ``/proc/<pid>/task/*/comm`` show it; Python 3.11 leaves every
    thread named after the process. Best effort: a name is no reason to fail."""
    name = threading.current_thread().name.encode()[:15]
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, name, 0, 0, 0)
    except (OSError, AttributeError):
        pass


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
                 directory_threads: int = DIRECTORY_THREADS,
                 writer: FileWriter | None = None) -> None:
        self._deliver = deliver
        self._pools = {False: _Pool("home", home_threads),
                       True: _Pool("dir", directory_threads)}
        self._token: trio.lowlevel.TrioToken | None = None
        self._lanes: dict[str, deque[Job[Any]]] = {}
        self._held: list[Job[Any]] | None = None
        #: The writing thread's queue: every job with ``writes`` goes there
        #: (its thread starts with the first), and :meth:`serve_writes`
        #: hears which are done.
        self._writer = writer
        self._writer_thread: threading.Thread | None = None
        #: Jobs in the writer's queue, by ticket.
        self._writes: dict[int, Job[Any]] = {}
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
        if (job.writes is not None and job.wrote is not None and self._writer is not None
                and self._write(self._writer, job)):
            return
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
        name_os_thread()
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
        self._finish(job, outcome)

    def _finish(self, job: Job[Any], outcome: Outcome[Any]) -> None:
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

    # ------------------------------------------------------------ the writer

    async def serve_writes(self) -> None:
        """Hand each job given to the writing thread its outcome as its
        batch is written (the transport runs this as long as it serves)."""
        writer = self._writer
        if writer is None:
            return
        while True:
            await trio.lowlevel.wait_readable(writer.fileno())
            for ticket, count in writer.collect():
                self._written(ticket, [None] * count)

    def _write(self, writer: FileWriter, job: Job[Any]) -> bool:
        """Queue ``job``'s files for the writing thread; False if it takes no
        more (closed, or refused the batch), and the job then runs in the
        home pool."""
        assert job.writes is not None and self._token is not None
        try:
            ticket = writer.submit(job.writes, checksummed_for=job.checksummed_for)
        except RuntimeError:
            return False
        except Exception:  # noqa: BLE001 - a bug: the pool takes over, as when the thread fails
            log.exception("the writing thread refused %s; the home pool writes from now on",
                          job.name)
            self._writer = None
            return False
        self._writes[ticket] = job
        if self._writer_thread is None:
            thread = threading.Thread(target=self._serve_writer, args=(writer, self._token),
                                      name="sipd-writer", daemon=True)
            self._writer_thread = thread
            thread.start()
        return True

    def _serve_writer(self, writer: FileWriter, token: trio.lowlevel.TrioToken) -> None:
        name_os_thread()
        while True:
            try:
                got = writer.serve()
            except Exception as exc:  # noqa: BLE001 - WriterBroken, or a bug: the pool takes over
                try:
                    token.run_sync_soon(self._writer_broken, exc)
                except trio.RunFinishedError:
                    pass
                return
            if got is None:
                return
            try:
                token.run_sync_soon(self._written, *got)
            except trio.RunFinishedError:
                return  # the daemon is gone: nobody waits for this answer

    def _written(self, ticket: int, errors: list[HomeError | None] | None,
                 error: BaseException | None = None) -> None:
        job = self._writes.pop(ticket)
        outcome: Outcome[Any] = Outcome(error=error)
        if error is None:
            assert job.wrote is not None and errors is not None  # as _hand took it
            try:
                outcome = Outcome(job.wrote(errors))
            except Exception as exc:  # noqa: BLE001 - the continuation decides
                outcome = Outcome(error=exc)
        self._finish(job, outcome)

    def _writer_broken(self, exc: BaseException) -> None:
        """The writing thread ended (:class:`~srfs.files.home.WriterBroken`,
        or a bug): later jobs go to the home pool. Those still queued for it
        are not written; each gets the error."""
        log.error("the writing thread ended: %s", exc)
        self._writer = None
        for ticket in list(self._writes):
            self._written(ticket, None, exc)

    def close(self) -> None:
        """Let every thread end once the jobs before it are done; the
        writing thread's queue is written before this returns (a file
        written after, at exit, must not cross one of its)."""
        for pool in self._pools.values():
            for _ in pool.threads:
                pool.queue.put(None)
            pool.threads.clear()
        if self._writer is not None:
            self._writer.close()
        thread, self._writer_thread = self._writer_thread, None
        if thread is not None:
            thread.join(WRITER_CLOSE_TIMEOUT)
            if thread.is_alive():
                log.error("the writing thread did not finish its queue within %g s",
                          WRITER_CLOSE_TIMEOUT)

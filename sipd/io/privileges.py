"""What the daemon gives up once it has started, and the helper it keeps for the unmount.

At the first line of the daemon, :func:`enter_startup` reduces sipd to
:data:`~sipd.io.capabilities.STARTUP`, before any other thread exists, so
every thread it ever starts holds no more. Once the sockets are bound and
``/run/sr`` is mounted, :func:`enter_running` reduces every thread to
:data:`~sipd.io.capabilities.RUNNING`: the event loop's thread first (the
threads it starts from then on copy its sets), then each worker thread
that already exists, and it proves the result from ``/proc/self/task``.
:class:`UnmountHelper` is started just before, while sipd may still pass
CAP_SYS_ADMIN on to it (:mod:`sipd.io.unmounter`).

None of this applies to a sipd that does not run as root: it has nothing
to give up, and libfuse unmounts through fusermount3 for it.
"""

from __future__ import annotations

import functools
import logging
import os
import select
import subprocess
import sys
import threading

import trio

from sipd.io.capabilities import (
    RUNNING,
    STARTUP,
    CapabilityError,
    limit_this_thread,
    names,
    read_status,
    threads_above,
)
from sipd.io.transport import StartupError

__all__ = ["UnmountHelper", "enter_running", "enter_startup", "privileged"]

log = logging.getLogger("sipd")

#: Rounds of :func:`enter_running` over the worker threads, ROUND_PAUSE apart:
#: a worker busy with a job in one round is idle in a later one.
ROUNDS = 100
ROUND_PAUSE = 0.02
#: How long the unmount helper may take to start, or to unmount.
HELPER_TIMEOUT = 10.0


def privileged() -> bool:
    """Whether sipd runs as root, and so has capabilities to give up."""
    return os.geteuid() == 0


def enter_startup() -> None:
    """Reduce this thread, and every thread it starts later, to STARTUP."""
    if not privileged():
        return
    try:
        limit_this_thread(STARTUP)
    except CapabilityError as exc:
        raise StartupError(f"cannot give up capabilities: {exc.strerror}") from None


def _limit_then_wait(barrier: threading.Barrier) -> None:
    limit_this_thread(RUNNING)
    # Held until every job of the round runs, each in a thread of its own.
    barrier.wait()


async def _round(jobs: int) -> None:
    barrier = threading.Barrier(jobs, timeout=HELPER_TIMEOUT)
    # A limiter of its own: the default one could hold jobs back while
    # those it let through wait for them at the barrier.
    job = functools.partial(trio.to_thread.run_sync, _limit_then_wait, barrier,
                            limiter=trio.CapacityLimiter(jobs))
    async with trio.open_nursery() as nursery:
        for _ in range(jobs):
            nursery.start_soon(job)


async def enter_running() -> None:
    """Reduce every thread of the daemon to RUNNING; StartupError if one keeps more.

    A worker thread runs only the jobs it is given, so each round gives as
    many jobs at once as there are other threads, each job drops the
    capabilities of the thread it runs in and waits until all of the round
    run: idle workers are taken before new ones are started, so every idle
    worker gets one. A worker busy meanwhile is caught in a later round.
    """
    if not privileged():
        return
    try:
        limit_this_thread(RUNNING)
        left = threads_above(RUNNING)
        for _ in range(ROUNDS):
            if not left:
                break
            await _round(max(len(os.listdir("/proc/self/task")) - 1, 1))
            await trio.sleep(ROUND_PAUSE)
            left = threads_above(RUNNING)
    except (CapabilityError, threading.BrokenBarrierError) as exc:
        raise StartupError(f"cannot give up capabilities: {exc}") from None
    if left:
        held = "; ".join(f"thread {t.tid}: {', '.join(names(t.above(RUNNING)))}" for t in left)
        raise StartupError(f"cannot give up capabilities: still held by {held}")
    kept = read_status("/proc/self/status").effective
    log.info("capabilities dropped; kept %s", ", ".join(names(kept)) or "none")


class UnmountHelper:
    """The process that unmounts ``/run/sr`` for sipd once sipd cannot (blocking calls)."""

    def __init__(self, proc: subprocess.Popen[bytes], mountpoint: str) -> None:
        self.proc = proc
        self.mountpoint = mountpoint

    @classmethod
    def start(cls, mountpoint: str, device: str) -> UnmountHelper:
        """Start the helper for the mount of ``device`` at ``mountpoint`` (canonical path)."""
        # The same interpreter and the same isolation as this sipd: the
        # installed one runs isolated (-I), a checkout finds itself on its path.
        cmd = [sys.executable, *(["-I"] if sys.flags.isolated else []),
               "-m", "sipd.io.unmounter", "--device", device, mountpoint]
        try:
            # A process group of its own: Ctrl-C at the terminal is for sipd,
            # which then asks the helper to unmount.
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                    process_group=0)
        except OSError as exc:
            raise StartupError(f"cannot start the unmount helper: {exc.strerror}") from None
        helper = cls(proc, mountpoint)
        if helper._answer() != "ready":
            proc.kill()
            proc.wait()
            raise StartupError("the unmount helper did not start (see the line before)")
        return helper

    def _answer(self) -> str:
        out = self.proc.stdout
        assert out is not None
        ready, _, _ = select.select([out], [], [], HELPER_TIMEOUT)
        if not ready:
            return ""
        return out.readline().decode("ascii", "replace").strip()

    def unmount(self) -> str:
        """Have ``/run/sr`` unmounted; ``unmounted``, ``gone`` or why it failed."""
        stdin = self.proc.stdin
        assert stdin is not None
        try:
            stdin.write(b"unmount\n")
            stdin.close()
        except OSError:
            pass  # it ended; its answer (none) says so
        answer = self._answer() or "failed: the helper did not answer"
        try:
            self.proc.wait(HELPER_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return answer

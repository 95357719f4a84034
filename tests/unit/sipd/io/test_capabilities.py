"""Giving up capabilities, in every thread, in child processes of the test (root only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from sipd.io.capabilities import RUNNING, STARTUP, mask, names
from sipd.io.unmounter import top_device
from tests.sipclient import ROOT

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root has capabilities to give up")


def child(code: str) -> object:
    """Run ``code`` in a fresh Python; the JSON value of its last line."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@needs_root
def test_a_thread_keeps_what_it_had_and_enter_running_reaches_it() -> None:
    # capset changes the calling thread only: workers started before the
    # drop keep their sets until each is made to drop them itself.
    found = child("""
        import json, threading, trio
        from sipd.io.capabilities import RUNNING, limit_this_thread, threads_above
        from sipd.io.privileges import enter_running

        async def main():
            started = threading.Barrier(6)
            # Five workers, all alive at once, then idle in trio's cache.
            async with trio.open_nursery() as n:
                for _ in range(5):
                    n.start_soon(trio.to_thread.run_sync, started.wait)
                await trio.to_thread.run_sync(started.wait)
            limit_this_thread(RUNNING)
            before = len(threads_above(RUNNING))
            await enter_running()
            return before, len(threads_above(RUNNING)), threading.active_count()

        print(json.dumps(trio.run(main)))
    """)
    assert isinstance(found, list)
    before, after, threads = found
    assert before >= 5 and after == 0 and threads >= 6, found


@needs_root
def test_startup_then_running_sets_in_proc_status() -> None:
    found = child("""
        import json
        from sipd.io.capabilities import RUNNING, STARTUP, limit_this_thread, read_status
        limit_this_thread(STARTUP)
        a = read_status("/proc/thread-self/status")
        limit_this_thread(RUNNING)
        b = read_status("/proc/thread-self/status")
        print(json.dumps([[a.effective, a.permitted, a.bounding, a.no_new_privs],
                          [b.effective, b.permitted, b.bounding, b.inheritable, b.ambient]]))
    """)
    assert found == [[mask(STARTUP)] * 3 + [True], [mask(RUNNING)] * 3 + [0, 0]]


def test_names() -> None:
    assert names(mask(RUNNING)) == ["CAP_SETGID", "CAP_SETUID", "CAP_AUDIT_WRITE"]


def test_top_device_reads_the_last_mount_at_the_path_with_escapes() -> None:
    info = (b"22 1 0:21 / /run rw - tmpfs tmpfs rw\n"
            b"40 22 0:50 / /run/s\\040r rw - fuse.srfs srfs rw\n"
            b"41 40 0:51 / /run/s\\040r rw - fuse.srfs srfs rw\n"
            b"42 22 0:52 / /run/sr rw - fuse.srfs srfs rw\n")
    assert top_device("/run/s r", info) == "0:51"
    assert top_device("/run/sr", info) == "0:52"
    assert top_device("/run/none", info) is None

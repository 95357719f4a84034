"""Mount an srfs tree over fake users, for tests/unit/srfs/fs/test_fuse.py (one mount per process).

    python tests/fusehelper.py MOUNTPOINT RECORD.json

Users u1 (uid 60101) and u2 (60102) are SIP members; they need not exist in
/etc/passwd, since the kernel only compares numbers. u1 starts with one
registered phone. Every commit result is appended to RECORD.json (written
in a worker thread, as the daemon writes ~/.sr/config). Prints ``ready``
once mounted, ``served`` if the mount goes away by itself. SIGUSR1 toggles membership of u3 (60103); SIGTERM/SIGINT
unmount and exit 0. FUSEHELPER_SCRATCH=FILES,BYTES,TOTAL_FILES,TOTAL_BYTES
sets the limits of scratch files (srfs.fs.scratch.ScratchLimits).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import Any

import trio

from srfs.fs.fuse import serve
from srfs.fs.scratch import DEFAULT_LIMITS, ScratchLimits
from srfs.fs.tree import Stat, StatKind, Tree, WriteResult
from srfs.state.location import Binding, LocationStore
from srfs.user import User

U1 = User("u1", 60101, 60101, "/nonexistent/u1")
U2 = User("u2", 60102, 60102, "/nonexistent/u2")
U3 = User("u3", 60103, 60103, "/nonexistent/u3")
PHONE = "sip:u1@192.0.2.10:5060;transport=udp"


def _write_json(path: str, records: list[dict[str, Any]]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(records, f)
    os.replace(tmp, path)


def _scratch_limits() -> ScratchLimits:
    spec = os.environ.get("FUSEHELPER_SCRATCH")
    if not spec:
        return DEFAULT_LIMITS
    files, size, total_files, total_size = (int(n) for n in spec.split(","))
    return ScratchLimits(files, size, total_files, total_size)


async def main(mountpoint: str, record: str) -> None:
    now = time.time()
    store = LocationStore()
    store.upsert(Binding(aor="u1", user="u1", contact=PHONE, expires=now + 3600,
                         registered=now - 10, ua="TestPhone/1.0", callid="c1", cseq=1))
    members: list[tuple[User, ...]] = [(U1, U2)]
    tree = Tree(
        store,
        lambda: members[0],
        clock=time.time,
        statistics=lambda: [Stat("version", "fusehelper", "Version.", StatKind.INFO)],
        started=now,
    )
    tree.sync_members(now)
    records: list[dict[str, Any]] = []

    async def on_commit(result: WriteResult) -> None:
        result = tree.apply(result, time.time())
        entry: dict[str, Any] = {"contacts": len(result.changes)}
        if result.config is not None:
            c = result.config
            entry.update(user=c.user.name, key=c.key, value=c.value, text=c.text,
                         changed=c.changed)
        records.append(entry)
        await trio.to_thread.run_sync(_write_json, record, list(records))

    async def serve_and_report(*, task_status: trio.TaskStatus[object]) -> None:
        await serve(tree, mountpoint, on_commit=on_commit, scratch_limits=_scratch_limits(),
                    task_status=task_status)
        # Only reached when the filesystem went away by itself (fusermount3 -u).
        print("served", flush=True)

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_and_report)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
            # Only now: a SIGTERM the test sends on "ready" must find the
            # receiver, not the default action that kills without unmounting.
            print("ready", flush=True)
            async for signum in signals:
                if signum != signal.SIGUSR1:
                    break
                if U3 in members[0]:
                    members[0] = (U1, U2)
                else:
                    members[0] = (U1, U2, U3)
                tree.sync_members(time.time())
                print("toggled", flush=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    logging.basicConfig(level=os.environ.get("FUSEHELPER_LOG", "WARNING"), stream=sys.stderr)
    trio.run(main, sys.argv[1], sys.argv[2])

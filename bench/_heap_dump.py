#!/usr/bin/env python3
"""sipd under a heap probe: SIGUSR2 writes what holds memory, as JSON.

    PYTHONTRACEMALLOC=1 python bench/_heap_dump.py SIPD-ARGUMENTS...

Used by burst_memory.py --heap, never by the daemon itself. On SIGUSR2
(handled between two bytecodes of the main thread, like any Python signal
handler) it collects garbage and writes ``/tmp/sipd-heap-PID.json``: the
bytes tracemalloc sees, the largest allocation sites (by file and line),
the live objects that the garbage collector tracks counted by type, and
pymalloc's block count. SIGUSR1 calls glibc's malloc_trim(0) (and touches
``/tmp/sipd-trimmed-PID``), to see what trimming would give back.
"""

from __future__ import annotations

import ctypes
import gc
import json
import linecache
import os
import signal
import sys
import tracemalloc
from collections import Counter
from pathlib import Path
from types import FrameType

ROOT = str(Path(__file__).resolve().parents[1])


def _site(frame: tracemalloc.Frame) -> str:
    name = frame.filename
    for prefix in (ROOT + "/", sys.prefix + "/lib/", sys.base_prefix + "/lib/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    code = linecache.getline(frame.filename, frame.lineno).strip()
    return f"{name}:{frame.lineno}  {code[:80]}"


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def glibc_heap() -> dict[str, int]:
    """glibc's mallinfo2 (kB): what Python's small-object allocator does not hold."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
    except (OSError, AttributeError):
        return {}
    info = libc.mallinfo2()
    return {"arena_kb": info.arena // 1024, "in_use_kb": info.uordblks // 1024,
            "free_kb": info.fordblks // 1024, "mmapped_kb": info.hblkhd // 1024}


def pymalloc_stats() -> dict[str, int]:
    """Arenas of pymalloc, and its blocks and free pools in kB, from sys._debugmallocstats."""
    path = Path(f"/tmp/sipd-mallocstats-{os.getpid()}.txt")
    saved = os.dup(2)
    try:
        with open(path, "w") as f:
            os.dup2(f.fileno(), 2)
            sys._debugmallocstats()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        left, eq, right = line.partition("=")
        digits = "".join(ch for ch in right if ch.isdigit())
        if not eq or not digits:
            continue
        left = left.strip("# ").strip()
        for key in ("arenas allocated current", "arenas highwater mark",
                    "bytes in allocated blocks", "bytes in available blocks", "unused pools"):
            if key in left and key not in out:
                out[key] = int(digits) // 1024 if "bytes" in key or "pools" in key \
                    else int(digits)
    path.unlink(missing_ok=True)
    return out


def dump(signum: int, frame: FrameType | None) -> None:
    blocks = sys.getallocatedblocks()
    glibc = glibc_heap()
    unreachable = gc.collect()
    data: dict[str, object] = {"pid": os.getpid(), "before_collect": {
        "allocated_blocks_before_collect": blocks, "glibc_before_collect": glibc,
        "unreachable_found": unreachable}}
    if tracemalloc.is_tracing():
        snap = tracemalloc.take_snapshot()
        stats = snap.statistics("lineno")
        data["traced_kb"] = tracemalloc.get_traced_memory()[0] // 1024
        data["sites"] = [[s.size, s.count, _site(s.traceback[0])] for s in stats[:40]]
    types: Counter[str] = Counter(type(o).__qualname__ for o in gc.get_objects())
    data["types"] = types.most_common(40)
    data["extra"] = {"allocated_blocks": sys.getallocatedblocks(),
                     "gc_counts": list(gc.get_count()), "glibc": glibc_heap(),
                     "pymalloc": pymalloc_stats()}
    out = Path(f"/tmp/sipd-heap-{os.getpid()}.json")
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.rename(out)


def trim(signum: int, frame: FrameType | None) -> None:
    """SIGUSR1: glibc's malloc_trim(0), to see what it would give back."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    Path(f"/tmp/sipd-trimmed-{os.getpid()}").touch()


if __name__ == "__main__":
    signal.signal(signal.SIGUSR2, dump)
    signal.signal(signal.SIGUSR1, trim)
    from sipd.cli import main

    sys.argv[0] = "sipd"
    sys.exit(main())

#!/usr/bin/env python3
"""Memory per binding of srfs.state.location.LocationStore, in process.

    .venv/bin/python bench/location_memory.py [--sizes 10000,100000] [--per-aor 1,10]

Builds realistic bindings (a contact like
``sip:u01234@203.0.113.7:5060;transport=udp``, a 32-character Call-ID, a
Yealink User-Agent, ``received`` as ``udp:HOST:PORT``, absolute expiry)
and upserts them into an empty LocationStore: 10k bindings with one per
AOR, and 100k bindings with ten per AOR (10k AORs). Every string is a
fresh object, as it would be after parsing a REGISTER, except the user
name shared by one AOR's bindings, which a real registrar holds once per
request too.

Each measurement runs in a fresh child process, so the figures do not
depend on one another:

* ``tracemalloc``: bytes Python allocated for the store and everything it
  holds, after garbage collection, divided by the number of bindings. This
  is the exact, allocator-independent figure; the largest allocation sites
  are listed too.
* ``rss``: the growth of the process's RSS (and PSS) over the same build,
  without tracemalloc: what the kernel sees, including pymalloc's arenas
  and fragmentation.

The target is at most 1 KiB per binding. A benchmark, not a test:
it prints figures and exits 0 whatever they are.
"""

from __future__ import annotations

import argparse
import gc
import json
import linecache
import os
import secrets
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from srfs.state.location import Binding, LocationStore  # noqa: E402

TARGET = 1024
UA = "Yealink SIP-T46S 66.86.0.15"


def _fresh(text: str) -> str:
    """A new str object with this value (parsing makes one per message)."""
    return text.encode().decode()


def make_bindings(count: int, per_aor: int, now: float) -> list[Binding]:
    """``count`` bindings, ``per_aor`` of them per AOR, each with its own strings."""
    out: list[Binding] = []
    aors = max(1, count // per_aor)
    for a in range(aors):
        user = f"u{a:05d}"
        for k in range(per_aor):
            if len(out) >= count:
                break
            n = a * per_aor + k
            host = f"203.0.{113 + (n >> 16) % 100}.{(n >> 8) % 254 + 1}"
            port = 5060 + (n % 250) * 2 + k
            out.append(Binding(
                aor=_fresh(user),
                user=user,
                contact=f"sip:{user}@{host}:{port};transport=udp",
                expires=now + 3600.0 + (n % 600),
                callid=secrets.token_hex(16),
                cseq=n % 5000 + 1,
                received=f"udp:{host}:{port}",
                ua=_fresh(UA),
                registered=now - (n % 3600),
            ))
    return out


def _proc_kb(field: str, path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _rss_pss() -> tuple[int, int]:
    return (_proc_kb("VmRSS:", "/proc/self/status"),
            _proc_kb("Pss:", "/proc/self/smaps_rollup"))


def child(method: str, count: int, per_aor: int) -> dict[str, object]:
    """One measurement, in this (fresh) process."""
    now = time.time()
    store = LocationStore()
    result: dict[str, object] = {"method": method, "bindings": count, "per_aor": per_aor}
    if method == "tracemalloc":
        tracemalloc.start(1)
        gc.collect()
        before = tracemalloc.take_snapshot()
        base = tracemalloc.get_traced_memory()[0]
        for b in make_bindings(count, per_aor, now):
            store.upsert(b)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        top = []
        for stat in after.compare_to(before, "lineno")[:6]:
            frame = stat.traceback[0]
            name = os.path.relpath(frame.filename, ROOT) if frame.filename.startswith(str(ROOT)) \
                else os.path.basename(frame.filename)
            code = linecache.getline(frame.filename, frame.lineno).strip()
            top.append([f"{name}:{frame.lineno}  {code[:70]}", stat.size_diff / count])
        result.update(bytes=grown, top=top)
    else:
        gc.collect()
        rss0, pss0 = _rss_pss()
        for b in make_bindings(count, per_aor, now):
            store.upsert(b)
        gc.collect()
        rss1, pss1 = _rss_pss()
        result.update(bytes=(rss1 - rss0) * 1024, pss_bytes=(pss1 - pss0) * 1024,
                      rss_kb_after=rss1)
    stats = store.statistics()
    result.update(aors=stats.aors, stored=stats.bindings)
    return result


def measure(method: str, count: int, per_aor: int) -> dict[str, object] | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", method,
           str(count), str(per_aor)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        print(f"  {method} {count}: child failed: {proc.stderr.strip()[-400:]}")
        return None
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000", help="binding counts (comma separated)")
    ap.add_argument("--per-aor", default="1,10",
                    help="bindings per AOR for each size (comma separated, same order)")
    ap.add_argument("--child", nargs=3, metavar=("METHOD", "COUNT", "PER_AOR"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        method, count, per_aor = args.child
        print(json.dumps(child(method, int(count), int(per_aor))))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    per = [int(p) for p in args.per_aor.split(",")]
    per += [per[-1]] * (len(sizes) - len(per))
    print(f"LocationStore memory per binding (Python {sys.version.split()[0]}), "
          f"target <= {TARGET} B")
    rows: list[tuple[int, int, float | None, float | None, float | None]] = []
    for count, per_aor in zip(sizes, per, strict=False):
        tm = measure("tracemalloc", count, per_aor)
        rs = measure("rss", count, per_aor)
        tm_b = float(tm["bytes"]) / count if tm else None  # type: ignore[arg-type]
        rss_b = float(rs["bytes"]) / count if rs else None  # type: ignore[arg-type]
        pss_b = float(rs["pss_bytes"]) / count if rs else None  # type: ignore[arg-type]
        rows.append((count, per_aor, tm_b, rss_b, pss_b))
        if tm:
            print(f"\n{count} bindings, {per_aor} per AOR ({tm['aors']} AORs, "
                  f"{tm['stored']} stored): largest allocation sites, B per binding:")
            for site, size in tm["top"]:  # type: ignore[attr-defined]
                print(f"  {size:8.1f}  {site}")

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    print(f"\n{'bindings':>9} {'per AOR':>8} {'tracemalloc B':>14} {'RSS B':>8} {'PSS B':>8} "
          f"{'<= 1 KiB':>9}")
    for count, per_aor, tm_b, rss_b, pss_b in rows:
        verdict = "-" if tm_b is None else ("yes" if tm_b <= TARGET else "NO")
        print(f"{count:>9} {per_aor:>8} {fmt(tm_b):>14} {fmt(rss_b):>8} {fmt(pss_b):>8} "
              f"{verdict:>9}")
    print("tracemalloc: bytes Python allocated per binding (store, indexes, expiry heap and "
          "the binding's strings); RSS/PSS: growth of the process per binding.")
    return 0


if __name__ == "__main__":
    sys.exit(main())

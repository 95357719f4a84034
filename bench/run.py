#!/usr/bin/env python3
"""`make bench`: every benchmark in turn. Prints figures; never fails a build."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_parse.py", "options_rate.py", "location_memory.py", "registrar_bench.py",
           "fuse_bench.py", "call_bench.py"]


def main() -> int:
    for name in BENCHES:
        print(f"\n=== {name}", flush=True)
        r = subprocess.run([sys.executable, str(HERE / name), *sys.argv[1:]] if name == "options_rate.py"
                           else [sys.executable, str(HERE / name)])
        if r.returncode != 0:
            print(f"({name} exited with {r.returncode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

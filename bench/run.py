#!/usr/bin/env python3
"""`make bench`: every benchmark in turn. Prints figures; never fails a build.

    .venv/bin/python bench/run.py [options_rate.py options]

Arguments go to options_rate.py only; every other benchmark runs with its
defaults (see each one's --help).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = ["bench_parse.py", "options_rate.py", "location_memory.py", "registrar_bench.py",
           "burst_memory.py", "fuse_bench.py", "call_bench.py"]


def main() -> int:
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__.strip())
        return 0
    for name in BENCHES:
        print(f"\n=== {name}", flush=True)
        r = subprocess.run([sys.executable, str(HERE / name), *sys.argv[1:]] if name == "options_rate.py"
                           else [sys.executable, str(HERE / name)])
        if r.returncode != 0:
            print(f"({name} exited with {r.returncode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

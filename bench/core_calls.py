"""CPU per call of the sans-IO core alone: endpoint, transactions and proxy, no sockets.

A plain script, not a test: ``.venv/bin/python bench/core_calls.py
[--calls N] [--compiled] [--no-gc]``. It runs N calls (INVITE from
another domain, 100, 180, 200, BYE, 200) through the endpoint and proxy
of the proxy unit tests, in one process, and prints the CPU per call.
``--compiled`` puts ``build/compiled/site`` (``make compiled``) first on
the path, for the mypyc-compiled build; ``--no-gc`` turns the cycle
collector off, to see its share. The daemon's own figure (``make
profile``) adds the sockets, trio's scheduling and the worker threads.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=4000)
    ap.add_argument("--compiled", action="store_true")
    ap.add_argument("--no-gc", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.compiled:
        sys.path.insert(0, str(ROOT / "build" / "compiled" / "site"))
    from sipd.io.compiled import build
    from tests.unit.sipd.proxy.test_proxy import BOB1, CALLER, Net, answer, invite, requests

    if args.no_gc:
        gc.disable()
    else:
        gc.set_threshold(10_000, 10, 10)
    net = Net()
    net.bind("bob", BOB1)

    def call(i: int) -> None:
        (req, _), = requests(net.send(invite(call_id=f"c{i}"), CALLER), "INVITE")
        net.send(answer(req, 180), BOB1)
        net.send(answer(req, 200), BOB1)
        bye = invite(method="BYE", call_id=f"c{i}", to_tag="uas1", cseq=2)
        for r, p in requests(net.send(bye, CALLER), "BYE"):
            net.send(answer(r, 200), p)

    for i in range(200):  # first-use costs out of the figure
        call(i)
    started = time.process_time()
    for i in range(args.calls):
        call(1000 + i)
    cpu = time.process_time() - started
    print(f"build: {build()}; collector {'off' if args.no_gc else 'on'}: "
          f"{cpu / args.calls * 1000:.3f} ms of CPU per call")


if __name__ == "__main__":
    main()

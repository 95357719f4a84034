"""CPU per timer of the transport's timer task, alone.

A plain script, not a test: ``.venv/bin/python bench/timer_task.py
[--per-second 2000] [--seconds 5] [--slack S]``. An endpoint that is
only a list of deadlines, evenly spread (2,000 a second is 400 calls a
second with five timers each), is served by ``Transports.timer_loop`` in
real time; the script prints how many passes the task made and its CPU
per timer. ``--slack`` overrides ``TIMER_SLACK`` (0 gives a pass per
deadline, as before timers were grouped).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sipd.io.transport as transport  # noqa: E402
from tests.unit.sipd.io.test_timer_loop import Timers  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-second", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--slack", type=float, default=transport.TIMER_SLACK)
    args = ap.parse_args()
    transport.TIMER_SLACK = args.slack
    count = int(args.per_second * args.seconds)

    async def run() -> None:
        start = trio.current_time() + 0.1
        endpoint = Timers([start + i / args.per_second for i in range(count)])
        transports = transport.Transports(endpoint, max_message_size=65535, tcp_max_connections=1,
                                          tcp_idle_timeout=60.0, tcp_message_timeout=10.0)
        cpu = time.process_time()
        with trio.move_on_after(args.seconds + 0.3):
            await transports.timer_loop()
        cpu = time.process_time() - cpu
        print(f"slack {args.slack:g} s: {len(endpoint.fired)} timers in {endpoint.passes} passes, "
              f"{cpu / max(1, len(endpoint.fired)) * 1e6:.1f} us of CPU per timer")

    trio.run(run)


if __name__ == "__main__":
    main()
